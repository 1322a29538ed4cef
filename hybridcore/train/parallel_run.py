"""The trainer's path for several processes, built on hybridcore.parallel in its documented order.

Mesh from the layout flags; the full fp32 model from the seed (or --init-hf) on every rank; then
`parallelize` (TP + SP, context parallel, activation checkpointing, FSDP2) or, with pp > 1,
`build_pipeline`; then AdamW with the trainer's parameter groups (one optimizer per pipeline stage).

Every rank reads the same global batch and `split_batch` takes its rows (data parallel) and its part of
the sequence (context parallel); FSDP averages the gradients over dp x cp, so the step is the
single-process step on the same global batch. Gradient accumulation under a pipeline concatenates the
micro-batches into one schedule step with grad_accum times the microbatches (the schedule rescales
gradients per step). Mixed precision is FSDP's (bf16 compute, fp32 reduction) rather than autocast,
and the logits are never chunked (the sharded model computes them in one forward).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..parallel import (Pipeline, ParallelConfig, build_mesh, build_pipeline, clip_grad_norm_, global_mean,
                        parallelize, split_batch, token_loss)
from .loss import IGNORE_INDEX, loss_sum
from .optim import build_optimizer


def full_rows(batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A loader batch as split_batch takes it: tokens [B, L + 1] and seq_idx [B, L + 1] (or None)."""
    tokens = torch.cat([batch["input_ids"], batch["labels"][:, -1:]], dim=1)
    seq_idx = batch.get("seq_idx")
    if seq_idx is not None:
        seq_idx = torch.cat([seq_idx, seq_idx[:, -1:]], dim=1)  # the last column is never read
    return tokens, seq_idx


class ParallelModel:
    """This rank's share of the model, its optimizers, and the collective step and evaluation."""

    def __init__(self, full_model, layout: ParallelConfig, train_config, device: torch.device):
        self.layout, self.device = layout, device
        self.mesh = build_mesh(layout, device.type)
        options = dict(activation_checkpointing=train_config.activation_checkpointing,
                       checkpoint_layers=train_config.checkpoint_layers, compile=train_config.compile,
                       mixed_precision=train_config.resolved_dtype(device.type))
        if layout.pp == 1:
            self.model = parallelize(full_model, layout, self.mesh, **options)
            parts = [self.model]
        else:
            self.model = build_pipeline(full_model, layout, self.mesh, token_loss, seq_len=train_config.seq_len,
                                        **options)
            parts = self.model.model_parts
        for part in parts:
            part.train()
        self.parts = parts
        betas = (train_config.beta1, train_config.beta2)
        self.optimizers = [build_optimizer(part, train_config.lr, train_config.weight_decay, betas, train_config.eps)
                           for part in parts]

    @property
    def pipelined(self) -> bool:
        return isinstance(self.model, Pipeline)

    def checkpoint_optimizer(self):
        """What save_sharded/load_sharded take: one optimizer, or one per pipeline stage."""
        return self.optimizers if self.pipelined else self.optimizers[0]

    def _local(self, tokens: torch.Tensor, seq_idx: torch.Tensor | None):
        return tuple(t.to(self.device) if t is not None else None for t in split_batch(tokens, seq_idx, self.mesh))

    # ---- training ----------------------------------------------------------------------------------------
    def forward_backward(self, batches: list[dict], max_norm: float) -> tuple[float, float]:
        """Gradients of the mean loss over every token of `batches` (the step's global micro-batches),
        clipped to max_norm; returns (global mean loss, gradient norm before clipping)."""
        local = [self._local(*full_rows(batch)) for batch in batches]
        if self.pipelined:  # one schedule step over this rank's rows of every micro-batch
            inputs, targets = (torch.cat([part[i] for part in local]) for i in (0, 1))
            docs = torch.cat([part[2] for part in local]) if local[0][2] is not None else None
            loss = self.model.step(inputs, targets, docs, microbatches=self.layout.num_microbatches * len(local))
            total = self.model.loss_across_stages(loss)
        else:
            total = torch.zeros((), dtype=torch.float32, device=self.device)
            for inputs, targets, docs in local:
                loss, count = loss_sum(self.model, inputs, targets, docs, chunk_tokens=inputs.numel())
                loss = loss / (count * len(local))  # this rank's tokens are an equal share of the step's
                loss.backward()
                total += loss.detach()
        return global_mean(total, self.mesh), clip_grad_norm_(self.model, max_norm)

    # ---- evaluation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches: list[dict]) -> tuple[float, int]:
        """(mean loss per token, tokens) over global validation batches; a short last batch is padded
        with ignored rows so that it splits over the data-parallel ranks and pipeline microbatches."""
        for part in self.parts:
            part.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, token count
        try:
            for batch in batches:
                if batch["input_ids"].shape[0]:
                    totals += self._evaluate_batch(*full_rows(batch))
        finally:
            for part in self.parts:
                part.train()
        dist.all_reduce(totals)
        count = int(totals[1].item())
        return (totals[0].item() / count if count else float("nan")), count

    def _evaluate_batch(self, tokens: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
        microbatches = self.layout.num_microbatches if self.pipelined else 1
        multiple = self.layout.dp * microbatches
        real = torch.ones_like(tokens)
        missing = -tokens.shape[0] % multiple
        if missing:
            tokens = torch.cat([tokens, tokens.new_zeros(missing, tokens.shape[1])])
            real = torch.cat([real, real.new_zeros(missing, real.shape[1])])
            seq_idx = torch.cat([seq_idx, seq_idx.new_zeros(missing, seq_idx.shape[1])]) if seq_idx is not None else None
        inputs, targets, docs = self._local(tokens, seq_idx)
        _, real_targets, _ = self._local(real, None)  # split exactly like the targets
        targets = targets.masked_fill(real_targets == 0, IGNORE_INDEX)
        result = self._loss_sum(inputs, targets, docs, microbatches)
        # Tensor-parallel ranks compute the same numbers: one of them reports.
        return result if self.mesh["tp"].get_local_rank() == 0 else torch.zeros_like(result)

    def _loss_sum(self, inputs, targets, docs, microbatches: int) -> torch.Tensor:
        """(sum of the token losses, counted tokens) of this rank's share; zeros off the last stage."""
        if not self.pipelined:
            total, count = loss_sum(self.model, inputs, targets, docs, chunk_tokens=inputs.numel())
            return torch.tensor([total.item(), count], dtype=torch.float64, device=self.device)
        result = torch.zeros(2, dtype=torch.float64, device=self.device)
        means = self.model.evaluate(inputs, targets, docs, microbatches=microbatches)
        for mean, part in zip(means or [], targets.chunk(microbatches)):
            count = int((part != IGNORE_INDEX).sum())
            if count:  # token_loss is the mean over the microbatch's counted tokens
                result += torch.tensor([mean.item() * count, count], dtype=torch.float64, device=self.device)
        return result


__all__ = ["ParallelModel", "full_rows"]
