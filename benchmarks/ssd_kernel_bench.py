"""The SSD scan alone, forward + backward, ours (Triton) against mamba_ssm's mamba_chunk_scan_combined on
the same bf16 inputs, with each one's error against an fp32 run of the PyTorch reference.

    PYTHONPATH=.:peers/stub:peers/mamba_ssm-2.3.2.post1 python benchmarks/ssd_kernel_bench.py --out DIR
Writes DIR/ssd_kernel-<shape>[-TAG]-<date>.json after each measurement. Timings: triton.testing.do_bench,
median, after warm-up/autotune.
"""

import argparse
import datetime
import math
import os

import torch
from triton.testing import do_bench

from hybridcore.bench import kernel_times, versions
from hybridcore.ops import fused_ssd, ssd_chunked
from hybridcore.train.files import write_json_atomic


def inputs(batch, length, heads, head_dim, state, groups, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    bf16 = dict(device="cuda", dtype=torch.bfloat16, generator=g)
    dt_init = torch.exp(torch.rand(heads, device="cuda", generator=g) * (math.log(0.1) - math.log(1e-3))
                        + math.log(1e-3))  # Mamba's dt init range [1e-3, 0.1]
    return dict(
        x=torch.randn(batch, length, heads, head_dim, **bf16),
        dt=(torch.randn(batch, length, heads, **bf16) * 0.5),
        A=-torch.arange(1, heads + 1, device="cuda", dtype=torch.float32),  # released init: A_log = log(1..H)
        B=torch.randn(batch, length, groups, state, **bf16),
        C=torch.randn(batch, length, groups, state, **bf16),
        D=torch.ones(heads, device="cuda"),
        dt_bias=dt_init + torch.log(-torch.expm1(-dt_init)),  # inverse softplus
    )


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="4,4096,24,64,128,1", help="batch,length,heads,head_dim,state,groups")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--packed", action="store_true", help="also time with seq_idx (4 documents per row)")
    p.add_argument("--profile", action="store_true", help="also time each of our kernels (torch.profiler)")
    p.add_argument("--tag", default="", help="added to the file name")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    batch, length, heads, head_dim, state, groups = map(int, args.shape.split(","))
    t = inputs(batch, length, heads, head_dim, state, groups)
    grad_names = ["x", "dt", "A", "B", "C", "D", "dt_bias"]
    dy = torch.randn(batch, length, heads, head_dim, device="cuda", dtype=torch.bfloat16)

    impls = {"ours": lambda **kw: fused_ssd.ssd(**kw)}
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        impls["mamba_ssm"] = lambda seq_idx=None, **kw: mamba_chunk_scan_combined(
            **kw, seq_idx=seq_idx.int() if seq_idx is not None else None)
    except Exception as error:
        print(f"mamba_ssm unavailable: {error}")

    def call(name, leaves, seq_idx=None):
        return impls[name](x=leaves["x"], dt=leaves["dt"], A=leaves["A"], B=leaves["B"], C=leaves["C"],
                           chunk_size=args.chunk, D=leaves["D"], dt_bias=leaves["dt_bias"], dt_softplus=True,
                           seq_idx=seq_idx)

    cases = {"plain": None}
    if args.packed:
        docs = torch.arange(length, device="cuda") * 4 // length  # four documents per row
        cases["packed"] = docs[None].expand(batch, -1).contiguous()
    result = {"shape": dict(batch=batch, length=length, heads=heads, head_dim=head_dim, state=state, groups=groups,
                            chunk=args.chunk), "gpu": torch.cuda.get_device_name(), "versions": versions(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "inputs": "x, dt, B, C bf16; A, D, dt_bias fp32; dt_softplus; "
                        "errors vs fp32 reference on the same inputs"}
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    tag = f"-{args.tag}" if args.tag else ""
    path = os.path.join(args.out, f"ssd_kernel-{args.shape.replace(',', 'x')}{tag}-{stamp}.json")

    def save():  # after each measurement: a run cut short by a time limit keeps what it measured
        write_json_atomic(path, result, indent=1)

    for case, seq_idx in cases.items():
        # fp32 reference (same bf16 values, upcast)
        ref_leaves = {k: v.detach().float().requires_grad_() for k, v in t.items()}
        y_ref = ssd_chunked(ref_leaves["x"], ref_leaves["dt"], ref_leaves["A"], ref_leaves["B"], ref_leaves["C"],
                            args.chunk, D=ref_leaves["D"], dt_bias=ref_leaves["dt_bias"], dt_softplus=True,
                            seq_idx=seq_idx)
        y_ref.backward(dy.float())
        ref = {"y": y_ref.detach(), **{f"d{k}": ref_leaves[k].grad for k in grad_names}}
        del y_ref, ref_leaves
        for name in impls:
            leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
            y = call(name, leaves, seq_idx)
            y.backward(dy)
            errors = {"y": rel(y, ref["y"]), **{f"d{k}": rel(leaves[k].grad, ref[f"d{k}"]) for k in grad_names}}
            with torch.no_grad():
                fwd_ms = do_bench(lambda: call(name, leaves, seq_idx), warmup=50, rep=300, return_mode="median")

            def fwd_bwd():
                call(name, leaves, seq_idx).backward(dy)
            both_ms = do_bench(fwd_bwd, warmup=50, rep=300, grad_to_none=list(leaves.values()), return_mode="median")
            result[f"{case}_{name}"] = {"fwd_ms": fwd_ms, "fwd_bwd_ms": both_ms, "errors": errors}
            if args.profile and name == "ours":
                result[f"{case}_{name}"]["kernel_ms"] = kernel_times(fwd_bwd, before_each=lambda: [
                    setattr(leaf, "grad", None) for leaf in leaves.values()])
            save()
            print(f"{case:7s} {name:10s} fwd {fwd_ms:.3f} ms  fwd+bwd {both_ms:.3f} ms  errors "
                  + " ".join(f"{k} {v:.1e}" for k, v in errors.items()), flush=True)
        if f"{case}_mamba_ssm" in result:
            peer, ours = result[f"{case}_mamba_ssm"], result[f"{case}_ours"]
            result[f"{case}_speedup_fwd_bwd"] = peer["fwd_bwd_ms"] / ours["fwd_bwd_ms"]
            result[f"{case}_speedup_fwd"] = result[f"{case}_mamba_ssm"]["fwd_ms"] / result[f"{case}_ours"]["fwd_ms"]
            print(f"{case}: ours is x{result[f'{case}_speedup_fwd_bwd']:.2f} (fwd+bwd), "
                  f"x{result[f'{case}_speedup_fwd']:.2f} (fwd) of mamba_ssm")
    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
