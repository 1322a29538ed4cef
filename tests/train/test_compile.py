"""--compile: each layer torch.compile'd in place; same losses, same checkpoint keys.

Compiled with the aot_eager backend: it traces forward and backward through dynamo and AOTAutograd as
inductor would, without inductor's C++ build, which takes minutes on a CI CPU."""

import pytest
import torch

from hybridcore.train import read_metrics, train
from hybridcore.train.checkpoint import load_model

from .conftest import tiny_train_config


def _losses(run_dir):
    return [row["loss"] for row in read_metrics(run_dir) if "loss" in row]


@pytest.mark.skipif(not hasattr(torch.nn.Module, "compile"), reason="Module.compile needs torch >= 2.2")
def test_compiled_layers_train_like_eager_and_save_the_same_keys(tmp_path, data_dir, monkeypatch):
    compiled_layers = []
    module_compile = torch.nn.Module.compile

    def compile_without_inductor(self, *args, **kwargs):
        compiled_layers.append(type(self).__name__)
        module_compile(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_without_inductor)
    for name, compiled in (("eager", False), ("compiled", True)):
        train(tiny_train_config(tmp_path / name, data_dir, steps=3, save_every=3, eval_every=0, compile=compiled))
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(compiled_layers) == 2  # both sub-layers of "P-", in the compiled run only
    assert len(eager) == len(compiled) == 3
    assert all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(eager, compiled)), (eager, compiled)
    assert load_model(tmp_path / "compiled").state_dict().keys() == load_model(tmp_path / "eager").state_dict().keys()
