"""Autotuning compiles its candidates together (ops/triton_autotune.py): the hook that runs before the
autotuner times them, checked with a stand-in for the jit function (compiling needs a GPU target)."""

import inspect

import pytest

triton = pytest.importorskip("triton")

from hybridcore.ops import triton_autotune  # noqa: E402


class RecordingKernel:
    def __init__(self):
        self.calls = []

    def warmup(self, grid, **arguments):
        mode = triton_autotune.active_mode.get() if triton_autotune.active_mode is not None else None
        self.calls.append((grid, arguments, mode is not None))


def candidates():
    return [triton.Config({"BLOCK": 64}, num_warps=4), triton.Config({"BLOCK": 128}, num_warps=8)]


@pytest.mark.skipif(triton_autotune.AsyncCompileMode is None, reason="this Triton has no AsyncCompileMode")
def test_every_candidate_is_compiled_inside_one_async_compile():
    kernel, configs = RecordingKernel(), candidates()
    # the launch's grid and warmup flag reach the autotuner's hook among the kernel's keywords
    meta = {"HAS_BIAS": True, "grid": (3, 1), "warmup": False}
    kept = triton_autotune.compile_together(kernel, configs, {"x_ptr": "x", "n": 7}, meta)
    assert kept is configs
    assert [call[1]["BLOCK"] for call in kernel.calls] == [64, 128]
    assert [call[1]["num_warps"] for call in kernel.calls] == [4, 8]
    assert all(call[1]["x_ptr"] == "x" and call[1]["n"] == 7 and call[1]["HAS_BIAS"] for call in kernel.calls)
    assert all(grid == (3, 1) and "warmup" not in arguments for grid, arguments, _ in kernel.calls)
    assert all(inside for _, _, inside in kernel.calls)  # submitted to the pool, not compiled one by one
    assert triton_autotune.active_mode.get() is None  # and the mode is closed again


def test_one_candidate_or_an_open_async_compile_is_left_alone():
    kernel = RecordingKernel()
    assert triton_autotune.compile_together(kernel, candidates()[:1], {}, {}) == candidates()[:1]
    assert kernel.calls == []
    if triton_autotune.AsyncCompileMode is not None:  # somebody else's async compile: theirs to finish
        with triton_autotune.AsyncCompileMode(triton_autotune._pool()):
            triton_autotune.compile_together(kernel, candidates(), {}, {})
        assert kernel.calls == []


def autotuned_kernels() -> list:
    """The SSD and conv kernels' autotuners."""
    from triton.runtime.autotuner import Autotuner

    from hybridcore.ops import triton_conv, triton_ssd

    return [k for module in (triton_ssd, triton_conv) for k in vars(module).values() if isinstance(k, Autotuner)]


@pytest.mark.skipif(triton_autotune.AsyncCompileMode is None, reason="this Triton has no AsyncCompileMode")
def test_every_autotuned_kernel_compiles_its_candidates_together(monkeypatch):
    kernels = autotuned_kernels()
    assert len(kernels) == 10
    # (N: a state wider than any the SSD dB/dC kernel holds whole, so that it keeps every candidate)
    split = [triton.Config({**config.kwargs, "BLOCK_N": 64}, num_warps=config.num_warps) for config in candidates()]
    for kernel in kernels:
        recorder = RecordingKernel()
        monkeypatch.setattr(kernel.fn, "warmup", recorder.warmup)  # the kernel's own jit function
        assert kernel.early_config_prune(split, {"n": 1, "N": 1024}) == split
        assert len(recorder.calls) == 2, kernel.base_fn.__name__


@pytest.mark.skipif(triton_autotune.AsyncCompileMode is None, reason="this Triton has no AsyncCompileMode")
def test_a_kernels_keep_hook_chooses_what_is_compiled_and_timed(monkeypatch):
    from hybridcore.ops import triton_ssd

    kernel, recorder = triton_ssd._dbc_bwd_kernel, RecordingKernel()
    monkeypatch.setattr(kernel.fn, "warmup", recorder.warmup)
    monkeypatch.setattr(triton_ssd, "WHOLE_STATE", 128)
    whole, split = (triton.Config({"BLOCK_N": n}, num_warps=4) for n in (128, 64))
    assert kernel.early_config_prune([whole, split], {"N": 128}) == [whole]  # one candidate: nothing to compile
    assert recorder.calls == []
    assert kernel.early_config_prune([whole, split], {"N": 256}) == [whole, split]
    assert [call[1]["BLOCK_N"] for call in recorder.calls] == [128, 64]


def test_every_autotuned_kernel_times_with_the_short_budget(monkeypatch):
    if "do_bench" not in inspect.signature(triton.autotune).parameters:
        pytest.skip("this Triton's autotune takes no do_bench")
    kernels = autotuned_kernels()
    assert kernels and all(kernel.do_bench is triton_autotune.quick_bench for kernel in kernels)
    seen = {}

    def do_bench(kernel_call, warmup, rep, quantiles=None):
        seen.update(warmup=warmup, rep=rep, quantiles=quantiles)
        return [1.0, 0.9, 1.1]

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    assert triton_autotune.quick_bench(lambda: None, quantiles=(0.5, 0.2, 0.8)) == [1.0, 0.9, 1.1]
    assert seen == {"warmup": 5, "rep": 25, "quantiles": (0.5, 0.2, 0.8)}
