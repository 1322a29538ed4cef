"""Build a model under a layout and train it through the one training step (hybridcore.train.step)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hybridcore.config import ModelConfig
from hybridcore.model.model import HybridLM, build_model, build_model_part
from hybridcore.parallel import ParallelConfig, parallelize
from hybridcore.parallel.pipeline import local_stage_filter
from hybridcore.train.step import Batch, build_optimizers, train_step


def build_parallel_model(config: ModelConfig, parallel_config: ParallelConfig | None = None, mesh=None, *,
                         seed: int = 0, device="cpu", lr: float = 1e-3, weight_decay: float = 0.1,
                         seq_len: int = 4096, optimizer: str = "adamw",
                         prepare: Callable[[HybridLM], None] | None = None, **options):
    """(ParallelModel, one optimizer per part), initialised from `seed` before the layout splits it.

    optimizer: "adamw", or "sgd" (plain gradient steps: a wrong gradient shows in the next loss in
    proportion, where Adam's per-parameter normalisation would hide a wrong scale). prepare(model) runs
    on the whole initialised model first (tests use it to set weights that make every path matter)."""
    parallel_config = parallel_config or ParallelConfig(dp_shard=1)
    if mesh is not None and parallel_config.pp > 1 and prepare is None:  # only this rank's stages
        keep = local_stage_filter(config, parallel_config, mesh["pp"].get_local_rank(), seq_len)
        model = build_model_part(config, keep, device=device, seed=seed)
    else:
        model = build_model(config, device=device, seed=seed)
    if prepare is not None:
        prepare(model)
    model = parallelize(model, mesh, parallel_config, seq_len=seq_len, **options)
    if optimizer == "sgd":
        return model, [torch.optim.SGD(part.parameters(), lr=lr) for part in model.parts]
    return model, build_optimizers(model, lr, weight_decay)


def train_steps(model, optimizers, batches, *, steps: int | None = None, seq_idx=None) -> list[float]:
    """Optimizer steps on global batches [B, L + 1] (one reused `steps` times, or one per step); the
    global-batch loss before each step."""
    if isinstance(batches, torch.Tensor):
        batches, seq_idx = [batches] * steps, [seq_idx] * steps
    elif seq_idx is None or isinstance(seq_idx, torch.Tensor):
        seq_idx = [seq_idx] * len(batches)
    return [train_step(model, optimizers, [Batch.from_tokens(tokens, docs)]).loss.item()
            for tokens, docs in zip(batches, seq_idx)]
