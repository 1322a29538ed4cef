"""TrainConfig: every `hybridcore train` setting, with its default, checked before any work.

The defaults are tuned so that `hybridcore train --preset debug --out runs/debug` trains 200 steps
of 8 x 192 tokens in about 2.5 minutes on 2 CPU cores (lr 1e-3 was as good as any of 5e-4..2e-3 there
and better than 3e-3..1e-2); larger models want their own --lr, --batch-size and --steps.
A run directory keeps its TrainConfig in run_config.json, so `--resume` needs no other flags.

--batch-size is the global batch (rows per micro-batch of the whole run): under torchrun the parallel
flags only decide how it is split, so the same flags give the same losses on any layout, and a run can
resume under another layout (give the new layout's flags with --resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from dataclasses import dataclass, field

from ..config import dataclass_from_dict
from ..parallel.config import MIXER_MODES, PIPELINE_SCHEDULES, ParallelConfig

SCHEDULES = ("cosine", "wsd", "power")
DEVICES = ("cpu", "cuda")
DTYPES = ("fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")  # torch.compile's, as --compile-mode
FP8_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")  # hybridcore.parallel.float8's, without importing it
CHECKPOINT_POLICIES = ("full", "selective")  # hybridcore.parallel.activation_checkpointing's, the same way
# Settings a resumed run cannot change without changing the data order or the meaning of a step.
FIXED_ON_RESUME = ("seed", "batch_size", "seq_len", "grad_accum", "data", "doc_masking")


@dataclass
class TrainConfig:
    out: str = ""
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)  # --set key=value, applied to the preset
    init_hf: str | None = None
    data: str | None = None  # None: the default corpus, prepared into <out>/data
    steps: int = 200
    seed: int = 0
    batch_size: int = 8  # rows per micro-batch of the whole run (the global batch), split over data parallel
    seq_len: int = 192
    grad_accum: int = 1
    # optimizer and schedule
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    schedule: str = "cosine"
    decay_fraction: float = 0.2  # wsd: the last fraction of the steps decays linearly
    power_exponent: float = 0.25  # power: lr and weight decay fall as (step / warmup) ** -exponent
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip: float = 1.0  # 0 disables clipping (the norm is still measured and logged)
    # checkpoints and evaluation
    save_every: int = 100  # 0: only at the end
    keep_last: int = 2  # never counting the newest checkpoint from before a non-finite step, which stays
    resume_from: str | None = None  # a step of this run's checkpoints, or a checkpoint directory: resume there
    eval_every: int = 100  # 0: only at the end
    eval_batches: int = 8
    # execution
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str | None = None  # None: bf16 on cuda, fp32 on cpu; bf16 is autocast over fp32 master weights
    activation_checkpointing: bool = False
    checkpoint_layers: int | None = None  # with activation_checkpointing: only the first N layers (None: all)
    # with activation_checkpointing: "full" recomputes each checkpointed layer's forward; "selective" keeps
    # its matrix products', attention's and collectives' outputs and recomputes the rest
    checkpoint_policy: str = "full"
    compile: bool | None = None  # torch.compile each layer; None: on with CUDA, off on CPU (with_fast_defaults)
    compile_mode: str | None = None  # None: reduce-overhead where CUDA graphs apply, else default
    # Inductor/Triton caches; None: $HYBRIDCORE_COMPILE_CACHE or ~/.cache/hybridcore/compile
    compile_cache_dir: str | None = None
    fp8: str | None = None  # float8 matmuls through torchao: one of FP8_RECIPES; None: bf16
    fp8_min_size: int = 2048  # with fp8: linears with a weight dimension below this stay in bf16
    doc_masking: bool = True
    loss_chunk: int = 0  # tokens per logits chunk; 0: chunk only when the logits would be large
    tensorboard: bool = False
    progress: bool = True
    peak_flops: float = 989e12  # per device, for MFU (H100/H200 dense bf16)
    max_bad_steps: int = 5
    dist_timeout: float = 300.0  # seconds a collective may wait for the other ranks before the run stops
    sample_tokens: int = 200  # greedy sample printed at the end; 0 disables it
    sample_prompt: str = "def "
    # the parallel layout (--tp, --pp, ... : FLAG_OF_FIELD); the product of its sizes is the world size
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        self.overrides = list(self.overrides)
        if isinstance(self.parallel, dict):
            with naming_flags():
                self.parallel = dataclass_from_dict(ParallelConfig, self.parallel)

    def validate(self, model_given: bool = False) -> None:
        """ValueError naming the flag for every setting that cannot work. model_given: train() received the
        ModelConfig itself, so no --preset or --init-hf is needed."""
        if not self.out:
            raise ValueError("--out: a run directory is required")
        if self.preset is None and self.init_hf is None and not model_given:
            raise ValueError("--preset: name a preset (or give --init-hf HF_DIR)")
        positive = ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches", "keep_last", "max_bad_steps")
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup", "save_every", "eval_every", "loss_chunk", "sample_tokens"):
            _check_int(name, getattr(self, name), minimum=0)
        with naming_flags():
            self.parallel.validate()
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"--decay-fraction must be in (0, 1], got {self.decay_fraction}")
        if not self.power_exponent > 0:
            raise ValueError(f"--power-exponent must be positive, got {self.power_exponent}")
        if not self.weight_decay >= 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not self.clip >= 0:
            raise ValueError(f"--clip must be >= 0 (0 disables clipping), got {self.clip}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.device is not None and self.device not in DEVICES:
            raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.compile_mode not in (None, "default") and self.compile is False:
            raise ValueError(f"--compile-mode {self.compile_mode} compiles: it cannot go with --no-compile")
        if self.compile_mode not in (None, "default") and self.parallel.world_size > 1:
            raise ValueError(f"--compile-mode {self.compile_mode} is for one process: the parallel layouts "
                             f"compile each layer in the default mode")
        self._validate_fast_paths()
        if self.checkpoint_layers is not None:
            if self.checkpoint_layers < 1:
                raise ValueError(f"--checkpoint-layers must be at least 1, got {self.checkpoint_layers}")
            if not self.activation_checkpointing:
                raise ValueError("--checkpoint-layers needs --activation-checkpointing")
        if self.checkpoint_policy not in CHECKPOINT_POLICIES:
            raise ValueError(f"--checkpoint-policy must be one of {', '.join(CHECKPOINT_POLICIES)}, got "
                             f"{self.checkpoint_policy!r}")
        if self.checkpoint_policy != "full" and not self.activation_checkpointing:
            raise ValueError(f"--checkpoint-policy {self.checkpoint_policy} needs --activation-checkpointing")
        if not self.peak_flops > 0:
            raise ValueError(f"--peak-flops must be positive, got {self.peak_flops}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps (AdamW's) must be a positive number, got {self.eps}")
        if not (math.isfinite(self.dist_timeout) and self.dist_timeout > 0):
            raise ValueError(f"--dist-timeout must be a positive number of seconds, got {self.dist_timeout}")
        if self.resume_from is not None and not (isinstance(self.resume_from, str) and self.resume_from.strip()):
            raise ValueError(f"--resume-from must name a step or a checkpoint directory, got {self.resume_from!r}")

    def _validate_fast_paths(self) -> None:
        if self.compile_cache_dir is not None and self.compile is False:
            raise ValueError("--compile-cache-dir is where compiled code is kept: it cannot go with --no-compile")
        if self.fp8 is not None and self.fp8 not in FP8_RECIPES:
            raise ValueError(f"--fp8 must be one of {', '.join(FP8_RECIPES)}, got {self.fp8!r}")
        _check_int("fp8_min_size", self.fp8_min_size, minimum=16)
        if self.fp8_min_size != TrainConfig.fp8_min_size and self.fp8 is None:
            raise ValueError(f"--fp8-min-size {self.fp8_min_size} needs --fp8")

    # ---- derived -------------------------------------------------------------------------------------
    def uses_cuda_graphs(self) -> bool:
        return bool(self.compile) and self.compile_mode == "reduce-overhead"

    def with_fast_defaults(self, device_type: str, world_size: int) -> "TrainConfig":
        """A copy with compile and compile_mode decided where they were left unset (fast_defaults)."""
        compile, mode = fast_defaults(self.compile, self.compile_mode, device_type, world_size,
                                      self.activation_checkpointing, self.fp8)
        return dataclasses.replace(self, compile=compile, compile_mode=mode)

    def resolved_device(self) -> str:
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available (this torch build or machine has none)")
        return device

    def resolved_dtype(self, device: str) -> str:
        return self.dtype or ("bf16" if device == "cuda" else "fp32")

    # ---- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """From to_dict's form; a run_config.json from before the layout had its own section (its fields at
        the top, pipeline microbatches as `microbatches`) loads too."""
        data = dict(data)
        parallel = {FLAT_NAMES.get(name, name): data.pop(name) for name in list(data)
                    if FLAT_NAMES.get(name, name) in PARALLEL_FIELDS}
        parallel.update(data.pop("parallel", None) or {})
        return dataclass_from_dict(cls, {**data, "parallel": parallel})


PARALLEL_FIELDS = tuple(f.name for f in dataclasses.fields(ParallelConfig))
FLAT_NAMES = {"microbatches": "pp_microbatches"}  # the older run configs' name -> ParallelConfig's
# ParallelConfig's fields as `hybridcore train` spells them, in the order layout_flags prints them.
FLAG_OF_FIELD = {"pp": "--pp", "dp_replicate": "--dp-replicate", "dp_shard": "--dp-shard", "cp": "--cp", "tp": "--tp",
                 "sequence_parallel": "--sequence-parallel", "pp_schedule": "--pp-schedule",
                 "pp_microbatches": "--microbatches", "pp_stages_per_rank": "--pp-stages-per-rank",
                 "mixer_parallel": "--mixer-parallel"}
assert set(FLAG_OF_FIELD) == set(PARALLEL_FIELDS), "every layout field has its flag"


def in_flags(message: str) -> str:
    """hybridcore.parallel's message in the terms the user typed: ParallelConfig.tp -> --tp."""
    message = message.replace("ParallelConfig: ", "")  # a whole-layout message: the flags prefix it
    return re.sub(r"ParallelConfig\.(\w+)", lambda found: FLAG_OF_FIELD.get(found[1], found[0]), message)


@contextlib.contextmanager
def naming_flags(prefix: str = ""):
    """Re-raise hybridcore.parallel's ValueErrors in terms of the flags, after `prefix`."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{prefix}{in_flags(str(error))}") from None


def fast_defaults(compile: bool | None, mode: str | None, device_type: str, world_size: int,
                  activation_checkpointing: bool, fp8: str | None) -> tuple[bool, str]:
    """(compile, compile mode) with the unset ones (None) decided: the fastest configuration measured
    (benchmarks/README.md) is each layer compiled on CUDA, with CUDA graphs (reduce-overhead) in one process
    without activation checkpointing or FP8, as it was measured; on CPU no compile. A mode implies compile."""
    if compile is None:
        compile = device_type == "cuda" or mode is not None
    if mode is None:
        graphs = compile and device_type == "cuda" and world_size == 1 and not activation_checkpointing and fp8 is None
        mode = "reduce-overhead" if graphs else "default"
    return compile, mode


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        flag = "--" + name.replace("_", "-")
        raise ValueError(f"{flag} must be an integer >= {minimum}, got {value!r}")


__all__ = ["TrainConfig", "fast_defaults", "COMPILE_MODES", "FP8_RECIPES", "SCHEDULES", "FIXED_ON_RESUME",
           "PARALLEL_FIELDS", "FLAG_OF_FIELD", "PIPELINE_SCHEDULES", "MIXER_MODES", "in_flags", "naming_flags"]
