"""From TrainConfig to the model that `hybridcore.parallel.parallelize` takes: config resolution and init.

Order (torchtitan's): build and initialise the full model from the seed (or load --init-hf weights),
then parallelize (in every layout, one process included), and only then build the optimizer, so it sees
the final parameters.
"""

from __future__ import annotations


import torch

from ..config import ModelConfig, apply_overrides
from ..io.load import load_model, open_source
from ..model import HybridLM, build_model, build_model_part
from ..presets import get_preset


def resolve_model_config(train_config) -> ModelConfig:
    if train_config.init_hf is not None:
        if train_config.preset is not None:
            raise ValueError("--preset and --init-hf both name a model; give one (--init-hf brings its own config)")
        base = open_source(train_config.init_hf).config  # a directory, or a Hub id through the cache
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
