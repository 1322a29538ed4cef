"""What a parallel layout costs the host: per-rank wall time, aten ops and DTensor dispatches of one training
step, against one process at the same global batch, on CPU ranks (gloo) at a small width, where the host is
the whole cost. Launched by torchrun (the ranks) or plainly (one process):

    python benchmarks/host_overhead.py --out DIR                                   # the one-process baseline
    torchrun --nproc_per_node 2 benchmarks/host_overhead.py --tp 2 --out DIR       # tp2, then --dp-shard 2, --pp 2

Every run uses falcon-h1-1.5b-deep's block structure ("P-" * 66 by default; --layout for a shorter one) at
d_model 256 and the same global batch, and times the one training step (hybridcore.train.step.train_step)
after --warmup steps. aten ops are counted with a TorchDispatchMode over the forward and backward (the
optimizer step excluded; collectives, FSDP's own kernels and the profiler's range markers counted apart),
and the ops on DTensors (each a host-side sharding propagation).
Writes DIR/host-<layout name>.json; `--compare DIR` prints each layout's ratios to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

SMALL_WIDTH = ["d_model=256", "num_heads=4", "num_kv_heads=2", "head_dim=64", "mamba_n_heads=8", "mamba_d_head=32",
               "mamba_d_state=16", "mamba_n_groups=1", "mamba_chunk_size=64", "d_ff=512", "vocab_size=1024"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", default='"P-" * 66', help="layout string, or a Python '\"P-\" * n' expression")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--dp-shard", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4, help="global rows per step")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON (default: print only)")
    p.add_argument("--compare", type=Path, default=None, help="print the ratios of the JSON in this folder")
    return p.parse_args(argv)


def layout_of(text: str) -> str:
    if "*" in text and text.count('"') == 2:  # '"P-" * 66'
        unit, _, count = text.partition("*")
        return unit.strip().strip('"') * int(count)
    return text


class OpCounter(TorchDispatchMode):
    """Counts the aten ops the step issues while it is active (forward and backward on this thread), the
    ops of other namespaces apart (collectives, FSDP's copy kernels, the profiler's range markers), and
    the ops on DTensors (each a host-side sharding propagation before its local ops)."""

    def __init__(self):
        super().__init__()
        from torch.distributed.tensor import DTensor

        self.dtensor = DTensor
        self.count = self.other_count = self.dtensor_count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "aten":
            self.count += 1
        else:
            self.other_count += 1
        self.dtensor_count += self.dtensor in types
        return func(*args, **(kwargs or {}))


def count_step(model, optimizers, batch) -> dict:
    """aten ops and ops on DTensors of one training step's forward and backward (the step runs whole)."""
    from hybridcore.train import step as step_module
    from hybridcore.train.step import train_step

    forward_backward, counts = step_module.forward_backward, {}

    def counted(*a, **k):  # the forward and backward of the step, not the optimizer's
        with OpCounter() as ops:
            loss = forward_backward(*a, **k)
        counts.update(aten_ops=ops.count, other_ops=ops.other_count, dtensor_dispatches=ops.dtensor_count)
        return loss

    step_module.forward_backward = counted
    try:
        train_step(model, optimizers, batch, max_norm=1.0)
    finally:
        step_module.forward_backward = forward_backward
    return counts


def small_config(layout: str):
    """falcon-h1-1.5b-deep's block structure (or another layout) at a width where the host is the cost."""
    from hybridcore.config import apply_overrides
    from hybridcore.presets import get_preset

    return apply_overrides(get_preset("falcon-h1-1.5b-deep"), SMALL_WIDTH + [f"layout={layout}"])


def measure(args) -> dict:
    from hybridcore.model import build_model
    from hybridcore.parallel import ParallelConfig, build_mesh, parallelize
    from hybridcore.train.step import Batch, build_optimizers, train_step

    torch.set_num_threads(1)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    layout = layout_of(args.layout)
    config = small_config(layout)
    parallel = ParallelConfig(tp=args.tp, dp_shard=args.dp_shard, pp=args.pp)
    mesh = build_mesh(parallel, "cpu") if distributed else None
    model = parallelize(build_model(config, seed=0), mesh, parallel, seq_len=args.seq_len)
    optimizers = build_optimizers(model, lr=1e-4, weight_decay=0.1)
    tokens = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1),
                           generator=torch.Generator().manual_seed(0))
    batch = [Batch.from_tokens(tokens)]
    seconds, counts = [], {}
    for index in range(args.warmup + args.steps):
        if index == args.warmup:  # counted once, outside the timed steps (the counting costs time itself)
            counts = count_step(model, optimizers, batch)
        if distributed:
            dist.barrier()
        started = time.perf_counter()
        train_step(model, optimizers, batch, max_norm=1.0)
        if index >= args.warmup:
            seconds.append(time.perf_counter() - started)
    rank = dist.get_rank() if distributed else 0
    result = {"rank": rank, "seconds": statistics.median(seconds), **counts}
    if distributed:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, result)
        dist.barrier()  # leave together: a rank exiting first can abort in gloo's threads at exit
        dist.destroy_process_group()
    else:
        everyone = [result]
    name = "one-process" if not distributed else "_".join(f"{k}{v}" for k, v in
                                                        (("tp", args.tp), ("fsdp", args.dp_shard), ("pp", args.pp))
                                                        if v > 1)
    return {"layout_name": name, "layout": layout, "width": SMALL_WIDTH, "batch_size": args.batch_size,
            "seq_len": args.seq_len, "torch": torch.__version__, "ranks": everyone,
            "seconds_max_rank": max(r["seconds"] for r in everyone),
            "aten_ops_max_rank": max(r["aten_ops"] for r in everyone),
            "dtensor_dispatches_max_rank": max(r["dtensor_dispatches"] for r in everyone)}


def compare(folder: Path) -> dict:
    runs = {json.loads(p.read_text())["layout_name"]: json.loads(p.read_text()) for p in folder.glob("host-*.json")}
    base = runs.pop("one-process")
    ratios = {}
    for name, run in sorted(runs.items()):
        ratios[name] = {"host_time": run["seconds_max_rank"] / base["seconds_max_rank"],
                        "aten_ops": run["aten_ops_max_rank"] / base["aten_ops_max_rank"],
                        "dtensor_dispatches": run["dtensor_dispatches_max_rank"]}
        print(f"{name:10s} host time {ratios[name]['host_time']:.2f}x  aten ops {ratios[name]['aten_ops']:.2f}x  "
              f"DTensor dispatches {run['dtensor_dispatches_max_rank']}")
    return ratios


def main(argv=None):
    args = parse_args(argv)
    if args.compare is not None:
        return compare(args.compare)
    result = measure(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "width"}))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"host-{result['layout_name']}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
