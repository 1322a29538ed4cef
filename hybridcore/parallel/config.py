"""ParallelConfig: how many ways each parallel dimension splits the work.

The product pp x dp_replicate x dp_shard x cp x tp is the world size. `dp_shard=-1` means "whatever is
left", as torchrun users rarely want to do the division themselves. Errors name the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Mesh dimension order, outermost first: pipeline stages talk least often, tensor parallel most.
MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
PIPELINE_SCHEDULES = ("1f1b", "interleaved_1f1b", "gpipe")
# Mixer parallelism of P layers (parallel/mixer.py): attention and Mamba-2 on the two halves of the tp group
MIXER_MODES = ("split", "interleaved")


@dataclass
class ParallelConfig:
    tp: int = 1  # tensor parallel: heads / channels split across ranks
    pp: int = 1  # pipeline stages
    cp: int = 1  # context parallel: the sequence split across ranks
    dp_shard: int = -1  # FSDP2: parameters, gradients and optimizer state sharded; -1: the rest of the world
    dp_replicate: int = 1  # replicated data parallel on top of dp_shard (HSDP when both > 1)
    sequence_parallel: bool = True  # with tp > 1: norms and the residual stream split along the sequence
    pp_schedule: str = "1f1b"
    pp_microbatches: int | None = None  # per step and data-parallel rank; None: pipeline.default_microbatches
    pp_stages_per_rank: int = 1  # > 1 with the interleaved schedule
    mixer_parallel: str | None = None  # "split" or "interleaved": P layers' branches on the tp halves

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("tp", "pp", "cp", "dp_replicate", "pp_stages_per_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ParallelConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.dp_shard, int) or isinstance(self.dp_shard, bool) or \
                not (self.dp_shard >= 1 or self.dp_shard == -1):
            raise ValueError(f"ParallelConfig.dp_shard must be a positive integer or -1, got {self.dp_shard!r}")
        if not isinstance(self.sequence_parallel, bool):
            raise ValueError(f"ParallelConfig.sequence_parallel must be a bool, got {self.sequence_parallel!r}")
        if self.pp_schedule not in PIPELINE_SCHEDULES:
            raise ValueError(f"ParallelConfig.pp_schedule must be one of {PIPELINE_SCHEDULES}, "
                             f"got {self.pp_schedule!r}")
        if self.pp_microbatches is not None and (not isinstance(self.pp_microbatches, int)
                                                 or self.pp_microbatches < 1):
            raise ValueError(f"ParallelConfig.pp_microbatches must be a positive integer or None, "
                             f"got {self.pp_microbatches!r}")
        if self.pp_stages_per_rank > 1 and self.pp_schedule != "interleaved_1f1b":
            raise ValueError(f"ParallelConfig.pp_stages_per_rank={self.pp_stages_per_rank} needs "
                             f"ParallelConfig.pp_schedule='interleaved_1f1b', got {self.pp_schedule!r}")

        if self.mixer_parallel is not None:
            if self.mixer_parallel not in MIXER_MODES:
                raise ValueError(f"ParallelConfig.mixer_parallel must be one of {MIXER_MODES} or None, "
                                 f"got {self.mixer_parallel!r}")
            if self.tp < 2 or self.tp % 2:
                raise ValueError(f"ParallelConfig.mixer_parallel needs an even ParallelConfig.tp of at least 2 "
                                 f"(attention on one half of the tp ranks, Mamba-2 on the other), got tp={self.tp}")

    @property
    def world_size(self) -> int:
        """Ranks this layout needs (dp_shard=-1 counts as 1 until `resolve` fills it in)."""
        return self.pp * self.dp_replicate * max(self.dp_shard, 1) * self.cp * self.tp

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many different slices of the global batch are in flight."""
        return self.dp_replicate * max(self.dp_shard, 1)

    def mesh_shape(self) -> tuple[int, ...]:
        return tuple(max(getattr(self, name), 1) for name in MESH_DIMS)

    def resolve(self, world_size: int) -> "ParallelConfig":
        """A copy with dp_shard=-1 filled in, checked against `world_size`."""
        others = self.pp * self.dp_replicate * self.cp * self.tp
        dp_shard = self.dp_shard
        if dp_shard == -1:
            if world_size % others:
                raise ValueError(f"ParallelConfig: world size {world_size} is not divisible by "
                                 f"pp x dp_replicate x cp x tp = {others}, so dp_shard=-1 cannot fill it")
            dp_shard = world_size // others
        resolved = dataclasses.replace(self, dp_shard=dp_shard)
        if resolved.world_size != world_size:
            raise ValueError(f"ParallelConfig: pp x dp_replicate x dp_shard x cp x tp = "
                             f"{self.pp} x {self.dp_replicate} x {dp_shard} x {self.cp} x {self.tp} = "
                             f"{resolved.world_size}, but the world size is {world_size}")
        return resolved
