"""The one training step: train, bench and the parallel tests all call `train_step`.

One process and every parallel layout run the same code: `parallelize` (hybridcore.parallel) gives a
ParallelModel, and a step is

    for each micro-batch: this rank's rows and sequence part (with positions and document ids) ->
        forward under autocast -> fused LM head + loss -> backward
    partial gradients summed over the tensor-parallel ranks -> global gradient norm, clipped ->
    optimizer step unless the loss or the norm is not finite

Under a pipeline the micro-batches go through its schedule as one step of more microbatches. The loss
is the mean over every token of the step, so the numbers do not depend on the layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..parallel import ParallelModel, as_parallel_model, mesh_dim
from ..parallel.context_parallel import global_positions, shard_sequence
from ..parallel.clipping import clip_divisor, divide_gradients_, grad_norm as global_grad_norm
from ..parallel.pipeline import default_microbatches
from .host_read import HostRead
from .optim import build_optimizer

IGNORE_INDEX = -100
DEFAULT_LOSS_CHUNK = 8192  # tokens per chunk of the fused head and loss


@dataclass
class Batch:
    """Global rows, the same on every rank: input_ids and labels [B, L], document ids [B, L] or None."""
    input_ids: torch.Tensor
    labels: torch.Tensor
    seq_idx: torch.Tensor | None = None

    @classmethod
    def from_tokens(cls, tokens: torch.Tensor, seq_idx: torch.Tensor | None = None) -> "Batch":
        """Next-token rows from tokens [B, L + 1] (and document ids of the same shape)."""
        return cls(tokens[:, :-1], tokens[:, 1:], seq_idx[:, :-1] if seq_idx is not None else None)

    @classmethod
    def from_loader(cls, batch: dict) -> "Batch":
        return cls(batch["input_ids"], batch["labels"], batch.get("seq_idx"))


@dataclass
class LocalBatch:
    """This rank's share of a Batch, on its device, with the positions of its tokens."""
    input_ids: torch.Tensor
    labels: torch.Tensor
    seq_idx: torch.Tensor | None
    positions: torch.Tensor


def local_batch(model: ParallelModel, batch: Batch, device) -> LocalBatch:
    """This rank's contiguous rows (data parallel) and zigzag part of the sequence (context parallel)."""
    mesh = model.mesh
    tensors = [batch.input_ids, batch.labels, batch.seq_idx]
    if mesh is not None:
        dp = mesh_dim(mesh, "dp")
        rows = batch.input_ids.shape[0]
        if rows % dp.size():
            raise ValueError(f"a batch of {rows} rows does not split over {dp.size()} data-parallel ranks")
        share = rows // dp.size()
        start = dp.get_local_rank() * share
        tensors = [t[start:start + share] if t is not None else None for t in tensors]
    input_ids, labels, seq_idx = (t.to(device, non_blocking=True) if t is not None else None for t in tensors)
    positions = global_positions(seq_idx, *input_ids.shape, device)
    if mesh is not None and mesh["cp"].size() > 1:
        input_ids, labels, positions = (shard_sequence(t, mesh) for t in (input_ids, labels, positions))
        seq_idx = shard_sequence(seq_idx, mesh) if seq_idx is not None else None
    tp = mesh["tp"].size() if mesh is not None else 1
    if tp > 1 and model.config.sequence_parallel and input_ids.shape[1] % tp:
        raise ValueError(f"sequence length {input_ids.shape[1]} (per context-parallel rank) must be divisible by "
                         f"ParallelConfig.tp ({tp}) with sequence_parallel=True")
    return LocalBatch(input_ids, labels, seq_idx, positions)


def autocast(device, dtype: torch.dtype | None):
    """bf16 autocast over fp32 weights when dtype is given, a no-op context otherwise."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def build_optimizers(model, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8) -> list:
    """One AdamW per part of the model (one part, or one per pipeline stage this rank holds)."""
    return [build_optimizer(part, lr, weight_decay, betas, eps) for part in as_parallel_model(model).parts]


@dataclass
class StepResult:
    loss: torch.Tensor  # mean over the step's tokens of the whole global batch (a device scalar)
    grad_norm: torch.Tensor  # before clipping
    finite_flag: torch.Tensor  # a device bool: False when the update was skipped
    # The three copied to the host behind the step's work: reading them waits for this step alone, not
    # for a step queued after it.
    read: HostRead = field(init=False, repr=False)

    def __post_init__(self):
        self.read = HostRead(torch.stack([self.loss.float(), self.grad_norm.float(), self.finite_flag.float()]))

    def seconds_since(self, earlier: StepResult | None) -> float | None:
        """Seconds on the GPU's clock from the end of an earlier step's work to the end of this one's (both
        waited for), or None where either was not timed on the GPU."""
        return self.read.seconds_since(earlier.read) if earlier is not None else None

    @property
    def finite(self) -> bool:
        return bool(self.read.values()[2])

    @property
    def values(self) -> tuple[float, float]:
        host = self.read.values()
        return float(host[0]), float(host[1])


def _loss_of(part, local: LocalBatch, loss_chunk: int) -> torch.Tensor:
    # through the module's forward, where FSDP gathers the embedding and the head
    return part(local.input_ids, local.seq_idx, local.positions, labels=local.labels, loss_chunk=loss_chunk)


def forward_backward(model, microbatches: list[Batch], *, autocast_dtype=None, loss_chunk: int = DEFAULT_LOSS_CHUNK,
                     cuda_graphs: bool = False) -> torch.Tensor:
    """Gradients of the mean loss over every token of `microbatches`; returns that loss (global mean)."""
    model = as_parallel_model(model)
    device = model.device
    local = [local_batch(model, batch, device) for batch in microbatches]
    if model.pipeline is not None:  # one schedule step over this rank's rows of every micro-batch
        joined = [torch.cat([getattr(part, name) for part in local]) if getattr(local[0], name) is not None else None
                  for name in ("input_ids", "labels", "seq_idx", "positions")]
        rows, length = local[0].input_ids.shape
        count = default_microbatches(model.config, rows, length) * len(local)
        with autocast(device, autocast_dtype):
            loss = model.pipeline.step(*joined, microbatches=count)
        total = model.pipeline.loss_across_stages(loss)
    else:
        counts = [(part.labels != IGNORE_INDEX).sum() for part in local]
        everything = torch.stack(counts).sum().clamp_min(1)
        total = torch.zeros((), dtype=torch.float32, device=device)
        for part, count in zip(local, counts):
            if cuda_graphs:  # a new iteration: earlier graph outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            with autocast(device, autocast_dtype):
                loss = _loss_of(model.model, part, loss_chunk) * (count / everything)
            loss.backward()
            total += loss.detach()
    model.finish_gradients()
    return global_mean(total, model)


def global_mean(value: torch.Tensor, model: ParallelModel) -> torch.Tensor:
    """Mean of a per-rank scalar over the data- and context-parallel ranks (each holds an equal share of
    the tokens; tensor-parallel ranks hold the same value)."""
    if model.mesh is None or mesh_dim(model.mesh, "dp_cp").size() == 1:
        return value
    group = mesh_dim(model.mesh, "dp_cp")
    value = value.detach().clone()
    dist.all_reduce(value, group=group.get_group())
    return value / group.size()


def train_step(model, optimizers, microbatches: list[Batch], *, max_norm: float = math.inf, autocast_dtype=None,
               loss_chunk: int = DEFAULT_LOSS_CHUNK, cuda_graphs: bool = False) -> StepResult:
    """One optimizer step over `microbatches` (gradient accumulation when several); the update is
    skipped when the loss or the gradient norm is not finite. `optimizers`: one per part."""
    model = as_parallel_model(model)
    loss = forward_backward(model, microbatches, autocast_dtype=autocast_dtype, loss_chunk=loss_chunk,
                            cuda_graphs=cuda_graphs)
    grad_norm = global_grad_norm(model)
    divisor = clip_divisor(grad_norm, max_norm)
    finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
    # The fused AdamW skips a flagged update on the device (its step count included), so the host need
    # not wait here for the backward to end; other optimizers are stepped after a look at the flag. It
    # also divides the gradients by the clipping factor as it reads them, saving a pass over them.
    skips_on_device = all(skips_updates_on_device(optimizer) for optimizer in optimizers)
    if divisor is not None and not skips_on_device:
        divide_gradients_(model, divisor)
    stepped = skips_on_device or bool(finite)
    for optimizer in optimizers:
        if skips_on_device:
            optimizer.found_inf = (~finite).float()
            optimizer.grad_scale = divisor
        if stepped:
            optimizer.step()
        if skips_on_device:  # this step's only: a step() of the caller's own must not reuse them
            optimizer.found_inf = optimizer.grad_scale = None
        optimizer.zero_grad(set_to_none=not cuda_graphs or len(microbatches) == 1)
    if stepped:  # after a skipped update the weights are unchanged, so this recomputes the same values
        model.after_optimizer_step()
    return StepResult(loss.detach(), grad_norm, finite)


def skips_updates_on_device(optimizer) -> bool:
    """Whether `optimizer.found_inf` (a device flag, 1.0 to skip) and `optimizer.grad_scale` (a device
    divisor of the gradients) are honoured by its step: torch's fused Adam and AdamW read them, as
    GradScaler relies on; the foreach and per-parameter loops refuse them."""
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and bool(optimizer.defaults.get("fused"))


@torch.no_grad()
def evaluate(model, batches: list[Batch], *, autocast_dtype=None, loss_chunk: int = DEFAULT_LOSS_CHUNK
             ) -> tuple[float, int]:
    """(mean loss per token, tokens) over global batches; a short last batch is padded with ignored rows
    so that it splits over the data-parallel ranks and the pipeline's microbatches."""
    model = as_parallel_model(model)
    was_training = model.parts[0].training
    model.eval()
    device = model.device
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, token count
    try:
        for batch in batches:
            if batch.input_ids.shape[0]:
                totals += _evaluate_batch(model, batch, device, autocast_dtype, loss_chunk)
    finally:
        model.train(was_training)
    if model.mesh is not None:
        dist.all_reduce(totals)
    count = int(totals[1].item())
    return (totals[0].item() / count if count else float("nan")), count


def _padded(model: ParallelModel, batch: Batch) -> Batch:
    """The batch with ignored rows appended up to a multiple of the rows every rank and microbatch needs."""
    multiple = 1
    if model.mesh is not None:
        multiple = mesh_dim(model.mesh, "dp").size()
        if model.pipeline is not None:
            multiple *= model.config.pp
    missing = -batch.input_ids.shape[0] % multiple
    if not missing:
        return batch
    zeros = batch.input_ids.new_zeros(missing, batch.input_ids.shape[1])
    ignored = torch.full_like(zeros, IGNORE_INDEX)
    seq_idx = torch.cat([batch.seq_idx, zeros]) if batch.seq_idx is not None else None
    return Batch(torch.cat([batch.input_ids, zeros]), torch.cat([batch.labels, ignored]), seq_idx)


def _evaluate_batch(model: ParallelModel, batch: Batch, device, autocast_dtype, loss_chunk) -> torch.Tensor:
    local = local_batch(model, _padded(model, batch), device)
    result = torch.zeros(2, dtype=torch.float64, device=device)
    with autocast(device, autocast_dtype):
        if model.pipeline is None:
            count = (local.labels != IGNORE_INDEX).sum()
            result += torch.stack([_loss_of(model.model, local, loss_chunk).double() * count, count.double()])
        else:
            microbatches = default_microbatches(model.config, *local.input_ids.shape)
            means = model.pipeline.evaluate(local.input_ids, local.labels, local.seq_idx, local.positions,
                                            microbatches=microbatches)
            for mean, labels in zip(means or [], local.labels.chunk(microbatches)):
                count = (labels != IGNORE_INDEX).sum()
                result += torch.stack([mean.double() * count, count.double()])
    # Tensor-parallel ranks compute the same numbers: one of them reports.
    if model.mesh is not None and model.mesh["tp"].get_local_rank() != 0:
        result.zero_()
    return result


__all__ = ["Batch", "LocalBatch", "StepResult", "local_batch", "train_step", "forward_backward", "evaluate",
           "build_optimizers", "global_mean", "autocast", "IGNORE_INDEX", "DEFAULT_LOSS_CHUNK"]
