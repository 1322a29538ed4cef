"""FP8 training through torchao: the one file that knows torchao's API.

`convert_to_float8(model, recipe, min_size)` swaps the eligible nn.Linear modules for torchao's
Float8Linear, in place, before activation checkpointing, compile and FSDP2 (after tensor parallel).
Under tensor parallelism it runs on each rank's slices, which the filter judges and each matmul scales
on its own (plain tensors, so torchao's DTensor styles are not needed). The master weights stay what
they were (fp32 parameters under the same names), so checkpoints, resume, evaluation and export see an
ordinary model; the matmuls run in float8 with dynamic scales.

Recipes (torchao's names):
    tensorwise           one scale per tensor; the fastest; FSDP2 can all-gather the weights in float8
    rowwise              one scale per row, power-of-two scales; more accurate, slower kernels
    rowwise_with_gw_hp   rowwise, with the weight gradient's matmul kept in high precision
Left in bf16: the LM head (its output feeds the loss directly), linears whose input features are not a
multiple of 16 (the float8 matmul needs it), and linears with a dimension below `min_size`, whose matmuls
are too small to repay the casts and scale reductions that float8 adds.

The Mamba in_proj (a SegmentedLinear: one parameter per segment, one matmul) becomes a
Float8SegmentedLinear. Its rows, 2 * d_ssm + 2 * groups * state + heads, are rarely a multiple of 16
(6,680 at falcon-h1-7b), so its concatenated weight gets zero rows up to one and the output drops them:
one more copy of the output in the backward, against a matmul a fifth the size of the MLP's (0.4% more
tokens/s with tensorwise at eight falcon-h1-7b blocks on an H100, docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import torch
from torch import nn

from ..model.mamba2 import SegmentedLinear

RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
DEFAULT_MIN_SIZE = 2048  # both weight dimensions at least this: at falcon-h1-7b, the MLP, Mamba in_proj and out_proj
SKIPPED_MODULES = ("lm_head",)
TORCHAO_VERSION = (0, 18)  # the version pinned by the `fp8` extra (pyproject.toml), and the oldest accepted
INSTALL_HINT = "pip install 'hybridcore[fp8]'"


def check_float8_options(recipe: str | None, min_size: int) -> None:
    """ValueError naming the flag for a recipe or threshold that cannot work (torchao not needed)."""
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"--fp8 must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 16:
        raise ValueError(f"--fp8-min-size must be an integer >= 16 (float8 matmuls need multiples of 16), "
                         f"got {min_size!r}")


def torchao_float8():
    """torchao.float8, or a ValueError that names --fp8 and the fix when it is missing or too old."""
    try:
        import torchao
        from torchao import float8
    except ImportError as error:
        raise ValueError(f"--fp8 needs torchao {'.'.join(map(str, TORCHAO_VERSION))} or newer, which is not "
                         f"importable here ({error}); install it with {INSTALL_HINT}") from None
    found = re.match(r"(\d+)\.(\d+)", getattr(torchao, "__version__", ""))
    if found is None or tuple(map(int, found.groups())) < TORCHAO_VERSION \
            or not hasattr(float8, "convert_to_float8_training"):
        raise ValueError(f"--fp8 needs torchao {'.'.join(map(str, TORCHAO_VERSION))} or newer, found "
                         f"{getattr(torchao, '__version__', '?')}; upgrade it with {INSTALL_HINT}")
    return float8


def float8_module_filter(min_size: int = DEFAULT_MIN_SIZE,
                         skipped: tuple[str, ...] = SKIPPED_MODULES) -> Callable[[nn.Module, str], bool]:
    """(module, qualified name) -> convert it? True for an nn.Linear outside `skipped` whose weight
    dimensions are both multiples of 16 and both at least `min_size`, and for a SegmentedLinear whose
    input features are a multiple of 16 and whose rows and input features are at least `min_size` (its
    rows are padded)."""

    def keep_in_float8(module: nn.Module, name: str) -> bool:
        if name.rsplit(".", 1)[-1] in skipped:
            return False
        if isinstance(module, SegmentedLinear):
            weights = module.weights()
            rows, in_features = sum(weight.shape[0] for weight in weights), weights[0].shape[1]
            return in_features % 16 == 0 and min(rows, in_features) >= min_size
        if not isinstance(module, nn.Linear):
            return False
        out_features, in_features = module.weight.shape
        return all(size % 16 == 0 and size >= min_size for size in (out_features, in_features))

    return keep_in_float8


class Float8SegmentedLinear(SegmentedLinear):
    """A SegmentedLinear's one matmul in float8, with the same parameters (objects and names): the
    concatenated weight padded with zero rows to a multiple of 16, the padding's outputs dropped."""

    def __init__(self, original: SegmentedLinear, config):
        nn.Module.__init__(self)
        self.segments = original.segments
        for name, parameter in original._parameters.items():
            self.register_parameter(name, parameter)
        from torchao.float8.float8_linear import Float8Linear

        weights = self.weights()
        with torch.device("meta"):  # torchao's matmul settings for this config, without a weight of its own
            settings = Float8Linear(weights[0].shape[1], 16, bias=False, config=config)
        self.config, self.linear_mm_config = config, settings.linear_mm_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchao.float8.float8_linear import matmul_with_hp_or_float8_args

        weights = self.weights()
        rows = sum(weight.shape[0] for weight in weights)
        padding = -rows % 16
        if padding:
            weights = [*weights, weights[0].new_zeros(padding, weights[0].shape[1])]
        if torch.is_autocast_enabled(x.device.type):  # as Float8Linear: the output in the autocast dtype
            x = x.to(torch.get_autocast_dtype(x.device.type))
        out = matmul_with_hp_or_float8_args.apply(x, torch.cat(weights).t(), self.linear_mm_config, self.config)
        out = out[..., :rows] if padding else out
        biases = self.biases()
        return out if biases is None else out + torch.cat(biases).to(out.dtype)


def float8_config(recipe: str, fsdp_float8_all_gather: bool = False):
    """torchao's Float8LinearConfig for a recipe; float8 all-gather under FSDP2 exists for tensorwise only."""
    float8 = torchao_float8()
    config = float8.Float8LinearConfig.from_recipe_name(recipe)
    if fsdp_float8_all_gather and recipe == "tensorwise":
        config = dataclasses.replace(config, enable_fsdp_float8_all_gather=True)
    return config


def convert_to_float8(model: nn.Module, recipe: str, min_size: int = DEFAULT_MIN_SIZE,
                      fsdp_float8_all_gather: bool = False, skipped: tuple[str, ...] = SKIPPED_MODULES) -> list[str]:
    """Swap the linears the filter accepts for float8 ones, in place; returns their qualified names.
    fsdp_float8_all_gather (tensorwise): FSDP2 gathers the weights in float8; then call
    `precompute_float8_scales(model)` after every optimizer step. skipped: the modules' own names (the last
    part of the qualified name) kept in bf16."""
    check_float8_options(recipe, min_size)
    float8 = torchao_float8()
    accept = float8_module_filter(min_size, skipped)
    converted = [name for name, module in model.named_modules() if accept(module, name)]
    config = float8_config(recipe, fsdp_float8_all_gather)
    for name in converted:
        module = model.get_submodule(name)
        if isinstance(module, SegmentedLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, Float8SegmentedLinear(module, config))
    if any(isinstance(model.get_submodule(name), nn.Linear) for name in converted):
        float8.convert_to_float8_training(model, module_filter_fn=accept, config=config)
    return converted


def precompute_float8_scales(model: nn.Module) -> None:
    """After the optimizer step with float8 all-gather: one fused amax over every float8 weight."""
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

    precompute_float8_dynamic_scale_for_fsdp(model)


__all__ = ["RECIPES", "DEFAULT_MIN_SIZE", "check_float8_options", "float8_module_filter", "float8_config",
           "Float8SegmentedLinear", "convert_to_float8", "precompute_float8_scales", "torchao_float8"]
