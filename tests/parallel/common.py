"""Shared pieces of the multi-process tests: tiny configs, fixed batches, a spawn launcher."""

from __future__ import annotations

import datetime
import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybridcore.config import ModelConfig

SEQ_LEN = 32
GLOBAL_BATCH = 4
STEPS = 3
# HYBRIDCORE_TEST_DEVICE=cuda: the ranks run on GPUs over NCCL, one GPU each, against one GPU (CI: CPU, gloo).
DEVICE = os.environ.get("HYBRIDCORE_TEST_DEVICE", "cpu")
if DEVICE not in ("cpu", "cuda"):
    raise ValueError(f"HYBRIDCORE_TEST_DEVICE must be cpu or cuda, got {DEVICE!r}")
# Relative, fp32. Looser on GPUs, where cuBLAS and SDPA pick kernels by the shapes each rank holds, so a
# rank's rounding differs from one process's.
TOLERANCE = 1e-5 if DEVICE == "cpu" else 1e-4
if DEVICE == "cuda":  # fp32 means fp32 on both sides (cuDNN's convolutions would take TF32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
# Layout tests take plain gradient steps, large enough that a wrong gradient moves the next losses.
LAYOUT_OPTIMIZER = dict(optimizer="sgd", lr=0.5)


def tiny_config(layout: str, **changes) -> ModelConfig:
    """Tiny, but with every feature the parallel code touches: GQA, 2 Mamba groups with the gated
    norm, biases, non-trivial µP multipliers, chunks shorter than the sequence."""
    base = dict(vocab_size=64, d_model=32, layout=layout, num_heads=4, num_kv_heads=2, head_dim=8,
                mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8, mamba_n_groups=2, mamba_d_conv=4,
                mamba_chunk_size=8, d_ff=64, rope_theta=1e4, mamba_rms_norm=True, attention_bias=True,
                mamba_proj_bias=True, projectors_bias=True, mlp_bias=True, embedding_multiplier=2.0,
                lm_head_multiplier=0.5, key_multiplier=0.7, ssm_in_multiplier=1.25, ssm_out_multiplier=0.8,
                attention_out_multiplier=0.9, mlp_multipliers=(0.9, 0.6),
                ssm_multipliers=(0.35, 0.25, 0.35, 0.5, 0.35), init_std=0.1)
    base.update(changes)
    return ModelConfig(**base)


@torch.no_grad()
def long_memory(model) -> None:
    """Make every path matter: the released Mamba init forgets within a few tokens (A = -1..-H,
    dt ~ 1.3), which would hide a lost state at a rank border below the test tolerance."""
    for name, param in model.named_parameters():
        if name.endswith("A_log"):
            param.fill_(-2.0)  # A = -0.14
        elif name.endswith("dt_bias"):
            param.fill_(-1.0)  # dt = softplus(-1 + ...) ~ 0.3


# Nemotron-H's switches (a model that exports as Nemotron-H): squared-ReLU MLP without a gate, attention
# without RoPE or biases, 8 Mamba groups, norm weights in fp32, no multipliers.
NEMOTRON_H = dict(mlp_activation="relu2", rope_fraction=0.0, attention_bias=False, mamba_n_heads=8, mamba_d_head=4,
                  mamba_n_groups=8, norm_weight_in_fp32=True, embedding_multiplier=1.0, lm_head_multiplier=1.0,
                  key_multiplier=1.0, ssm_in_multiplier=1.0, ssm_out_multiplier=1.0, attention_out_multiplier=1.0,
                  mlp_multipliers=(1.0, 1.0), ssm_multipliers=(1.0,) * 5)
# Model variants the layout tests name: a layout string, optionally "/" and a variant.
VARIANTS = {"": {}, "groups1": dict(mamba_n_groups=1), "groups1-no-norm": dict(mamba_n_groups=1, mamba_rms_norm=False),
            "nemotron": NEMOTRON_H,
            # Bamba's partial RoPE with Granite's softmax and logits scales
            "partial-rope-scaled": dict(rope_fraction=0.5, attention_scale=0.2, logits_divisor=2.0)}


def named_config(name: str) -> ModelConfig:
    """"M*-P" or "P-/groups1": one Mamba group (Falcon-H1's), B/C replicated under tensor parallelism."""
    layout, _, variant = name.partition("/")
    return tiny_config(layout, **VARIANTS[variant])


def checkpoint_config() -> ModelConfig:
    """Splits 4 ways as well (for the tp4 reload)."""
    return tiny_config("M*-P", num_heads=8, num_kv_heads=4, mamba_n_heads=8, mamba_n_groups=4)


def global_batch(seed: int = 1, vocab: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (GLOBAL_BATCH, SEQ_LEN + 1), generator=generator)


def document_index() -> torch.Tensor:
    """Packed documents: boundaries inside chunks, at chunk edges and in the middle of the sequence."""
    cuts = [[5, 16, 27], [8], [], [1, 2, 20, 31]]
    rows = []
    for row_cuts in cuts:
        row = torch.zeros(SEQ_LEN + 1, dtype=torch.long)
        for cut in row_cuts:
            row[cut:] += 1
        rows.append(row)
    return torch.stack(rows)


def relative_error(got: list[float], want: list[float]) -> float:
    return max(abs(g - w) / abs(w) for g, w in zip(got, want))


# ---- launcher ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world_size: int, port: int, out_dir: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if DEVICE == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        result = fn(*args)
    except Exception:  # report it to the test, which names the rank
        result = {"__error__": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def run_workers(fn, world_size: int, out_dir: Path, *args) -> list:
    """Run fn(*args) on `world_size` spawned ranks (gloo, or NCCL under DEVICE=cuda); returns each rank's
    return value."""
    if DEVICE == "cuda" and torch.cuda.device_count() < world_size:
        pytest.skip(f"{world_size} ranks need {world_size} GPUs, {torch.cuda.device_count()} here")
    out_dir.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_entry, args=(fn, world_size, _free_port(), str(out_dir), args), nprocs=world_size,
                       start_method="spawn")
    # map_location: every rank's tensors onto the device the test compares on (cuda:0 under NCCL)
    results = [torch.load(out_dir / f"rank{rank}.pt", weights_only=False, map_location=DEVICE)
               for rank in range(world_size)]
    for rank, result in enumerate(results):
        if isinstance(result, dict) and "__error__" in result:
            raise AssertionError(f"rank {rank} failed:\n{result['__error__']}")
    return results
