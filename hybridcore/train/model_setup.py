"""From TrainConfig to a model ready for the optimizer: config resolution, init, the parallelize slot.

Order (torchtitan's): build and initialise the full model from the seed (or load --init-hf weights),
then parallelize, and only then build the optimizer, so it sees the final parameters. One process uses
`parallelize` below (activation checkpointing, compile); under torchrun parallel_run.ParallelModel calls
hybridcore.parallel.parallelize / build_pipeline instead, which apply TP, AC, compile and FSDP2 in their order.
"""

from __future__ import annotations

import functools
import os

import torch
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig, apply_overrides
from ..io.load import load_model, open_source
from ..model import HybridLM, build_model, build_model_part
from ..model.attention import use_sdpa_for_documents
from ..presets import get_preset


def resolve_model_config(train_config) -> ModelConfig:
    if train_config.init_hf is not None:
        if train_config.preset is not None:
            raise ValueError("--preset and --init-hf both name a model; give one (--init-hf brings its own config)")
        if not os.path.isdir(train_config.init_hf):
            raise ValueError(f"--init-hf: {train_config.init_hf} is not a directory")
        base = open_source(train_config.init_hf).config
    else:
        base = get_preset(train_config.preset)
    return apply_overrides(base, train_config.overrides)


def build_train_model(model_config: ModelConfig, train_config, device: torch.device, load_init: bool = True,
                      keep=None) -> HybridLM:
    """The full model in fp32 (the master weights) on `device`: seeded init, or --init-hf weights.
    keep(name) -> bool (a pipeline rank's modules): only those are materialised, the rest stay on the
    meta device; not with --init-hf weights to load."""
    if keep is not None:
        if train_config.init_hf is not None and load_init:
            raise ValueError("build_train_model: --init-hf weights load into the whole model")
        return build_model_part(model_config, keep, device=device, seed=train_config.seed)
    model = build_model(model_config, device=device, dtype=torch.float32, seed=train_config.seed)
    if train_config.init_hf is not None and load_init:
        source = load_model(train_config.init_hf, device="cpu", dtype=torch.float32)
        try:
            model.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as error:
            raise ValueError(f"--set: the overrides change parameter shapes of the --init-hf model "
                             f"({str(error).splitlines()[-1].strip()})") from None
        del source
    return model


def _checkpointed_forward(original, *args, **kwargs):
    if not torch.is_grad_enabled():
        return original(*args, **kwargs)
    return checkpoint(original, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: HybridLM, layers: int | None = None) -> None:
    """Recompute the activations of the first `layers` layers of the layout (all when None) in backward.
    Done by replacing each layer's bound forward on the instance, so module names and state-dict keys stay
    exactly as they were."""
    for name in model.leading_layer_names(layers):
        layer = model.layers[name]
        if not isinstance(layer.forward, functools.partial):
            layer.forward = functools.partial(_checkpointed_forward, layer.forward)
        use_sdpa_for_documents(layer)


def parallelize(model: HybridLM, train_config) -> HybridLM:
    """The one-process slot between building the model and building the optimizer: activation
    checkpointing, then per-layer compile, when asked (module names and keys unchanged either way).
    Several processes go through parallel_run.ParallelModel instead."""
    if train_config.activation_checkpointing:
        apply_activation_checkpointing(model, train_config.checkpoint_layers)
    if train_config.compile:
        compile_layers(model, train_config.compile_mode)
    return model


def compile_layers(model: HybridLM, mode: str = "default") -> None:
    """torch.compile each layer in place (no _orig_mod prefix in the state dict), in one of
    train.config.COMPILE_MODES; `hybridcore bench` compiles through here too, so it times what train runs."""
    for layer in model.layers.values():
        layer.compile(mode=None if mode == "default" else mode)
