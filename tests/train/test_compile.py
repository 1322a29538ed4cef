"""--compile: each layer torch.compile'd in place; same losses, same checkpoint keys.

Compiled with the aot_eager backend: it traces forward and backward through dynamo and AOTAutograd as
inductor would, without inductor's C++ build, which takes minutes on a CI CPU."""

import pytest
import torch

from hybridcore.train import read_metrics, train
from hybridcore.train.checkpoint import load_model

from .conftest import tiny_train_config


def _column(run_dir, key):
    """One metric of every training step (validation rows hold val_loss instead)."""
    return [row[key] for row in read_metrics(run_dir) if key in row]


@pytest.mark.skipif(not hasattr(torch.nn.Module, "compile"), reason="Module.compile needs torch >= 2.2")
def test_compiled_layers_train_like_eager_and_save_the_same_keys(tmp_path, data_dir, monkeypatch, capsys):
    compiled_layers = []
    module_compile = torch.nn.Module.compile

    def compile_without_inductor(self, *args, **kwargs):
        compiled_layers.append(type(self).__name__)
        module_compile(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_without_inductor)
    for name, compiled in (("eager", False), ("compiled", True)):
        capsys.readouterr()
        train(tiny_train_config(tmp_path / name, data_dir, steps=3, save_every=3, eval_every=0, compile=compiled))
        # the slow first steps are announced, with the cache that makes the next run's fast
        assert ("compiling each layer kind in the first steps" in capsys.readouterr().out) == compiled
    eager, compiled = _column(tmp_path / "eager", "loss"), _column(tmp_path / "compiled", "loss")
    assert len(compiled_layers) == 2  # both sub-layers of "P-", in the compiled run only
    assert len(eager) == len(compiled) == 3
    assert all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(eager, compiled)), (eager, compiled)
    assert load_model(tmp_path / "compiled").state_dict().keys() == load_model(tmp_path / "eager").state_dict().keys()


@pytest.mark.skipif(not hasattr(torch.nn.Module, "compile"), reason="Module.compile needs torch >= 2.2")
def test_compile_mode_reaches_each_layer_and_marks_every_micro_batch(tmp_path, data_dir, monkeypatch):
    """--compile-mode reduce-overhead: each layer is compiled in that mode, and every micro-batch starts a
    new CUDA-graph iteration. On CPU inductor would skip the graphs, so this checks the wiring and that
    the losses stay the eager ones; the GPU test below checks the graphs themselves."""
    modes, marks = [], []
    module_compile = torch.nn.Module.compile

    def compile_without_inductor(self, *args, mode=None, **kwargs):
        modes.append(mode)
        module_compile(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_without_inductor)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    common = dict(steps=3, grad_accum=2, save_every=3, eval_every=0)
    train(tiny_train_config(tmp_path / "eager", data_dir, **common))
    train(tiny_train_config(tmp_path / "graphs", data_dir, compile=True, compile_mode="reduce-overhead", **common))
    assert modes == ["reduce-overhead"] * 2
    assert len(marks) == 3 * 2  # steps x micro-batches; evaluation needs none (no backward pending)
    eager, graphs = _column(tmp_path / "eager", "loss"), _column(tmp_path / "graphs", "loss")
    assert all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(eager, graphs)), (eager, graphs)


def test_preallocated_gradients_are_added_into_not_replaced():
    """The mechanism keep_gradients_allocated relies on: autograd accumulates into an existing .grad in
    place, so a graph-owned gradient output is only read, never kept."""
    from hybridcore.train.trainer import keep_gradients_allocated

    layer = torch.nn.Linear(4, 3)
    keep_gradients_allocated(layer)
    storage = layer.weight.grad.data_ptr()
    for _ in range(2):
        layer(torch.ones(2, 4)).sum().backward()
    assert layer.weight.grad.data_ptr() == storage
    torch.testing.assert_close(layer.bias.grad, torch.full((3,), 4.0))  # 2 rows x 2 backwards


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_cuda_graphs_train_like_eager(tmp_path, data_dir, grad_accum):
    """Real inductor + CUDA graphs. With 2 micro-batches per step and without keep_gradients_allocated,
    the second replay overwrites the first micro-batch's gradient (pytorch/pytorch#169545), and the
    gradient norm and the following losses move far from eager's. With 1, the gradients stay in the
    graphs' memory until the optimizer has read them. Evaluation and sampling run under the graphs too.
    The rows hold packed documents, so training attends through FlexAttention and evaluation, a no-grad
    forward after CUDA-graph training, through SDPA (hybridcore/model/flex_document.py says why no-grad
    forwards keep SDPA)."""
    common = dict(steps=4, grad_accum=grad_accum, save_every=4, eval_every=2, sample_tokens=8, device="cuda",
                  dtype="fp32")
    train(tiny_train_config(tmp_path / "eager", data_dir, **common))
    train(tiny_train_config(tmp_path / "graphs", data_dir, compile=True, compile_mode="reduce-overhead", **common))
    for key, tolerance in (("loss", 2e-3), ("grad_norm", 2e-2)):
        eager, graphs = _column(tmp_path / "eager", key), _column(tmp_path / "graphs", key)
        assert len(eager) == len(graphs) == 4
        assert all(abs(a - b) <= tolerance * abs(a) for a, b in zip(eager, graphs)), (key, eager, graphs)


@pytest.mark.skipif(not hasattr(torch.nn.Module, "compile"), reason="Module.compile needs torch >= 2.2")
def test_default_compile_that_fails_trains_eagerly_and_says_so(tmp_path, data_dir, monkeypatch, capsys):
    """Compile on by default (as on CUDA) with a compiler that fails: the layers run eagerly, the losses are
    the eager run's and the run warns once; compile asked for with --compile stops at the failure."""
    import torch._dynamo

    from hybridcore.train import config as train_config

    def broken_compiler(graph, example_inputs):
        raise RuntimeError("this compiler always fails")

    module_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: module_compile(self, backend=broken_compiler))
    # config.patch, not monkeypatch: undoing a monkeypatch of a Dynamo config deletes the setting
    with torch._dynamo.config.patch(suppress_errors=False):
        monkeypatch.setattr(train_config, "fast_defaults",  # as on CUDA: compile unless told otherwise
                            lambda compile, mode, *rest: (True if compile is None else compile, mode or "default"))
        torch._dynamo.reset()
        train(tiny_train_config(tmp_path / "eager", data_dir, steps=2, eval_every=0, compile=False))
        train(tiny_train_config(tmp_path / "auto", data_dir, steps=2, eval_every=0, compile=None))
        assert _column(tmp_path / "auto", "loss") == _column(tmp_path / "eager", "loss")
        err = capsys.readouterr().err
        assert err.count("torch.compile failed on") == 1 and "--no-compile" in err

        torch._dynamo.config.suppress_errors = False  # as compile_layers left it on
        torch._dynamo.reset()
        with pytest.raises(Exception, match="this compiler always fails"):
            train(tiny_train_config(tmp_path / "asked", data_dir, steps=2, eval_every=0, compile=True))
