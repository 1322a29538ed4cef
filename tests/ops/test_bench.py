import json

from hybridcore import cli

REQUIRED = ["gpu", "preset", "batch_size", "seq_len", "tok_s", "mfu", "peak_gib", "hf_kernels_tok_s", "hf_torch_tok_s",
            "versions", "date"]


def test_bench_smoke_writes_one_result(tmp_path):
    assert cli.main(["bench", "--smoke", "--peers", "--out", str(tmp_path)]) == 0
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    result = json.loads(files[0].read_text())
    assert all(key in result for key in REQUIRED)
    assert result["tok_s"] > 0 and result["preset"] == "debug"
    assert set(result["versions"]) >= {"torch", "triton", "transformers", "mamba_ssm"}
    assert result["hf_torch_status"] in ("ok", "oom") or result["hf_torch_status"].startswith("error")
