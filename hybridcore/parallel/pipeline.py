"""Pipeline parallelism on torch.distributed.pipelining.

The model is cut into pp x pp_stages_per_rank stages: at the layout's '|' marks when it has them, else
by FLOPs, the embedding counted with the first layer and the LM head with its loss with the last
(flops.pipeline_stages -> layout.split_by_cost). Each stage is a HybridLM that keeps only its
layers (the ModuleDict keeps global indices, so parameter names and checkpoint keys do not change);
the embedding lives on the first stage and the final norm + LM head on the last. Rank r of the pp
mesh holds stages r, r + pp, r + 2 pp, ... (the loop order interleaved 1F1B expects). Each stage is
then parallelized like a whole model (TP, activation checkpointing, compile, FSDP2).

Every microbatch carries its own `seq_idx` and `positions` to every stage (the schedules pass keyword
arguments to all stages), so document masking, resets and RoPE work as in one process. The last stage
returns its final-normed hidden states and the schedule's loss is the model's fused head and loss
(HybridLM.loss), so the logits are never whole there either.

Microbatches: ParallelConfig.pp_microbatches, or by default the fewest (at least pp) that keep each
microbatch at MICROBATCH_TOKENS tokens or more while splitting the rows (`default_microbatches`):
the bubble shrinks with more microbatches, but below that size a stage's compute no longer covers
its host time per microbatch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from ..config import ModelConfig
from ..flops import pipeline_stages
from ..model.model import HybridLM
from .config import ParallelConfig

MICROBATCH_TOKENS = 8192


def default_microbatches(config: ParallelConfig, local_rows: int, seq_len: int) -> int:
    """Microbatches per step for `local_rows` rows of `seq_len` tokens on each data-parallel rank."""
    if config.pp_microbatches is not None:
        return config.pp_microbatches
    step = config.pp if config.pp_schedule == "interleaved_1f1b" else 1
    counts = [m for m in range(config.pp, local_rows + 1, step) if local_rows % m == 0]
    if not counts:
        return config.pp
    large_enough = [m for m in counts if local_rows // m * seq_len >= MICROBATCH_TOKENS]
    return max(large_enough) if large_enough else min(counts)


def stage_layers(model: HybridLM | ModelConfig, num_stages: int, seq_len: int) -> list[list[int]]:
    """Global layer indices of every stage (of a model, or of the model a ModelConfig describes)."""
    config = model if isinstance(model, ModelConfig) else model.config
    if num_stages > config.num_layers:
        raise ValueError(f"ParallelConfig: {num_stages} pipeline stages (pp x pp_stages_per_rank) for a model "
                         f"of {config.num_layers} layers")
    return pipeline_stages(config, num_stages, seq_len)


def check_pipeline(model_config: ModelConfig, config: ParallelConfig, seq_len: int) -> list[list[int]]:
    """ValueError naming the field when the model cannot be cut into this layout's stages; the stages."""
    if model_config.tie_embeddings and config.pp > 1:
        raise ValueError("ModelConfig.tie_embeddings cannot be used with ParallelConfig.pp > 1: the embedding "
                         "and the LM head live on different stages")
    return stage_layers(model_config, config.pp * config.pp_stages_per_rank, seq_len)


def check_microbatches(config: ParallelConfig, microbatches: int) -> None:
    """ValueError naming the field when the schedule cannot run this many microbatches in one step
    (torch.distributed.pipelining's rules, told before a schedule is built)."""
    if config.pp_schedule == "1f1b" and microbatches < config.pp:
        raise ValueError(f"the 1f1b schedule needs at least ParallelConfig.pp = {config.pp} microbatches per step "
                         f"(ParallelConfig.pp_microbatches), got {microbatches}")
    rounds = max(1, microbatches // config.pp)
    if config.pp_schedule == "interleaved_1f1b" and microbatches % rounds:
        raise ValueError(f"the interleaved_1f1b schedule runs microbatches in rounds of ParallelConfig.pp = "
                         f"{config.pp}: {microbatches} microbatches per step (ParallelConfig.pp_microbatches) do "
                         f"not divide into its {rounds} rounds; use a multiple of {config.pp}")


def local_stage_filter(model_config: ModelConfig, parallel_config: ParallelConfig, pp_rank: int,
                       seq_len: int) -> Callable[[str], bool]:
    """Which of the full model's modules (by qualified name) pipeline rank `pp_rank` keeps: its stages'
    layers, the embedding with the first stage, the final norm and head with the last. For
    model.build_model_part, so a rank never materialises the other stages."""
    stages = check_pipeline(model_config, parallel_config, seq_len)
    indices = range(pp_rank, len(stages), parallel_config.pp)
    layers = {str(layer) for index in indices for layer in stages[index]}
    first, last = 0 in indices, len(stages) - 1 in indices

    def keep(name: str) -> bool:
        top, _, rest = name.partition(".")
        if top == "layers":
            return rest.partition(".")[0] in layers
        return first if top == "embed" else last  # final_norm, lm_head

    return keep


def stage_module(model: HybridLM, stages: list[list[int]], index: int) -> HybridLM:
    """A copy of `model` with only stage `index`'s layers (and the embedding / head where they belong)."""
    part = copy.deepcopy(model)
    keep = {str(i) for i in stages[index]}
    for name in list(part.layers):
        if name not in keep:
            del part.layers[name]
    if index > 0:
        part.embed = None
    if index < len(stages) - 1:
        part.final_norm = None
        part.lm_head = None
    return part


class Pipeline:
    """This rank's stages of a pipelined model and the schedule that runs them.

    `model_parts` are the stage modules (HybridLM each), in stage order; give each its own optimizer.
    `step(input_ids, targets, seq_idx)` runs forward and backward of one local batch (split into
    microbatches); it returns the mean loss on ranks holding the last stage and None elsewhere.
    `evaluate(...)` runs the forward passes only and returns each microbatch's loss there.
    """

    def __init__(self, model_parts: list[HybridLM], stage_indices: list[int], num_stages: int,
                 config: ParallelConfig, mesh: DeviceMesh, loss_chunk: int, compute_dtype: torch.dtype):
        self.model_parts = model_parts
        self.stage_indices = stage_indices
        self.num_stages = num_stages
        self.config = config
        self.mesh = mesh
        self.loss_chunk = loss_chunk  # tokens per chunk of the fused head and loss
        self.compute_dtype = compute_dtype
        self._schedules = {}  # (local batch shape, microbatches) -> schedule

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model_parts[-1].loss(hidden, targets, self.loss_chunk)

    @property
    def has_first_stage(self) -> bool:
        return 0 in self.stage_indices

    @property
    def has_last_stage(self) -> bool:
        return self.num_stages - 1 in self.stage_indices

    def parameters(self):
        for part in self.model_parts:
            yield from part.parameters()

    def _device(self) -> torch.device:
        if self.mesh.device_type == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(self.mesh.device_type)

    def _build_schedule(self, batch: int, length: int, microbatches: int):
        """Stages with static shapes (no shape inference: it would run TP collectives on fake tensors)."""
        if batch % microbatches:
            raise ValueError(f"local batch of {batch} rows does not split into ParallelConfig.pp_microbatches "
                             f"= {microbatches} microbatches")
        rows = batch // microbatches
        device = self._device()
        # `length` is this rank's (context-parallel) share; between stages the residual stream is also
        # split over tp under sequence parallelism.
        shard = self.mesh["tp"].size() if self.config.sequence_parallel else 1
        d_model = self.model_parts[0].config.d_model
        # requires_grad: activations crossing a stage boundary carry gradients back. Under autocast the
        # hidden states between layers stay in fp32 (the residual stream's dtype).
        hidden = torch.empty(rows, length // shard, d_model, device=device, dtype=self.compute_dtype,
                             requires_grad=True)
        stages = []
        for part, index in zip(self.model_parts, self.stage_indices):
            first = index == 0
            inputs = torch.empty(rows, length, dtype=torch.long, device=device) if first else hidden
            stages.append(PipelineStage(part, index, self.num_stages, device, input_args=inputs,
                                        output_args=hidden, group=self.mesh["pp"].get_group()))
        kind = self.config.pp_schedule
        if kind == "interleaved_1f1b":
            return ScheduleInterleaved1F1B(stages, microbatches, loss_fn=self._loss, scale_grads=True)
        schedule = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[kind]
        return schedule(stages[0], microbatches, loss_fn=self._loss, scale_grads=True)

    def _schedule(self, input_ids: torch.Tensor, microbatches: int):
        key = (tuple(input_ids.shape), microbatches)
        if key not in self._schedules:
            self._schedules[key] = self._build_schedule(*key[0], key[1])
        return self._schedules[key]

    def _run(self, run, input_ids, targets, seq_idx, positions) -> list[torch.Tensor] | None:
        kwargs = {"positions": positions, "return_hidden": True}
        if seq_idx is not None:
            kwargs["seq_idx"] = seq_idx
        losses = [] if self.has_last_stage else None
        args = (input_ids,) if self.has_first_stage else ()
        target = targets if self.has_last_stage else None
        run(*args, target=target, losses=losses, **kwargs)
        return None if losses is None else [loss.detach().float() for loss in losses]

    def step(self, input_ids: torch.Tensor, targets: torch.Tensor, seq_idx: torch.Tensor | None,
             positions: torch.Tensor, microbatches: int):
        """Forward and backward of one local batch in `microbatches` (gradient accumulation is more
        microbatches per step: the schedule scales gradients per step); the mean loss on ranks holding
        the last stage, None elsewhere."""
        losses = self._run(self._schedule(input_ids, microbatches).step, input_ids, targets, seq_idx, positions)
        return None if losses is None else torch.stack(losses).mean()

    @torch.no_grad()
    def evaluate(self, input_ids: torch.Tensor, targets: torch.Tensor, seq_idx: torch.Tensor | None,
                 positions: torch.Tensor, microbatches: int) -> list[torch.Tensor] | None:
        """Forward passes only: each microbatch's loss on ranks holding the last stage, None elsewhere."""
        return self._run(self._schedule(input_ids, microbatches).eval, input_ids, targets, seq_idx, positions)

    def loss_across_stages(self, loss: torch.Tensor | None) -> torch.Tensor:
        """The last stage's loss on every rank of the pp group."""
        value = loss.clone() if loss is not None else torch.zeros((), device=self._device())
        dist.all_reduce(value, group=self.mesh["pp"].get_group())
        return value
