"""A small training-step harness for layout tests and benchmarks (the real loop lives in train/).

`build_parallel_model` initialises the full model from a seed and then shards it (or cuts it into
pipeline stages), so weights do not depend on the layout; `train_steps` feeds every data-parallel
rank its contiguous rows of one global batch (and every context-parallel rank its part of the
sequence) and reports the loss averaged over the whole batch, so a run on any layout can be compared
with a single-process run number for number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh

from ..config import ModelConfig
from ..model.model import HybridLM, build_model, build_model_part
from .config import ParallelConfig
from .context_parallel import shard_sequence
from .mesh import data_parallel_rank, mesh_dim
from .parallelize import parallelize
from .pipeline import Pipeline, build_pipeline, local_stage_filter


def build_parallel_model(config: ModelConfig, parallel_config: ParallelConfig | None = None,
                         mesh: DeviceMesh | None = None, *, seed: int = 0, device: str | torch.device = "cpu",
                         lr: float = 1e-3, weight_decay: float = 0.1, seq_len: int = 4096, optimizer: str = "adamw",
                         prepare: Callable[[HybridLM], None] | None = None, **parallelize_options):
    """(model, optimizer) for `config`, initialised from `seed` and parallelized when a mesh is given.

    optimizer: "adamw", or "sgd" (plain gradient steps: a wrong gradient shows in the next loss in
    proportion, where Adam's per-parameter normalisation would hide a wrong scale).
    With pp > 1: (Pipeline, [one optimizer per stage this rank holds]); seq_len balances the stages.
    prepare(model): runs on the full initialised model before it is sharded (tests use it to set
    weights that make every path matter).
    """
    parallel_config = parallel_config or ParallelConfig()
    if mesh is not None and parallel_config.pp > 1 and prepare is None:  # only this rank's stages
        keep = local_stage_filter(config, parallel_config, mesh["pp"].get_local_rank(), seq_len)
        model = build_model_part(config, keep, device=device, seed=seed)
    else:
        model = build_model(config, device=device, seed=seed)
    if prepare is not None:
        prepare(model)
    if mesh is not None and parallel_config.pp > 1:
        pipeline = build_pipeline(model, parallel_config, mesh, token_loss, seq_len=seq_len, **parallelize_options)
        return pipeline, [_optimizer(optimizer, part, lr, weight_decay) for part in pipeline.model_parts]
    if mesh is not None:
        parallelize(model, parallel_config, mesh, **parallelize_options)
    return model, _optimizer(optimizer, model, lr, weight_decay)


def _optimizer(name: str, model, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy; logits [B, L, V], targets [B, L]."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def local_rows(batch: torch.Tensor, mesh: DeviceMesh | None) -> torch.Tensor:
    """This rank's contiguous rows of the global batch."""
    index, count = data_parallel_rank(mesh)
    if batch.shape[0] % count:
        raise ValueError(f"global batch of {batch.shape[0]} rows does not split over {count} data-parallel ranks")
    rows = batch.shape[0] // count
    return batch[index * rows:(index + 1) * rows]


def split_batch(tokens: torch.Tensor, seq_idx: torch.Tensor | None, mesh: DeviceMesh | None):
    """(input_ids, targets, seq_idx) of this rank: its rows of the global batch, and under context
    parallelism its part of the sequence. tokens/seq_idx [B, L + 1]."""
    tokens = local_rows(tokens, mesh)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    docs = local_rows(seq_idx, mesh)[:, :-1] if seq_idx is not None else None
    if mesh is not None and mesh["cp"].size() > 1:
        inputs, targets = shard_sequence(inputs, mesh), shard_sequence(targets, mesh)
        docs = shard_sequence(docs, mesh) if docs is not None else None
    return inputs, targets, docs


def global_mean(value: torch.Tensor, mesh: DeviceMesh | None) -> float:
    """Mean of a per-rank scalar over the data- and context-parallel ranks (each holds an equal share
    of the tokens; tensor-parallel ranks hold the same value)."""
    if mesh is None or mesh_dim(mesh, "dp_cp").size() == 1:
        return value.item()
    group = mesh_dim(mesh, "dp_cp")
    value = value.detach().clone()
    dist.all_reduce(value, group=group.get_group())
    return value.item() / group.size()


def train_steps(model: HybridLM | Pipeline, optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
                batches: torch.Tensor | Sequence[torch.Tensor], *, steps: int | None = None,
                mesh: DeviceMesh | None = None, seq_idx: torch.Tensor | Sequence[torch.Tensor] | None = None
                ) -> list[float]:
    """Run optimizer steps; returns the global-batch loss before each step.

    batches: one global batch [B, L + 1] reused every step (then `steps` is required), or one per step.
    seq_idx: document index per token, same shape(s), or None.
    """
    if isinstance(batches, torch.Tensor):
        if steps is None:
            raise ValueError("steps is required when one batch is reused for every step")
        batches = [batches] * steps
        seq_idx = [seq_idx] * steps
    elif seq_idx is None or isinstance(seq_idx, torch.Tensor):
        seq_idx = [seq_idx] * len(batches)
    device = next(model.parameters()).device
    losses = []
    for tokens, docs in zip(batches, seq_idx):
        inputs, targets, docs = (t.to(device) if t is not None else None for t in split_batch(tokens, docs, mesh))
        losses.append(global_mean(train_step(model, optimizer, inputs, targets, docs), mesh))
    return losses


def train_step(model: HybridLM | Pipeline, optimizer, inputs: torch.Tensor, targets: torch.Tensor,
               seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Forward, backward and optimizer step on this rank's inputs (from `split_batch`); returns this
    rank's loss (for a pipeline: the last stage's, on every rank of the pp group)."""
    if isinstance(model, Pipeline):
        loss = model.loss_across_stages(model.step(inputs, targets, seq_idx))
    else:
        loss = token_loss(model(inputs, seq_idx=seq_idx), targets)
        loss.backward()
    for each in optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]:
        each.step()
        each.zero_grad(set_to_none=True)
    return loss.detach()
