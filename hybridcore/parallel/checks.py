"""Every rule a layout puts on the model and the batch shape, checked from configs alone.

The parallel code guards its tensors as it meets them; a training run wants the same mistakes reported
before it starts any work, so the rules are stated here once, with errors that name the field.
"""

from __future__ import annotations

from ..config import ModelConfig
from .config import ParallelConfig
from .pipeline import check_microbatches, check_pipeline, default_microbatches
from .tensor_parallel import check_tensor_parallel


def check_layout(config: ParallelConfig, model_config: ModelConfig, *, rows: int, length: int,
                 grad_accum: int = 1) -> None:
    """ValueError naming the field when `config` (resolved: dp_shard filled in) cannot train
    `model_config` on global batches of `rows` sequences of `length` tokens. Under a pipeline,
    accumulating `grad_accum` batches runs grad_accum x pp_microbatches microbatches in one step
    (Pipeline.step's `microbatches`), and evaluation the configured count."""
    if config.dp_shard < 1:
        raise ValueError("ParallelConfig.dp_shard=-1: resolve the layout against the world size first")
    check_tensor_parallel(model_config, config.tp, config.mixer_parallel)
    if config.pp > 1:
        check_pipeline(model_config, config, length)
    if rows % config.dp:
        raise ValueError(f"a global batch of {rows} rows does not split over ParallelConfig.dp_replicate "
                         f"({config.dp_replicate}) x ParallelConfig.dp_shard ({config.dp_shard}) data-parallel ranks")
    local_rows = rows // config.dp
    if config.pp > 1:
        microbatches = default_microbatches(config, local_rows, length)
        if local_rows % microbatches:
            raise ValueError(f"each data-parallel rank's {local_rows} rows do not split into "
                             f"ParallelConfig.pp_microbatches = {microbatches} pipeline microbatches")
        check_microbatches(config, microbatches)
        accumulated = microbatches * grad_accum
        try:
            check_microbatches(config, accumulated)
        except ValueError as error:
            raise ValueError(f"accumulating {grad_accum} batches runs {accumulated} microbatches in one step: "
                             f"{error}") from None
    if config.cp > 1:
        if length % (2 * config.cp):
            raise ValueError(f"sequence length {length} must be divisible by 2 x ParallelConfig.cp "
                             f"({2 * config.cp}) for context parallelism")
        history = model_config.mamba_d_conv - 1
        if set(model_config.layer_kinds) & {"P", "M"} and length // (2 * config.cp) < history:
            raise ValueError(f"context-parallel chunks of {length // (2 * config.cp)} tokens (sequence length / "
                             f"(2 x ParallelConfig.cp)) are shorter than mamba_d_conv - 1 = {history}")
    if config.tp > 1 and config.sequence_parallel and (length // config.cp) % config.tp:
        raise ValueError(f"sequence length {length} / ParallelConfig.cp ({config.cp}) must be divisible by "
                         f"ParallelConfig.tp ({config.tp}) with sequence_parallel=True")
