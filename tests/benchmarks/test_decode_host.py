"""benchmarks/decode_host.py times each inference op's PyTorch twin (and its kernel on a GPU) and the
decode step, and writes them to one JSON."""

from __future__ import annotations

import json

from ..benchmark_scripts import load_script


def test_smoke_times_every_op_and_the_decode_step(tmp_path):
    module = load_script("decode_host")
    out = tmp_path / "decode.json"
    module.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["ops_host_us"]) == {"rms_norm", "conv_step", "rope_cache_write", "swiglu", "decode_attention",
                                            "aten_mul"}
    assert all(row["twin_us"] > 0 for row in report["ops_host_us"].values())
    for attention in ("split_kernel", "sdpa_default"):  # on CPU without the interpreter both run the twin
        assert report["decode"][attention]["step_ms"] > 0 and report["decode"][attention]["prefill_ms"] > 0
    assert report["versions"]["torch"] and "git_commit" in report
