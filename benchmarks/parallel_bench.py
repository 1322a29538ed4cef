"""Training throughput of one preset under one parallel layout, launched by torchrun.

    torchrun --nproc_per_node 2 benchmarks/parallel_bench.py --preset falcon-h1-0.5b --tp 2 \
        --seq-len 4096 --global-batch 8 --steps 20
    torchrun --nproc_per_node 2 benchmarks/parallel_bench.py --smoke --tp 2     # CPU, gloo, tiny

Reports tokens/s per GPU, MFU (`hybridcore.flops.mfu`: per-GPU model FLOP/s over the datasheet dense bf16
peak, --peak-tflops; model FLOPs are 3 x forward, recomputation not counted) with the bf16 matmul
throughput measured in the run beside it as "% of measured", peak memory, and the first losses (random
tokens, so about ln(vocab)); writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hybridcore.bench_record import git_state
from hybridcore.config import apply_overrides
from hybridcore.flops import flops_per_token, mfu
from hybridcore.model import build_model
from hybridcore.parallel import ParallelConfig, build_mesh, parallelize
from hybridcore.presets import get_preset
from hybridcore.train.step import Batch, build_optimizers, train_step

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="falcon-h1-0.5b")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a model config field")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--dp-shard", type=int, default=-1, help="-1: the rest of the world")
    p.add_argument("--dp-replicate", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--cp", type=int, default=1)
    p.add_argument("--pp-schedule", default="1f1b", help="1f1b | interleaved_1f1b | gpipe")
    p.add_argument("--pp-microbatches", type=int, default=None)
    p.add_argument("--pp-stages-per-rank", type=int, default=1)
    p.add_argument("--no-sequence-parallel", action="store_true")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--global-batch", type=int, default=8, help="sequences per optimizer step, all ranks")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--dtype", default=None, help="bf16 | fp32 (default: bf16 autocast on CUDA, fp32 on CPU)")
    p.add_argument("--matmul-size", type=int, default=8192, help="square bf16 matmul for the measured throughput")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the GPU's datasheet dense bf16 TFLOP/s, MFU's denominator (989: H100 and H200 SXM)")
    p.add_argument("--smoke", action="store_true", help="CPU + gloo, debug preset, tiny sizes")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.seq_len, args.global_batch = "debug", 64, 4
        args.steps, args.warmup, args.matmul_size = min(args.steps, 3), min(args.warmup, 1), 256
    return args


def model_config(args):
    return apply_overrides(get_preset(args.preset), args.set)


def init_distributed(smoke: bool) -> str:
    device_type = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    if "RANK" not in os.environ:  # a plain `python parallel_bench.py`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return device_type


def synchronize(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling_tflops(device_type: str, size: int, iterations: int = 20) -> float:
    """Achieved TFLOP/s of a square matmul in the compute dtype (bf16 on GPU, fp32 on CPU)."""
    dtype = torch.bfloat16 if device_type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device_type, dtype=dtype)
    b = torch.randn(size, size, device=device_type, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device_type)
    start = time.perf_counter()
    for _ in range(iterations):
        a @ b
    synchronize(device_type)
    return 2 * size ** 3 * iterations / (time.perf_counter() - start) / 1e12


def max_over_ranks(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64,
                          device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def main(argv=None) -> dict:
    args = parse_args(argv)
    device_type = init_distributed(args.smoke)
    world = dist.get_world_size()
    config = model_config(args)
    parallel_config = ParallelConfig(tp=args.tp, pp=args.pp, cp=args.cp, dp_shard=args.dp_shard,
                                     dp_replicate=args.dp_replicate, sequence_parallel=not args.no_sequence_parallel,
                                     pp_schedule=args.pp_schedule, pp_microbatches=args.pp_microbatches,
                                     pp_stages_per_rank=args.pp_stages_per_rank).resolve(world)
    mesh = build_mesh(parallel_config, device_type)
    ceiling = matmul_ceiling_tflops(device_type, args.matmul_size)

    dtype = args.dtype or ("bf16" if device_type == "cuda" else "fp32")
    model = parallelize(build_model(config, device=device_type, seed=0), mesh, parallel_config, seq_len=args.seq_len,
                        activation_checkpointing=args.activation_checkpointing, compile=args.compile)
    optimizers = build_optimizers(model, lr=3e-4, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.global_batch, args.seq_len + 1), generator=generator)
    batch = Batch.from_tokens(tokens)
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    losses, step_seconds = [], []
    for step in range(args.warmup + args.steps):
        synchronize(device_type)
        start = time.perf_counter()
        result = train_step(model, optimizers, [batch], max_norm=1.0,
                            autocast_dtype=torch.bfloat16 if dtype == "bf16" else None)
        synchronize(device_type)
        if step >= args.warmup:
            step_seconds.append(time.perf_counter() - start)
        losses.append(result.loss.item())

    seconds = sum(step_seconds) / len(step_seconds)
    tokens_per_gpu = args.global_batch * args.seq_len / seconds / world
    flops = flops_per_token(config, args.seq_len, training=True)
    achieved = flops.total * tokens_per_gpu / 1e12
    peak_memory = torch.cuda.max_memory_allocated() / 2**30 if device_type == "cuda" else None
    result = {
        "preset": args.preset, "overrides": args.set, "layout": config.layout,
        "parallel": dataclasses.asdict(parallel_config),
        "world_size": world,
        "device": torch.cuda.get_device_name() if device_type == "cuda" else f"cpu ({platform.machine()})",
        "backend": dist.get_backend(), "torch": torch.__version__, "commit": git_state()["git_commit"],
        "seq_len": args.seq_len, "global_batch": args.global_batch, "warmup_steps": args.warmup,
        "timed_steps": args.steps, "activation_checkpointing": args.activation_checkpointing,
        "compile": args.compile, "dtype": dtype,
        "step_seconds_mean": seconds, "step_seconds_max_rank": max_over_ranks(seconds),
        "tokens_per_second_per_gpu": tokens_per_gpu,
        "model_flops_per_token": flops.as_dict(),
        "achieved_tflops_per_gpu": achieved,
        "matmul_ceiling_tflops": -max_over_ranks(-ceiling),  # the slowest rank's
        "matmul_ceiling_note": f"{args.matmul_size}^3 matmul in {'bf16' if device_type == 'cuda' else 'fp32'}",
        "peak_memory_gib_max_rank": max_over_ranks(peak_memory) if peak_memory is not None else None,
        "first_losses": losses[:5],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    result["peak_tflops"] = args.peak_tflops
    result["mfu"] = mfu(tokens_per_gpu, flops.total, 1, args.peak_tflops * 1e12)  # per GPU, so one GPU's peak
    result["pct_of_measured"] = achieved / result["matmul_ceiling_tflops"]
    if dist.get_rank() == 0:
        c = parallel_config
        layout = f"pp{c.pp}_dpr{c.dp_replicate}_dps{c.dp_shard}_cp{c.cp}_tp{c.tp}"
        out = args.out or RESULTS / f"parallel_{args.preset}_{layout}{'_smoke' if args.smoke else ''}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    dist.barrier()  # leave together: a rank exiting first can abort in gloo's threads at exit
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
    # The results are written and the ranks have left together: skip the interpreter's teardown, where
    # gloo's worker threads were once destroyed still joinable ("terminate called without an active
    # exception", exit code -6 after a complete run on CPU ranks).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
