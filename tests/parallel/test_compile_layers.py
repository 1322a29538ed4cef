"""hybridcore.parallel.compile: one compiled graph per layer kind whatever the depth, and the compile
caches in the chosen directory, reused by a second process."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridcore.config import ModelConfig
from hybridcore.model import build_model
from hybridcore.parallel.compile import compile_layers, configure_compile_cache, default_cache_dir

CACHE_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TRITON_CACHE_AUTOTUNING")


def tiny(layout: str) -> ModelConfig:
    return ModelConfig(vocab_size=64, d_model=32, layout=layout, num_heads=4, num_kv_heads=2, head_dim=8,
                       mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8, mamba_n_groups=1, mamba_d_conv=4,
                       mamba_chunk_size=8, d_ff=64, max_seq_len=64)


@pytest.fixture
def isolated_cache(monkeypatch, tmp_path):
    """compile_layers sets the cache variables for the process: restore them after the test."""
    for name in CACHE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    import torch._inductor.config as inductor_config
    saved = inductor_config.fx_graph_cache
    torch._dynamo.reset()
    yield tmp_path
    inductor_config.fx_graph_cache = saved
    torch._dynamo.reset()


def layer_kind(graph_module) -> str:
    """The grammar character of the layer a graph traces, from the sub-modules it calls."""
    names = set()
    for node in graph_module.graph.nodes:
        for _, module_type in (node.meta.get("nn_module_stack") or {}).values():
            names.add(getattr(module_type, "__name__", str(module_type)).rsplit(".", 1)[-1].strip("'>"))
    mamba, attention, mlp = "Mamba2Mixer" in names, "Attention" in names, "SwiGLU" in names
    return {(True, True, False): "P", (True, False, False): "M", (False, True, False): "*",
            (False, False, True): "-"}.get((mamba, attention, mlp), "?")


def graphs_per_kind(layout: str, cache_dir, steps: int = 2) -> collections.Counter:
    """Train `steps` forward/backward passes and one no-grad forward through the compiled layers; count the
    graphs Dynamo hands to the backend, by the layer class they trace."""
    torch._dynamo.reset()
    counts = collections.Counter()

    def counting_backend(graph_module, example_inputs):
        counts[layer_kind(graph_module)] += 1
        return graph_module.forward

    model = build_model(tiny(layout), seed=0).train()
    compile_layers(model, cache_dir=cache_dir, backend=counting_backend)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        model(ids).float().mean().backward()
    with torch.no_grad():
        model(ids)
    return counts


def test_one_graph_per_layer_kind_whatever_the_depth(isolated_cache):
    shallow = graphs_per_kind("P-", isolated_cache)
    deep = graphs_per_kind("P-" * 6, isolated_cache)
    mixed = graphs_per_kind("P-M*-M*P-", isolated_cache)
    # one graph for training and one for the no-grad forward, per kind: not per layer
    assert shallow == deep == {"P": 2, "-": 2}
    assert mixed == {"P": 2, "-": 2, "M": 2, "*": 2}


def test_state_dict_keys_unchanged(isolated_cache):
    model = build_model(tiny("P-M"), seed=0)
    keys = list(model.state_dict())
    compile_layers(model, cache_dir=isolated_cache, backend="eager")
    assert list(model.state_dict()) == keys


def test_cache_directory_option_and_default(isolated_cache, monkeypatch):
    root = configure_compile_cache(isolated_cache / "chosen")
    assert root == (isolated_cache / "chosen").resolve()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(root / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(root / "triton")
    assert os.environ["TRITON_CACHE_AUTOTUNING"] == "1"
    assert (root / "inductor").is_dir() and (root / "triton").is_dir()
    monkeypatch.setenv("HYBRIDCORE_COMPILE_CACHE", str(isolated_cache / "from-env"))
    assert default_cache_dir() == isolated_cache / "from-env"
    monkeypatch.delenv("HYBRIDCORE_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated_cache / "xdg"))
    assert default_cache_dir() == isolated_cache / "xdg" / "hybridcore" / "compile"


def test_unwritable_cache_directory_is_a_clear_error(isolated_cache):
    blocker = isolated_cache / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="--compile-cache-dir"):
        configure_compile_cache(blocker / "cache")


def test_bad_mode_names_the_flag(isolated_cache):
    with pytest.raises(ValueError, match="--compile-mode"):
        compile_layers(build_model(tiny("-"), seed=0), mode="fast", cache_dir=isolated_cache)


def test_kernels_are_imported_before_tracing(isolated_cache, monkeypatch):
    """A first import of the kernels inside a traced layer leaves Dynamo a guard on the unimported state,
    and every layer compiles again on its second call: compile_layers imports them first."""
    import hybridcore.ops as ops
    from torch._dynamo.testing import CompileCounter

    x = torch.ones(3)

    def calls_twice(load_first: bool) -> int:
        torch._dynamo.reset()
        monkeypatch.setattr(ops, "_FUSED", None)
        frames = CompileCounter()
        probe = torch.compile(lambda t: t + 1 if ops.kernels_active(t) else t - 1, backend=frames)
        if load_first:
            ops.load_kernels()
        with ops.use_kernels("on"):
            probe(x)
            probe(x)
        return frames.frame_count

    if calls_twice(load_first=False) == 1:
        pytest.skip("this torch does not guard on the import's global")
    assert calls_twice(load_first=True) == 1
    monkeypatch.setattr(ops, "_FUSED", None)
    compile_layers(build_model(tiny("-"), seed=0), cache_dir=isolated_cache, backend="eager")
    assert ops._FUSED is not None


CHILD = """
import json, sys, torch
from torch._dynamo.utils import counters
from hybridcore.parallel.compile import compile_layers
from tests.parallel.test_compile_layers import tiny
from hybridcore.model import build_model
model = build_model(tiny("-"), seed=0)
compile_layers(model, cache_dir=sys.argv[1])
model(torch.randint(0, 64, (2, 8))).float().mean().backward()
print(json.dumps({k: v for k, v in counters["inductor"].items() if "cache" in k}))
"""


@pytest.mark.slow
def test_a_second_process_reuses_the_cache(tmp_path):
    """Inductor on the CPU (a C++ compiler): the second process finds the first one's compiled graphs."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for name in CACHE_VARIABLES + ("HYBRIDCORE_COMPILE_CACHE",):
        env.pop(name, None)
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "cache")], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold.get("fxgraph_cache_miss", 0) >= 1 and cold.get("fxgraph_cache_hit", 0) == 0
    assert warm.get("fxgraph_cache_hit", 0) >= 1 and warm.get("fxgraph_cache_miss", 0) == 0
    assert any((tmp_path / "cache" / "inductor").iterdir())
