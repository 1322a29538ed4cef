import json

import torch

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


def test_bench_set_overrides_the_preset_and_is_recorded(tmp_path):
    runs = {}
    for name, extra in (("full", []), ("one_block", ["--set", "layout=P-"])):
        out = tmp_path / name
        assert cli.main(["bench", "--smoke", "--out", str(out), *extra]) == 0
        runs[name] = json.loads(next(out.glob("*.json")).read_text())
    assert runs["one_block"]["overrides"] == ["layout=P-"] and runs["full"]["overrides"] == []
    assert runs["one_block"]["flops_per_token"] < runs["full"]["flops_per_token"]


def test_bench_set_names_a_bad_field(tmp_path, capsys):
    assert cli.main(["bench", "--smoke", "--out", str(tmp_path), "--set", "no_such_field=1"]) != 0
    assert "no_such_field" in capsys.readouterr().err


def test_bench_decode_step_check_compares_kernel_and_twin():
    """The GPU `--check` mode's decode part, run here at the debug preset through the interpreter."""
    import pytest
    import torch

    pytest.importorskip("triton")
    from hybridcore.bench_check import check_decode_step
    from hybridcore.presets import get_preset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = check_decode_step(get_preset("debug"), 2, device)
    assert report["y"] < 1e-2 and report["state"] < 1e-5


def test_bench_activation_checkpointing_reaches_ours_and_the_peer(tmp_path):
    assert cli.main(["bench", "--smoke", "--peers", "--activation-checkpointing", "--out", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["activation_checkpointing"] is True
    assert result["runs"]["ours"]["status"] == "ok" and result["hf_torch_status"] == "ok"


def test_bench_checkpoint_layers_is_recorded_and_refused_with_peers(tmp_path, capsys):
    assert cli.main(["bench", "--smoke", "--activation-checkpointing", "--checkpoint-layers", "1",
                     "--out", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["checkpoint_layers"] == 1 and result["runs"]["ours"]["status"] == "ok"
    capsys.readouterr()
    for flags, message in ((["--activation-checkpointing", "--peers"], "transformers checkpoints every layer"),
                           ([], "needs --activation-checkpointing")):
        out = tmp_path / "refused"
        assert cli.main(["bench", "--smoke", *flags, "--checkpoint-layers", "1", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()


def test_bench_compiled_only_skips_the_eager_run(tmp_path, monkeypatch, capsys):
    import torch

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda layer, mode=None: compiled.append(mode))  # CPU: fast
    assert cli.main(["bench", "--smoke", "--compile", "--compiled-only", "--out", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert list(result["runs"]) == ["ours_compiled"] and compiled and set(compiled) == {None}  # each layer, default
    assert result["ours_variant"] == "ours_compiled" and result["tok_s"] > 0
    capsys.readouterr()
    assert cli.main(["bench", "--smoke", "--compiled-only", "--out", str(tmp_path / "refused")]) == 2
    assert "--compiled-only needs --compile" in capsys.readouterr().err


def test_bench_peers_kernels_skips_the_pytorch_path(tmp_path):
    assert cli.main(["bench", "--smoke", "--peers", "kernels", "--out", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert "hf_torch" not in result["runs"] and result["hf_torch_status"] == "not run"
    assert "hf_kernels" in result["runs"]  # measured, or "unavailable" where mamba_ssm does not import


def test_bench_keeps_what_it_measured_when_cut_short(tmp_path, monkeypatch):
    """A run killed in a later contender (a time limit, say) leaves the JSON of the earlier ones."""
    from hybridcore import bench

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # not an Exception: measure() does not catch it, as with a real kill

    monkeypatch.setattr(bench, "build_hf", killed)
    assert cli.main(["bench", "--smoke", "--peers", "--out", str(tmp_path)]) != 0  # the CLI reports the stop
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["complete"] is False and result["tok_s"] > 0 and list(result["runs"]) == ["ours"]
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]  # no temporary file left behind
    out = tmp_path / "whole"
    monkeypatch.undo()
    assert cli.main(["bench", "--smoke", "--out", str(out)]) == 0
    assert json.loads(next(out.glob("*.json")).read_text())["complete"] is True


def test_bench_sdpa_backend_reaches_our_attention(tmp_path):
    """`--sdpa-backend` restricts our attention to one backend: math runs on a CPU, cuDNN cannot, and
    that failure must show as ours' status (so the restriction really reaches the attention)."""
    statuses = {}
    for backend in ("math", "cudnn"):
        out = tmp_path / backend
        assert cli.main(["bench", "--smoke", "--sdpa-backend", backend, "--out", str(out)]) == 0
        result = json.loads(next(out.glob("*.json")).read_text())
        assert result["runs"]["ours"]["sdpa_backend"] == backend
        statuses[backend] = result["runs"]["ours"]["status"]
    assert statuses["math"] == "ok"
    assert statuses["cudnn"].startswith("error")


def test_document_ids_pack_reproducible_runs_of_about_the_mean_length():
    from hybridcore.bench import document_ids

    ids = document_ids(3, 200, 20)
    assert torch.equal(ids, document_ids(3, 200, 20))
    for row in ids:
        assert row[0] == 0 and bool((row.diff() >= 0).all()) and bool((row.diff() <= 1).all())
        sizes = torch.bincount(row)[:-1]  # the last document is cut by the row's end
        assert len(sizes) >= 5 and int(sizes.min()) >= 10 and int(sizes.max()) <= 30


def test_bench_documents_reach_our_model_and_refuse_the_peers(tmp_path, monkeypatch, capsys):
    from hybridcore.model import HybridLM

    seen, hidden_states = [], HybridLM.hidden_states

    def recording(self, input_ids, seq_idx=None, *args, **kwargs):
        seen.append(seq_idx)
        return hidden_states(self, input_ids, seq_idx, *args, **kwargs)

    monkeypatch.setattr(HybridLM, "hidden_states", recording)
    assert cli.main(["bench", "--smoke", "--documents", "16", "--out", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["documents"] == 16 and result["runs"]["ours"]["status"] == "ok"
    assert seen and all(s is not None and int(s.max()) >= 2 for s in seen)  # 64 tokens: 3 or more documents
    assert cli.main(["bench", "--smoke", "--documents", "16", "--peers", "--out", str(tmp_path / "p")]) == 2
    assert "--documents" in capsys.readouterr().err and not (tmp_path / "p").exists()
