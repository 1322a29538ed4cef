"""`hybridcore bench`: one contender per invocation, its JSON, the flags' checks (CPU smoke runs)."""

import importlib.util
import json

import pytest
import torch

from hybridcore import cli
from hybridcore.flops import mfu


def bench(tmp_path, *flags, name="out"):
    """Run `hybridcore bench --smoke FLAGS`; (exit status, the one JSON it wrote or None)."""
    out = tmp_path / name
    status = cli.main(["bench", "--smoke", "--out", str(out), *flags])
    files = sorted(out.iterdir()) if out.exists() else []
    assert len(files) <= 1 and all(path.suffix == ".json" for path in files)  # one figure, no temporary file
    return status, json.loads(files[0].read_text()) if files else None


def test_ours_writes_one_figure_with_its_environment_and_one_mfu_definition(tmp_path, capsys):
    status, result = bench(tmp_path)
    assert status == 0 and result["status"] == "ok" and result["contender"] == "ours"
    said = capsys.readouterr().out  # each phase as it starts: compiling can hold the warm-up for minutes
    assert "warming up: 1 untimed step(s)" in said and "timing 2 window(s) of 1 step(s)" in said
    assert "window 1/2:" in said and "window 2/2:" in said
    assert result["figure"] == "train_step-debug-2x64" and result["preset"] == "debug"
    assert set(result["versions"]) == {"python", "torch", "triton", "transformers", "mamba_ssm", "causal_conv1d"}
    assert {"gpu", "git_commit", "git_dirty", "date", "command"} <= set(result)
    windows = result["tokens_per_s_windows"]
    assert len(windows) == result["windows"] == 2 and len(result["windows_step_ms"]) == 2
    low, high = result["tokens_per_s_spread"]
    assert low == min(windows) and high == max(windows) and low <= result["tokens_per_s"] <= high
    assert result["mfu"] == pytest.approx(mfu(result["tokens_per_s"], result["flops_per_token"], 1, 989e12))
    ceiling = result["matmul_tflops_measured"]
    assert result["pct_of_measured"] == pytest.approx(result["model_tflops"] / ceiling)


def test_peak_tflops_sets_the_mfu_denominator_and_is_checked(tmp_path, capsys):
    _, result = bench(tmp_path, "--peak-tflops", "100")
    assert result["peak_tflops"] == 100
    assert result["mfu"] == pytest.approx(result["tokens_per_s"] * result["flops_per_token"] / 100e12)
    assert bench(tmp_path, "--peak-tflops", "0", name="bad") == (2, None)
    assert "--peak-tflops must be positive" in capsys.readouterr().err


def test_the_pytorch_peer_runs_alone_and_the_kernel_peer_is_unavailable_without_its_packages(tmp_path):
    status, result = bench(tmp_path, "--contender", "hf_torch", name="torch")
    assert status == 0 and result["status"] == "ok" and result["tokens_per_s"] > 0
    assert result["figure"] == "train_step-debug-2x64" and result["contender"] == "hf_torch"
    if importlib.util.find_spec("mamba_ssm") is None:
        status, result = bench(tmp_path, "--contender", "hf_kernels", name="kernels")
        assert status == 0 and result["status"] == "unavailable" and "mamba_ssm does not import" in result["reason"]


def test_flags_for_ours_only_are_refused_for_a_peer_naming_the_flag(tmp_path, capsys):
    for flags, flag in ((["--compile"], "--compile"), (["--documents", "16"], "--documents"),
                        (["--activation-checkpointing", "--checkpoint-layers", "1"], "--checkpoint-layers"),
                        (["--sdpa-backend", "math"], "--sdpa-backend")):
        assert bench(tmp_path, "--contender", "hf_torch", *flags, name="refused") == (2, None)
        assert f"{flag} applies to --contender ours only" in capsys.readouterr().err
    assert bench(tmp_path, "--no-compile", "--compile-mode", "reduce-overhead", name="refused") == (2, None)
    assert "--compile-mode reduce-overhead compiles: it cannot go with --no-compile" in capsys.readouterr().err
    assert bench(tmp_path, "--checkpoint-layers", "1", name="refused") == (2, None)
    assert "needs --activation-checkpointing" in capsys.readouterr().err


def test_set_overrides_the_preset_and_is_recorded(tmp_path):
    _, full = bench(tmp_path, name="full")
    _, one_block = bench(tmp_path, "--set", "layout=P-", "--tag", "one-block", name="one_block")
    assert one_block["overrides"] == ["layout=P-"] and full["overrides"] == []
    assert one_block["figure"] == "train_step-debug-2x64-one-block"
    assert one_block["flops_per_token"] < full["flops_per_token"]


def test_set_names_a_bad_field(tmp_path, capsys):
    assert bench(tmp_path, "--set", "no_such_field=1")[0] == 2
    assert "no_such_field" in capsys.readouterr().err


def test_a_variant_of_the_step_is_its_own_figure(tmp_path):
    """A run measured another way than the default never writes over the default's file."""
    _, plain = bench(tmp_path, name="plain")
    _, variant = bench(tmp_path, "--activation-checkpointing", "--loss", "plain", "--no-kernels", name="variant")
    assert plain["figure"] == "train_step-debug-2x64"
    assert variant["figure"] == "train_step-debug-2x64-ac-loss-plain-reference-ops"


def test_check_without_cuda_or_the_interpreter_is_refused_before_timing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert bench(tmp_path, "--check")[0] == 2
    assert "--check compares the Triton kernels with their twins, which needs CUDA" in capsys.readouterr().err


def test_decode_step_check_compares_kernel_and_twin():
    """The GPU `--check` mode's decode part, run here at the debug preset through the interpreter."""
    pytest.importorskip("triton")
    from hybridcore.bench_check import check_decode_step
    from hybridcore.presets import get_preset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = check_decode_step(get_preset("debug"), 2, device)
    assert report["y"] < 1e-2 and report["state"] < 1e-5


def test_inference_kernels_check_compares_each_kernel_and_its_twin():
    """The GPU `--check` mode's inference part, run here at the debug preset through the interpreter: every
    kernel within twice the twin's own bf16 error (or 1e-2), and each error a measured one, not zero."""
    pytest.importorskip("triton")
    from hybridcore.bench_check import check_inference_kernels
    from hybridcore.presets import get_preset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = check_inference_kernels(get_preset("debug"), 2, device, context=96)
    assert set(report) == {"rms_norm", "conv_step", "rope_cache_write", "swiglu", "decode_attention"}
    for name, errors in report.items():
        assert 0 < errors["fused"] <= max(2 * errors["reference_bf16"], 1e-2), (name, errors)


def test_activation_checkpointing_reaches_ours_and_the_peer(tmp_path):
    for contender in ("ours", "hf_torch"):
        status, result = bench(tmp_path, "--contender", contender, "--activation-checkpointing", name=contender)
        assert status == 0 and result["activation_checkpointing"] is True and result["status"] == "ok"


def test_checkpoint_layers_is_recorded(tmp_path):
    _, result = bench(tmp_path, "--activation-checkpointing", "--checkpoint-layers", "1")
    assert result["checkpoint_layers"] == 1 and result["status"] == "ok"


def test_compile_mode_reaches_our_layers(tmp_path, monkeypatch):
    import torch

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda layer, mode=None, **_: compiled.append(mode))  # fast
    _, result = bench(tmp_path, "--compile", "--compile-mode", "max-autotune-no-cudagraphs")
    assert compiled and set(compiled) == {"max-autotune-no-cudagraphs"}  # every layer, in that mode
    assert result["compiled"] is True and result["compile_mode"] == "max-autotune-no-cudagraphs"


def test_a_run_cut_short_keeps_the_windows_it_measured(tmp_path, monkeypatch):
    """A process killed in its second window (a time limit, say) leaves the first window's figures."""
    from hybridcore import bench as bench_module

    calls = []
    time_steps = bench_module.time_steps

    def killed_in_the_second_window(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # not an Exception: measure() does not catch it, as with a real kill
        return time_steps(*args, **kwargs)

    monkeypatch.setattr(bench_module, "time_steps", killed_in_the_second_window)
    status, result = bench(tmp_path)
    assert status == 130 and result["status"] == "incomplete"
    assert len(result["windows_step_ms"]) == 1 and result["tokens_per_s"] > 0


def test_sdpa_backend_reaches_our_attention(tmp_path):
    """`--sdpa-backend` restricts our attention to one backend: math runs on a CPU, cuDNN cannot, and
    that failure must show as the run's status (so the restriction really reaches the attention)."""
    status, result = bench(tmp_path, "--sdpa-backend", "math", name="math")
    assert status == 0 and result["status"] == "ok" and result["sdpa_backend"] == "math"
    status, result = bench(tmp_path, "--sdpa-backend", "cudnn", name="cudnn")
    assert status == 1 and result["status"].startswith("error") and "tokens_per_s" not in result


def test_document_ids_pack_reproducible_runs_of_about_the_mean_length():
    from hybridcore.bench import document_ids

    ids = document_ids(3, 200, 20)
    assert torch.equal(ids, document_ids(3, 200, 20))
    for row in ids:
        assert row[0] == 0 and bool((row.diff() >= 0).all()) and bool((row.diff() <= 1).all())
        sizes = torch.bincount(row)[:-1]  # the last document is cut by the row's end
        assert len(sizes) >= 5 and int(sizes.min()) >= 10 and int(sizes.max()) <= 30


def test_documents_reach_our_model(tmp_path, monkeypatch):
    from hybridcore.model import HybridLM

    seen, hidden_states = [], HybridLM.hidden_states

    def recording(self, input_ids, seq_idx=None, *args, **kwargs):
        seen.append(seq_idx)
        return hidden_states(self, input_ids, seq_idx, *args, **kwargs)

    monkeypatch.setattr(HybridLM, "hidden_states", recording)
    _, result = bench(tmp_path, "--documents", "16")
    assert result["documents"] == 16 and result["status"] == "ok"
    assert seen and all(s is not None and int(s.max()) >= 2 for s in seen)  # 64 tokens: 3 or more documents
