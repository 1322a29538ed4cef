"""What each spawned rank runs. Every function returns plain data; the tests compare it."""

from __future__ import annotations

import contextlib
import traceback

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.tensor import DTensor

from hybridcore import ops
from hybridcore.model import HybridLM, attention, build_model
from hybridcore.parallel import ParallelConfig, build_mesh, full_state_dict, load_sharded, parallelize, save_sharded
from hybridcore.parallel.context_parallel import shard_sequence
from hybridcore.train.step import Batch, train_step

from ..benchmark_scripts import load_script
from .harness import build_parallel_model, train_steps

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
    if "kernels" in options:  # the fused kernels on these ranks (the CPU runs them under TRITON_INTERPRET=1)
        with ops.use_kernels(options.pop("kernels")):
            return _layout_losses(parallel, layout, docs, options)
    config = named_config(layout)
    parallel_config = ParallelConfig(**parallel)
    mesh = build_mesh(parallel_config, DEVICE)
    model, optimizer = build_parallel_model(config, parallel_config, mesh, seed=0, prepare=long_memory,
                                            seq_len=SEQ_LEN, device=DEVICE, **LAYOUT_OPTIMIZER, **options)
    losses = train_steps(model, optimizer, global_batch(), steps=STEPS, seq_idx=document_index() if docs else None)
    weights = full_state_dict(model, cpu_offload=False)  # this rank's stages' tensors under pp
    return {"losses": losses, "local_fraction": local_fraction(model, config), "weights": weights,
            "checkpointed": checkpointed_layers(model), "float8_linears": float8_linears(model)}


def float8_linears(model) -> int:
    """This rank's linears converted to torchao's Float8Linear."""
    return sum(type(module).__name__ == "Float8Linear" for part in model.parts for module in part.modules())


def checkpointed_layers(model) -> list[str]:
    """Names of this rank's layers that recompute in backward (every stage's under a pipeline)."""
    return sorted(name for part in model.parts for name, layer in part.layers.items()
                  if isinstance(layer, CheckpointWrapper))


def local_fraction(model, config) -> float:
    """How much of the model this rank stores: proof that the layout really sharded it."""
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())
    # a tied head is counted once
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
    out["config_vs_mesh"] = _error_of(lambda: parallelize(build_model(tiny_config("P-")), mesh,
                                                          ParallelConfig(dp_shard=2)))
    # Each config is valid on one process and breaks exactly one tensor-parallel rule.
    for field, changes in (("num_kv_heads", dict(num_kv_heads=1)), ("num_heads", dict(num_heads=3, num_kv_heads=1)),
                           ("mamba_n_groups", dict(mamba_n_heads=6, mamba_n_groups=3)),
                           ("mamba_n_heads", dict(mamba_n_heads=3, mamba_n_groups=1)), ("d_ff", dict(d_ff=63))):
        out[f"tp_{field}"] = _error_of(lambda: parallelize(build_model(tiny_config("P-", **changes)), mesh, tp2))
    model = parallelize(build_model(tiny_config("P-")), mesh, tp2)
    odd_length = Batch.from_tokens(torch.zeros(2, 32, dtype=torch.long))  # 31 tokens do not split over tp2
    out["sequence_length"] = _error_of(lambda: train_step(model, [], [odd_length]))

    cp2 = ParallelConfig(cp=2)
    cp_mesh = build_mesh(cp2, "cpu")
    out["cp_sequence_length"] = _error_of(lambda: shard_sequence(torch.zeros(2, 30), cp_mesh))
    pp2 = ParallelConfig(pp=2)
    pp_mesh = build_mesh(pp2, "cpu")
    out["pp_too_many_stages"] = _error_of(lambda: parallelize(build_model(tiny_config("M")), pp_mesh, pp2,
                                                              seq_len=SEQ_LEN))
    out["pp_stage_marks"] = _error_of(lambda: parallelize(build_model(tiny_config("M|-|M")), pp_mesh, pp2,
                                                          seq_len=SEQ_LEN))
    out["pp_tied"] = _error_of(lambda: parallelize(build_model(tiny_config("M-", tie_embeddings=True)), pp_mesh, pp2,
                                                   seq_len=SEQ_LEN))
    pipelined = parallelize(build_model(tiny_config("M-")), pp_mesh, ParallelConfig(pp=2, pp_microbatches=2),
                            seq_len=SEQ_LEN)
    tokens = torch.zeros(3, SEQ_LEN + 1, dtype=torch.long)
    out["pp_microbatches"] = _error_of(lambda: train_step(pipelined, [], [Batch.from_tokens(tokens)]))
    return out


def checkpoint_save(path: str, parallel: dict, steps_before: int, steps_after: int) -> dict:
    """Train, save, train on: losses before and after the save, and the exported full state (rank 0)."""
    config = checkpoint_config()
    parallel_config = ParallelConfig(**parallel)
    mesh = build_mesh(parallel_config, DEVICE)
    model, optimizer = build_parallel_model(config, parallel_config, mesh, seed=0, seq_len=SEQ_LEN, device=DEVICE)
    batches = [global_batch(seed=step) for step in range(steps_before + steps_after)]
    before = train_steps(model, optimizer, batches[:steps_before])
    save_sharded(path, model, optimizer, extra={"step": steps_before})
    exported = full_state_dict(model)
    after = train_steps(model, optimizer, batches[steps_before:])
    return {"before": before, "after": after, "exported": exported}


def checkpoint_load(path: str, parallel: dict, steps: int) -> dict:
    """Load into a freshly built (differently seeded) model under `parallel`, then train on."""
    config = checkpoint_config()
    parallel_config = ParallelConfig(**parallel)
    mesh = build_mesh(parallel_config, DEVICE)
    model, optimizer = build_parallel_model(config, parallel_config, mesh, seed=123, seq_len=SEQ_LEN, device=DEVICE)
    extra = load_sharded(path, model, optimizer)
    batches = [global_batch(seed=step) for step in range(extra["step"], extra["step"] + steps)]
    return {"extra": extra, "after": train_steps(model, optimizer, batches)}


def run_all(jobs: list[tuple[str, tuple]]) -> dict:
    """Several kinds of work in one process group (start-up is the expensive part)."""
    out = {}
    for name, (fn_name, args) in jobs:
        out[name] = globals()[fn_name](*args)
        dist.barrier()
    return out


@contextlib.contextmanager
def _layers_compile_with(backend: str):
    """nn.Module.compile (what parallelize calls per layer) with another backend: aot_eager traces forward
    and backward through dynamo and AOTAutograd as inductor would, without generating code (quick on CPU)."""
    original = torch.nn.Module.compile

    def compile(module, *args, **kwargs):
        kwargs.pop("mode", None)
        return original(module, *args, **{**kwargs, "backend": backend})

    torch.nn.Module.compile = compile
    try:
        yield
    finally:
        torch.nn.Module.compile = original


def compiled_graph_breaks(scenarios: dict[str, tuple], layout: str = "M*-P") -> dict:
    """name -> (parallel config fields, activation checkpointing: False, True (full) or "selective"): the
    graph breaks dynamo reports in one training step of `layout` with packed documents, each layer compiled,
    the number of graphs it made and of layer kinds this rank holds."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    out = {}
    for name, (parallel, checkpointing) in scenarios.items():
        torch._dynamo.reset()
        counters.clear()
        parallel_config = ParallelConfig(**parallel)
        mesh = build_mesh(parallel_config, DEVICE) if parallel_config.world_size > 1 else None
        with _layers_compile_with("aot_eager"):
            model, optimizer = build_parallel_model(named_config(layout), parallel_config, mesh, seed=0,
                                                    seq_len=SEQ_LEN, device=DEVICE, compile=True,
                                                    activation_checkpointing=bool(checkpointing),
                                                    checkpoint_policy="selective" if checkpointing == "selective"
                                                    else "full")
            train_steps(model, optimizer, global_batch(), steps=1, seq_idx=document_index())
        kinds = {getattr(layer, "_checkpoint_wrapped_module", layer).kind for part in model.parts
                 for layer in part.layers.values()}
        out[name] = {"breaks": {reason: count for reason, count in counters["graph_break"].items()},
                     "graphs": counters["stats"]["unique_graphs"], "kinds": len(kinds)}
    return out


def host_step_counts(layouts: dict[str, dict], layout: str, rows: int, length: int) -> dict:
    """name -> ParallelConfig fields: the aten ops and DTensor ops of one training step's forward and
    backward on this rank (benchmarks/host_overhead.py's counter), at the same global batch."""
    counter = load_script("host_overhead")
    tokens = torch.randint(0, 1024, (rows, length + 1), generator=torch.Generator().manual_seed(0))
    out = {}
    for name, fields in layouts.items():
        parallel_config = ParallelConfig(**fields)
        mesh = build_mesh(parallel_config, "cpu") if parallel_config.world_size > 1 else None
        model, optimizer = build_parallel_model(counter.small_config(layout), parallel_config, mesh, seed=0,
                                                seq_len=length)
        train_step(model, optimizer, [Batch.from_tokens(tokens)])  # first-step work (FSDP's lazy set-up) aside
        out[name] = counter.count_step(model, optimizer, [Batch.from_tokens(tokens)])
    return out
