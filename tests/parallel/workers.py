"""What each spawned rank runs. Every function returns plain data; the tests compare it."""

from __future__ import annotations

import traceback

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.tensor import DTensor

from hybridcore.model import HybridLM, attention, build_model
from hybridcore.parallel import ParallelConfig, build_mesh, full_state_dict, load_sharded, parallelize, save_sharded
from hybridcore.parallel.context_parallel import shard_sequence
from hybridcore.parallel.harness import build_parallel_model, token_loss, train_steps
from hybridcore.parallel.pipeline import build_pipeline

from .common import (DEVICE, SEQ_LEN, STEPS, checkpoint_config, document_index, global_batch, long_memory, named_config,
                     tiny_config, LAYOUT_OPTIMIZER)


def _layout_losses(parallel: dict, layout: str, docs: bool, options: dict) -> dict:
    options = dict(options)
    if "document_mask_limit" in options:  # force attention's document-by-document path (no mask)
        limit, attention.DOCUMENT_MASK_LIMIT = attention.DOCUMENT_MASK_LIMIT, options.pop("document_mask_limit")
        try:
            return _layout_losses(parallel, layout, docs, options)
        finally:
            attention.DOCUMENT_MASK_LIMIT = limit
    config = named_config(layout)
    parallel_config = ParallelConfig(**parallel)
    mesh = build_mesh(parallel_config, DEVICE)
    model, optimizer = build_parallel_model(config, parallel_config, mesh, seed=0, prepare=long_memory,
                                            seq_len=SEQ_LEN, device=DEVICE, **LAYOUT_OPTIMIZER, **options)
    losses = train_steps(model, optimizer, global_batch(), steps=STEPS, mesh=mesh,
                         seq_idx=document_index() if docs else None)
    weights = full_state_dict(model, cpu_offload=False)  # this rank's stages' tensors under pp
    return {"losses": losses, "local_fraction": local_fraction(model, config), "weights": weights,
            "checkpointed": checkpointed_layers(model)}


def checkpointed_layers(model) -> list[str]:
    """Names of this rank's layers that recompute in backward (every stage's under a pipeline)."""
    parts = getattr(model, "model_parts", [model])
    return sorted(name for part in parts for name, layer in part.layers.items() if isinstance(layer, CheckpointWrapper))


def local_fraction(model, config) -> float:
    """How much of the model this rank stores: proof that the layout really sharded it."""
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())
    with torch.device("meta"):
        return local / HybridLM(config).num_parameters()


def layout_scenarios(scenarios: dict[str, tuple]) -> dict:
    """name -> (parallel config fields, layout, with documents, parallelize options): losses or error."""
    results = {}
    for name, (parallel, layout, docs, options) in scenarios.items():
        try:
            results[name] = _layout_losses(parallel, layout, docs, options)
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    return results


def _error_of(fn) -> str | None:
    try:
        fn()
    except ValueError as error:
        return str(error)
    return None


def error_scenarios() -> dict:
    """User mistakes that need a process group: the messages they raise (None: nothing raised)."""
    out = {}
    tp2 = ParallelConfig(tp=2)
    mesh = build_mesh(tp2, "cpu")
    out["world_size"] = _error_of(lambda: build_mesh(ParallelConfig(tp=4), "cpu"))
    out["config_vs_mesh"] = _error_of(lambda: parallelize(build_model(tiny_config("P-")),
                                                          ParallelConfig(dp_shard=2), mesh))
    # Each config is valid on one process and breaks exactly one tensor-parallel rule.
    for field, changes in (("num_kv_heads", dict(num_kv_heads=1)), ("num_heads", dict(num_heads=3, num_kv_heads=1)),
                           ("mamba_n_groups", dict(mamba_n_heads=6, mamba_n_groups=3)),
                           ("mamba_n_heads", dict(mamba_n_heads=3, mamba_n_groups=1)), ("d_ff", dict(d_ff=63))):
        out[f"tp_{field}"] = _error_of(lambda: parallelize(build_model(tiny_config("P-", **changes)), tp2, mesh))
    model = parallelize(build_model(tiny_config("P-")), tp2, mesh)
    out["sequence_length"] = _error_of(lambda: model(torch.zeros(2, 31, dtype=torch.long)))

    cp2 = ParallelConfig(cp=2)
    cp_mesh = build_mesh(cp2, "cpu")
    out["cp_sequence_length"] = _error_of(lambda: shard_sequence(torch.zeros(2, 30), cp_mesh))
    pp2 = ParallelConfig(pp=2)
    pp_mesh = build_mesh(pp2, "cpu")
    out["pp_parallelize"] = _error_of(lambda: parallelize(build_model(tiny_config("P-")), pp2, pp_mesh))
    out["pp_too_many_stages"] = _error_of(lambda: build_pipeline(
        build_model(tiny_config("M")), pp2, pp_mesh, token_loss, seq_len=SEQ_LEN))
    out["pp_stage_marks"] = _error_of(lambda: build_pipeline(
        build_model(tiny_config("M|-|M")), pp2, pp_mesh, token_loss, seq_len=SEQ_LEN))
    out["pp_tied"] = _error_of(lambda: build_pipeline(
        build_model(tiny_config("M-", tie_embeddings=True)), pp2, pp_mesh, token_loss, seq_len=SEQ_LEN))
    pipeline = build_pipeline(build_model(tiny_config("M-")), pp2, pp_mesh, token_loss, seq_len=SEQ_LEN)
    ids = torch.zeros(3, SEQ_LEN, dtype=torch.long)
    out["pp_microbatches"] = _error_of(lambda: pipeline.step(ids, ids))
    return out


def checkpoint_save(path: str, parallel: dict, steps_before: int, steps_after: int) -> dict:
    """Train, save, train on: losses before and after the save, and the exported full state (rank 0)."""
    config = checkpoint_config()
    parallel_config = ParallelConfig(**parallel)
    mesh = build_mesh(parallel_config, DEVICE)
    model, optimizer = build_parallel_model(config, parallel_config, mesh, seed=0, seq_len=SEQ_LEN, device=DEVICE)
    batches = [global_batch(seed=step) for step in range(steps_before + steps_after)]
    before = train_steps(model, optimizer, batches[:steps_before], mesh=mesh)
    save_sharded(path, model, optimizer, extra={"step": steps_before})
    exported = full_state_dict(model)
    after = train_steps(model, optimizer, batches[steps_before:], mesh=mesh)
    return {"before": before, "after": after, "exported": exported}


def checkpoint_load(path: str, parallel: dict, steps: int) -> dict:
    """Load into a freshly built (differently seeded) model under `parallel`, then train on."""
    config = checkpoint_config()
    parallel_config = ParallelConfig(**parallel)
    mesh = build_mesh(parallel_config, DEVICE)
    model, optimizer = build_parallel_model(config, parallel_config, mesh, seed=123, seq_len=SEQ_LEN, device=DEVICE)
    extra = load_sharded(path, model, optimizer)
    batches = [global_batch(seed=step) for step in range(extra["step"], extra["step"] + steps)]
    return {"extra": extra, "after": train_steps(model, optimizer, batches, mesh=mesh)}


def run_all(jobs: list[tuple[str, tuple]]) -> dict:
    """Several kinds of work in one process group (start-up is the expensive part)."""
    out = {}
    for name, (fn_name, args) in jobs:
        out[name] = globals()[fn_name](*args)
        dist.barrier()
    return out
