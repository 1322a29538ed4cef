"""Tensor parallelism (Megatron-style) with sequence parallelism, applied from the model's plans.

`apply_tensor_parallel` reads every module's `parallel_plan` (model/plan.py) and replaces each
parameter by this rank's slice of it, a plain tensor: attention's query and key/value heads, the MLP's
hidden channels, every Mamba-2 in_proj / conv segment by heads (B and C by groups, or whole on every
rank when the groups do not divide among the ranks), the vocabulary rows of the embedding and the LM
head. Inside a block the model computes on these plain tensors, reading its local head counts from
their shapes; the only communication is in the `TensorParallelRegion` it is given:

    enter     the pre-norm's output to the branches: an all-gather of the sequence shards (sequence
              parallelism), or the identity whose backward all-reduces the input's gradient
    exit      the branches' partial outputs, summed over the ranks (both branches of a P layer at once):
              a reduce-scatter onto this rank's sequence shard, or an all-reduce
    all_sum   a small all-reduce for the gated norm's statistics when one group spans the ranks
    embedding this rank's vocabulary rows looked up, the rest zero, then summed like `exit`
    loss      the LM head's products stay on their rank: three row statistics per chunk cross the ranks
              (ops.chunked_cross_entropy), the logits are never gathered

Parameters whole on every rank whose gradient is a per-rank partial sum (the norms under sequence
parallelism, B and C when the groups are shared) are recorded in their layouts and summed over the
ranks after backward (`reduce_partial_gradients`). A row-parallel output bias is held by the first rank
of the group only, so it is added once.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..model.model import HybridLM
from ..model.plan import COLWISE, GROUPS, OUTPUT_BIAS, REPLICATE, ROWWISE
from ..ops import chunked_cross_entropy
from . import collectives
from .layouts import ParameterLayout, chunk_bounds
from .mixer import branch_halves, branch_of, check_mixer_parallel


def check_tensor_parallel(config: ModelConfig, tp: int, mixer_parallel: str | None = None) -> None:
    """ValueError naming the field when a layer cannot be split `tp` ways (under mixer parallelism the
    branches of P layers tp / 2 ways)."""
    if tp == 1:
        return
    check_mixer_parallel(config, mixer_parallel)
    kinds = set(config.layer_kinds)
    branch_ways = tp // 2 if mixer_parallel is not None else tp
    needs = []
    for kind, ways in (("P", branch_ways), ("*", tp), ("M", tp), ("-", tp)):
        if kind not in kinds:
            continue
        if kind in "P*":
            needs += [("num_heads", config.num_heads, ways), ("num_kv_heads", config.num_kv_heads, ways)]
        if kind in "PM":
            needs += [("mamba_n_heads", config.mamba_n_heads, ways), ("mamba_n_groups", config.mamba_n_groups, ways)]
        if kind == "-":
            needs += [("d_ff", config.d_ff, ways)]
    for field, value, ways in needs:
        if ways == 1 or (field == "mamba_n_groups" and value == 1):
            continue  # one group: B and C whole on every rank
        if value % ways:
            hint = " or be 1" if field == "mamba_n_groups" else ""
            over = f"ParallelConfig.tp ({tp})" if ways == tp else \
                f"ParallelConfig.tp / 2 ({ways}: a P layer's branch under mixer parallelism)"
            raise ValueError(f"ModelConfig.{field} ({value}) must be divisible by {over}{hint}")


class TensorParallelRegion:
    """The region of model/parallelism.py over a 1-D tensor-parallel mesh."""

    def __init__(self, mesh, sequence_parallel: bool, vocab_size: int):
        self.group = mesh.get_group()
        self.size, self.rank = mesh.size(), mesh.get_local_rank()
        self.sequence_parallel = sequence_parallel
        self.vocab_chunks = [chunk_bounds(vocab_size, self.size, rank) for rank in range(self.size)]
        self.vocab_start = self.vocab_chunks[self.rank][0]
        self.statistics_group = self.group

    def with_statistics_over(self, group) -> "TensorParallelRegion":
        """The same region with `all_sum` over `group`: the ranks that share a branch's channels."""
        region = copy.copy(self)
        region.statistics_group = group
        return region

    def embedding(self, input_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.vocab_start
        here = (local >= 0) & (local < weight.shape[0])
        rows = F.embedding(local.clamp(0, weight.shape[0] - 1), weight).masked_fill(~here[..., None], 0.0)
        return self.exit(rows)

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            return collectives.gather_along(x, 1, self.group)
        return collectives.copy_to_ranks(x, self.group)

    def exit(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            return collectives.reduce_scatter_along(x, 1, self.group)
        return collectives.sum_over_ranks(x, self.group)

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        return collectives.all_sum(x, self.statistics_group)

    def _reduce_statistic(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        return collectives.all_reduce(tensor, op, self.group)

    def cross_entropy(self, hidden, weight, labels, multiplier: float, chunk_size: int) -> torch.Tensor:
        return chunked_cross_entropy(hidden, weight, labels, multiplier, chunk_size, vocab_start=self.vocab_start,
                                     all_reduce=self._reduce_statistic)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """The whole vocabulary's logits (evaluation and tests; training never gathers them). Uneven
        splits are padded for the gather, then cut."""
        widest = max(end - start for start, end in self.vocab_chunks)
        padded = F.pad(logits, (0, widest - logits.shape[-1]))
        gathered = collectives.gather_along(padded, logits.dim() - 1, self.group)
        pieces = gathered.split(widest, dim=-1)
        return torch.cat([piece[..., :b - a] for piece, (a, b) in zip(pieces, self.vocab_chunks)], dim=-1)


# ---- applying the plans ------------------------------------------------------------------------------
def apply_tensor_parallel(model: HybridLM, mesh, sequence_parallel: bool, mixer_parallel: str | None = None,
                          branch_mesh=None) -> dict[str, ParameterLayout]:
    """Replace every parameter of `model` by this rank's slice (see the module docstring) and give the
    model the region; returns each parameter's layout by name. `mesh`: the 1-D tp mesh (size 1 is a
    no-op that still records the layouts). With `mixer_parallel`, the branches of P layers are split over
    `branch_mesh`, this rank's half of the tp ranks, and dropped on the other half (parallel/mixer.py)."""
    tp, rank = mesh.size() if mesh is not None else 1, mesh.get_local_rank() if mesh is not None else 0
    check_tensor_parallel(model.config, tp, mixer_parallel)
    halves = branch_halves(model.config, mixer_parallel if tp > 1 else None)
    half_size = tp // 2
    layouts, elsewhere = {}, set()
    for module_name, module in model.named_modules():
        branch = branch_of(module_name, halves)
        ways, index, half = tp, rank, None
        if branch is not None:
            ways, index, half = half_size, rank % half_size, halves[branch]
            if rank // half_size != half:  # the other half of the tp ranks computes this branch
                elsewhere.add(branch)
                continue
        for name, rule in getattr(type(module), "parallel_plan", {}).items():
            owner_name, _, leaf = name.rpartition(".")
            owner = getattr(module, owner_name, None) if owner_name else module  # a stage may lack the head
            param = owner._parameters.get(leaf) if owner is not None else None
            if param is None:
                continue
            full_name = f"{module_name}.{name}" if module_name else name
            if full_name in layouts:  # a tied head: the embedding's parameter, placed already
                continue
            if rule == GROUPS:  # B and C: by groups, or whole on every rank with the groups shared
                rule, partial = (REPLICATE, True) if model.config.mamba_n_groups % ways else (COLWISE, False)
            else:  # a norm weight on the residual stream's sequence shard sees part of the tokens
                partial = rule == REPLICATE and sequence_parallel
            layout = ParameterLayout(tuple(param.shape), tp_dim={COLWISE: 0, ROWWISE: 1}.get(rule),
                                     partial_gradient=partial and ways > 1, first_rank_only=rule == OUTPUT_BIAS,
                                     branch=half)
            layouts[full_name] = layout
            if ways == 1:
                continue
            if layout.first_rank_only and index != 0:
                owner.register_parameter(leaf, None)
                continue
            if layout.tp_dim is not None:
                start, end = chunk_bounds(param.shape[layout.tp_dim], ways, index)
                local = param.detach().narrow(layout.tp_dim, start, end - start).clone()
                owner.register_parameter(leaf, nn.Parameter(local, requires_grad=param.requires_grad))
    for branch in elsewhere:
        layer_name, _, attribute = branch.rpartition(".")
        setattr(model.get_submodule(layer_name), attribute, None)
    unplanned = [name for name, _ in model.named_parameters() if name not in layouts]
    if unplanned:
        raise ValueError(f"parameter(s) {', '.join(unplanned[:4])} have no parallel plan: the module that owns "
                         f"them must list them in its parallel_plan (model/plan.py)")
    model.tie_weights()
    if tp > 1:
        region = TensorParallelRegion(mesh, sequence_parallel, model.config.vocab_size)
        branch_region = region.with_statistics_over(branch_mesh.get_group()) if halves else None
        layers = {branch.split(".")[1] for branch in halves} & set(model.layers)
        model.use_parallelism(region=region, layer_regions={name: branch_region for name in layers})
    return layouts


def reduce_partial_gradients(model: nn.Module, layouts: dict[str, ParameterLayout], group,
                             branch_group=None) -> None:
    """Sum over the tensor-parallel ranks the gradients that are per-rank partial sums, in one all-reduce
    (a second over `branch_group`, this rank's half of them, for those of mixer-parallel branches)."""
    for in_branch, over in ((False, group), (True, branch_group)):
        grads = [param.grad for name, param in named_parameters(model) if param.grad is not None
                 and layouts[name].partial_gradient and (layouts[name].branch is not None) == in_branch]
        if not grads:
            continue
        local = [grad.to_local() if hasattr(grad, "to_local") else grad for grad in grads]
        flat = torch.cat([g.reshape(-1) for g in local])
        torch.distributed.all_reduce(flat, group=over)
        for grad, piece in zip(local, flat.split([g.numel() for g in local])):
            grad.copy_(piece.view_as(grad))


def named_parameters(model: nn.Module):
    """(name, parameter) as state dicts spell the names: activation-checkpoint and compile wrappers removed."""
    from .layouts import clean_name

    for name, param in model.named_parameters():
        yield clean_name(name), param
