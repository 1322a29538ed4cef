"""Activation memory per rank against the context-parallel degree: what one training forward keeps for
its backward, counted exactly with autograd's saved-tensor hooks (unique storages, bytes).

    torchrun --nproc_per_node N benchmarks/cp_activation_memory.py --seq-lens 4096 16384 [--layout M-M-] [--documents 8]

cp is the world size (no data parallel), one sequence per step, fp32, any device (gloo on CPU).
The count is of tensors saved for backward, not the allocator's peak: it is the same on CPU and GPU
for the same ops, and it is what context parallelism is meant to divide. Parameters gathered by FSDP
and saved for backward are included, so a small model shows activations almost alone.
Appends one JSON object per (world size, length) to --out (JSON lines).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from hybridcore.config import apply_overrides
from hybridcore.model import attention, build_model
from hybridcore.parallel import ParallelConfig, build_mesh, parallelize
from hybridcore.presets import get_preset
from hybridcore.train.step import Batch, local_batch

SHAPE = ["layout=P-P-", "d_model=256", "d_ff=512", "num_heads=4", "num_kv_heads=2", "head_dim=64",
         "mamba_n_heads=8", "mamba_d_head=32", "mamba_d_state=32", "mamba_chunk_size=128", "max_seq_len=262144"]


def saved_bytes(model, local) -> int:
    """Bytes of the distinct storages autograd saves during one training forward (the fused head and
    loss included); runs the backward too."""
    storages = {}

    def pack(tensor):
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        storage = local.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(local.input_ids, local.seq_idx, local.positions, labels=local.labels)
    loss.backward()
    return sum(storages.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="debug")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="model config overrides (default: a small P-P- shape, so activations dominate)")
    parser.add_argument("--layout", default=None, help="replace the layout string only (e.g. M-M-)")
    parser.add_argument("--documents", type=int, default=1,
                        help="packed documents of equal length per sequence (1: none, no seq_idx)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192, 16384])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "cp_activation_memory.jsonl")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    world = dist.get_world_size()
    overrides = (SHAPE if args.set is None else args.set) + ([f"layout={args.layout}"] if args.layout else [])
    config = apply_overrides(get_preset(args.preset), overrides)
    parallel_config = ParallelConfig(cp=world, dp_shard=1).resolve(world)
    mesh = build_mesh(parallel_config, device)
    model = parallelize(build_model(config, device=device, seed=0), mesh, parallel_config)
    generator = torch.Generator().manual_seed(0)
    for seq_len in args.seq_lens:
        tokens = torch.randint(0, config.vocab_size, (1, seq_len + 1), generator=generator)
        seq_idx = None
        if args.documents > 1:
            seq_idx = (torch.arange(seq_len + 1) * args.documents // (seq_len + 1))[None]
        measured = saved_bytes(model.model, local_batch(model, Batch.from_tokens(tokens, seq_idx), device))
        model.zero_grad(set_to_none=True)
        per_rank = torch.tensor([measured], dtype=torch.float64, device=device)
        dist.all_reduce(per_rank, op=dist.ReduceOp.MAX)
        if dist.get_rank() == 0:
            row = {"cp": world, "seq_len": seq_len, "documents": args.documents,
                   "document_mask_limit": attention.DOCUMENT_MASK_LIMIT, "saved_bytes_max_rank": int(per_rank.item()),
                   "saved_gib_max_rank": per_rank.item() / 2 ** 30, "layout": config.layout,
                   "overrides": overrides, "device": device,
                   "torch": torch.__version__,
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    dist.barrier()  # leave together: a rank exiting first can abort in gloo's threads at exit
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
