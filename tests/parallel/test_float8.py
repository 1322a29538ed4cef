"""hybridcore.parallel.float8: which linears go to float8, the flags' checks, the error without torchao,
and a conversion (on the meta device) that leaves the state dict's keys and dtypes as they were."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from hybridcore.config import apply_overrides
from hybridcore.model import HybridLM
from hybridcore.model.mamba2 import SegmentedLinear
from hybridcore.parallel import float8
from hybridcore.presets import get_preset


def meta_model(preset: str = "falcon-h1-7b", layout: str = "P-") -> HybridLM:
    config = apply_overrides(get_preset(preset), [f"layout={layout}"])
    with torch.device("meta"):
        return HybridLM(config)


def accepted(model, min_size) -> set[str]:
    keep = float8.float8_module_filter(min_size)
    return {name.split(".", 2)[-1] for name, module in model.named_modules() if keep(module, name)}


def test_default_filter_keeps_the_large_matmuls_of_7b_and_none_of_0_5b():
    assert float8.DEFAULT_MIN_SIZE == 2048
    assert accepted(meta_model(), float8.DEFAULT_MIN_SIZE) == {
        "mamba.in_proj", "mamba.out_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    assert accepted(meta_model("falcon-h1-0.5b"), float8.DEFAULT_MIN_SIZE) == set()


def test_smaller_threshold_takes_more_but_never_the_head_or_unaligned_shapes():
    names = accepted(meta_model(), 16)
    assert "lm_head" not in names
    assert {"attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"} <= names
    assert accepted(meta_model(), 1024) == names - {"attention.k_proj", "attention.v_proj"}  # 256 outputs
    # An nn.Linear with 6680 outputs (not a multiple of 16) stays; in_proj's rows (2 * 3072 + 2 * 256 + 24 =
    # 6680) are padded instead, but its input features must be a multiple of 16.
    keep = float8.float8_module_filter(16)
    assert not keep(torch.nn.Linear(3072, 6680, device="meta"), "proj")
    assert not keep(SegmentedLinear(3064, {"z": 3072}, bias=False).to("meta"), "in_proj")


@pytest.mark.parametrize("recipe,min_size,flag", [("fast", 2048, "--fp8"), ("tensorwise", 8, "--fp8-min-size"),
                                                  ("rowwise", 2048.0, "--fp8-min-size")])
def test_bad_options_name_the_flag(recipe, min_size, flag):
    with pytest.raises(ValueError, match=flag):
        float8.check_float8_options(recipe, min_size)


def test_missing_torchao_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao raises ImportError
    with pytest.raises(ValueError, match=r"--fp8 needs torchao 0\.18 or newer.*pip install 'hybridcore\[fp8\]'"):
        float8.convert_to_float8(meta_model(), "tensorwise")


def test_old_torchao_is_a_clear_error(monkeypatch):
    old = types.ModuleType("torchao")
    old.__version__ = "0.9.0"
    old.float8 = types.ModuleType("torchao.float8")
    monkeypatch.setitem(sys.modules, "torchao", old)
    monkeypatch.setitem(sys.modules, "torchao.float8", old.float8)
    with pytest.raises(ValueError, match="found 0.9.0; upgrade"):
        float8.torchao_float8()


@pytest.mark.parametrize("recipe,all_gather", [(recipe, False) for recipe in float8.RECIPES] + [("tensorwise", True)])
def test_conversion_on_meta_keeps_state_dict_keys_and_dtypes(recipe, all_gather):
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    model = meta_model(layout="P-M*-")
    before = {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}
    converted = float8.convert_to_float8(model, recipe, min_size=1024, fsdp_float8_all_gather=all_gather)
    assert converted and all(isinstance(model.get_submodule(name), Float8Linear | float8.Float8SegmentedLinear)
                             for name in converted)
    assert not isinstance(model.lm_head, Float8Linear)
    assert isinstance(model.layers["0"].mamba.in_proj, float8.Float8SegmentedLinear)
    after = {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}
    assert after == before and all(dtype == torch.float32 for _, dtype in after.values())


def test_fsdp_float8_all_gather_only_for_tensorwise():
    pytest.importorskip("torchao.float8")
    assert float8.float8_config("tensorwise", fsdp_float8_all_gather=True).enable_fsdp_float8_all_gather
    assert not float8.float8_config("rowwise", fsdp_float8_all_gather=True).enable_fsdp_float8_all_gather


def test_conversion_keeps_the_parameter_objects():
    """Without float8 all-gather the optimizer may even be built before the conversion."""
    pytest.importorskip("torchao.float8")
    from hybridcore.model import build_model

    model = build_model(apply_overrides(get_preset("debug"), ["layout=P-", "d_model=64", "d_ff=128"]), seed=0)
    before = dict(model.named_parameters())
    assert float8.convert_to_float8(model, "rowwise", min_size=16)
    assert all(before[name] is parameter for name, parameter in model.named_parameters())


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
@pytest.mark.parametrize("bias", [False, True])
def test_segmented_linear_in_float8_is_torchaos_float8_linear_on_the_padded_weight(recipe, bias):
    """in_proj's float8 matmul against torchao's own Float8Linear over the concatenated weight with its zero
    rows (a multiple of 16 outputs, which torchao needs): the same outputs and, sliced, the same gradients."""
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    torch.manual_seed(0)
    segments = {"z": 40, "x": 40, "B": 16, "C": 16, "dt": 5}  # 117 rows: padded to 128
    original = SegmentedLinear(32, segments, bias=bias)
    reference = torch.nn.Linear(32, 128, bias=False)
    with torch.no_grad():
        reference.weight.copy_(torch.cat([torch.cat(original.weights()), torch.zeros(11, 32)]))
    config = float8.float8_config(recipe)
    reference = Float8Linear.from_float(reference, config=config)
    converted = float8.Float8SegmentedLinear(original, config)
    assert dict(converted.named_parameters()) == dict(original.named_parameters())  # the same objects
    x = torch.randn(2, 24, 32, requires_grad=True)
    x_reference = x.detach().clone().requires_grad_()
    out = converted(x)
    expected = reference(x_reference)[..., :117]
    if bias:
        expected = expected + torch.cat(original.biases())
    assert out.shape == (2, 24, 117)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(x.grad, x_reference.grad, rtol=0, atol=0)
    weight_grads = torch.cat([weight.grad for weight in converted.weights()])
    torch.testing.assert_close(weight_grads, reference.weight.grad[:117], rtol=0, atol=0)
    # float8, not bf16 in disguise: the output differs from the high-precision product by float8's rounding
    exact = torch.nn.functional.linear(x.detach(), torch.cat(original.weights()))
    error = ((out.detach() - (exact + (torch.cat(original.biases()) if bias else 0))).norm() / exact.norm()).item()
    assert 1e-4 < error < 0.1


@pytest.mark.slow
def test_tensor_parallel_and_fsdp_float8_train_like_one_process(tmp_path):
    """Under tp each rank's float8 matmuls scale their own slices (tensorwise: one scale per slice, not per
    whole weight); under fsdp2 tensorwise gathers the weights in float8 with scales computed after each
    step. The losses agree with one process's float8 run to float8's rounding rather than 1e-5 (0.01-0.06%
    measured), where a lost collective or a wrong slice moves them by percents."""
    pytest.importorskip("torchao.float8")
    from .common import DEVICE, LAYOUT_OPTIMIZER, STEPS, global_batch, long_memory, named_config, run_workers
    from .harness import build_parallel_model, train_steps
    from .workers import run_all

    if DEVICE != "cpu":
        pytest.skip("compared on CPU ranks")
    options = {recipe: {"float8": recipe, "float8_min_size": 16} for recipe in ("tensorwise", "rowwise")}
    layouts = {"tp2": dict(tp=2), "fsdp2": dict(dp_shard=2)}
    scenarios = {f"{layout}/{recipe}": (fields, "M*-P", False, option)
                 for layout, fields in layouts.items() for recipe, option in options.items()}
    ranks = run_workers(run_all, 2, tmp_path, [("runs", ("layout_scenarios", (scenarios,)))])
    for recipe, option in options.items():
        model, optimizer = build_parallel_model(named_config("M*-P"), seed=0, prepare=long_memory,
                                                **LAYOUT_OPTIMIZER, **option)
        reference = train_steps(model, optimizer, global_batch(), steps=STEPS)
        for layout in layouts:
            for rank, result in enumerate(ranks):
                run = result["runs"][f"{layout}/{recipe}"]
                assert "error" not in run, run.get("error")
                assert run["float8_linears"] >= 5, (layout, recipe, rank)  # the MLP's, out_proj, o_proj
                errors = [abs(got - want) / abs(want) for got, want in zip(run["losses"], reference)]
                assert max(errors) < 2e-3, (layout, recipe, rank, run["losses"], reference)
