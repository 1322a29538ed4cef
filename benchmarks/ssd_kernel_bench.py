"""The SSD scan alone, forward and forward + backward, on one side per process: ours (Triton) or mamba_ssm's
mamba_chunk_scan_combined, on the same seeded bf16 inputs, with the side's error against an fp32 run of the
PyTorch reference on those inputs.

    python benchmarks/ssd_kernel_bench.py --side ours --out DIR
    PYTHONPATH=<mamba_ssm source> python benchmarks/ssd_kernel_bench.py --side mamba_ssm --out DIR

Writes DIR/ssd-<shape>[-TAG]-<side>.json (rewritten after each measurement). Timing: triton.testing.do_bench
(its median over ~300 ms of calls after a warm-up that autotunes), --repeats times; the result is the median
of the repeats, with their range. These are wall times of one eager call, host launch overhead included, for
both sides alike. A side that cannot import records status "unavailable".
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from hybridcore.bench_record import environment, kernel_times, median_and_spread
from hybridcore.ops import ssd_chunked
from hybridcore.train.files import write_json_atomic

SIDES = {"ours": "hybridcore Triton SSD", "mamba_ssm": "mamba_ssm mamba_chunk_scan_combined"}
GRADIENTS = ["x", "dt", "A", "B", "C", "D", "dt_bias"]


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


def side_function(side):
    """The side's SSD call with our keyword names, or the reason it cannot run here."""
    if side == "ours":
        from hybridcore.ops import fused_ssd

        return lambda **kw: fused_ssd.ssd(**kw), None
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as error:
        return None, f"mamba_ssm does not import ({type(error).__name__}: {error})"
    return (lambda seq_idx=None, **kw: mamba_chunk_scan_combined(
        **kw, seq_idx=seq_idx.int() if seq_idx is not None else None)), None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=list(SIDES), required=True, help="what to measure in this process")
    p.add_argument("--shape", default="4,4096,24,64,128,1", help="batch,length,heads,head_dim,state,groups")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="do_bench runs (the median is reported, and the range)")
    p.add_argument("--packed", action="store_true", help="also time with seq_idx (4 documents per row)")
    p.add_argument("--profile", action="store_true", help="ours: also time each kernel (torch.profiler)")
    p.add_argument("--tag", default="", help="added to the figure's name")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be positive, got {args.repeats}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("ssd_kernel_bench.py needs a CUDA GPU")
    from triton.testing import do_bench

    batch, length, heads, head_dim, state, groups = map(int, args.shape.split(","))
    tag = f"-{args.tag}" if args.tag else ""
    figure = f"ssd-{args.shape.replace(',', 'x')}-chunk{args.chunk}{tag}"
    result = {"figure": figure, "kind": "ssd", "contender": args.side, "contender_name": SIDES[args.side],
              "status": "incomplete", "shape": dict(batch=batch, length=length, heads=heads, head_dim=head_dim,
                                                    state=state, groups=groups, chunk=args.chunk),
              "inputs": "x, dt, B, C bf16; A, D, dt_bias fp32; dt_softplus; errors against the fp32 reference "
                        "on the same inputs", "repeats": args.repeats, **environment(torch.device("cuda")),
              "command": "python " + " ".join(sys.argv)}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{figure}-{args.side}.json")

    def save():  # after each measurement: a run cut short by a time limit keeps what it measured
        write_json_atomic(path, result, indent=1)

    save()
    function, reason = side_function(args.side)
    if function is None:
        result.update(status="unavailable", reason=reason)
        save()
        print(f"{args.side}: unavailable: {reason}\nwrote {path}")
        return 0
    t = inputs(batch, length, heads, head_dim, state, groups)
    dy = torch.randn(batch, length, heads, head_dim, device="cuda", dtype=torch.bfloat16,
                     generator=torch.Generator(device="cuda").manual_seed(1))

    def call(leaves, seq_idx=None):
        return function(x=leaves["x"], dt=leaves["dt"], A=leaves["A"], B=leaves["B"], C=leaves["C"],
                        chunk_size=args.chunk, D=leaves["D"], dt_bias=leaves["dt_bias"], dt_softplus=True,
                        seq_idx=seq_idx)

    cases = {"plain": None}
    if args.packed:
        documents = torch.arange(length, device="cuda") * 4 // length  # four documents per row
        cases["packed"] = documents[None].expand(batch, -1).contiguous()
    for case, seq_idx in cases.items():
        reference = fp32_reference(t, dy, args.chunk, seq_idx)
        leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
        y = call(leaves, seq_idx)
        y.backward(dy)
        errors = {"y": rel(y, reference["y"]), **{f"d{k}": rel(leaves[k].grad, reference[f"d{k}"]) for k in GRADIENTS}}
        del reference, y

        def forward_backward():
            call(leaves, seq_idx).backward(dy)

        forward, both = [], []
        for _ in range(args.repeats):
            with torch.no_grad():
                forward.append(do_bench(lambda: call(leaves, seq_idx), warmup=50, rep=300, return_mode="median"))
            both.append(do_bench(forward_backward, warmup=50, rep=300, grad_to_none=list(leaves.values()),
                                 return_mode="median"))
        result[case] = {"fwd_ms": median_and_spread(forward), "fwd_bwd_ms": median_and_spread(both),
                        "fwd_ms_repeats": forward, "fwd_bwd_ms_repeats": both, "errors": errors}
        if args.profile and args.side == "ours":
            result[case]["kernel_ms"] = kernel_times(forward_backward, before_each=lambda: [
                setattr(leaf, "grad", None) for leaf in leaves.values()])
        save()
        print(f"{case:7s} {args.side:10s} fwd {result[case]['fwd_ms']['median']:.3f} ms  fwd+bwd "
              f"{result[case]['fwd_bwd_ms']['median']:.3f} ms  errors "
              + " ".join(f"{k} {v:.1e}" for k, v in errors.items()), flush=True)
    result["status"] = "ok"
    save()
    print(f"wrote {path}")
    return 0


def fp32_reference(t, dy, chunk, seq_idx):
    """Output and gradients of the PyTorch reference in fp32, on the same (bf16) values."""
    leaves = {k: v.detach().float().requires_grad_() for k, v in t.items()}
    y = ssd_chunked(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk, D=leaves["D"],
                    dt_bias=leaves["dt_bias"], dt_softplus=True, seq_idx=seq_idx)
    y.backward(dy.float())
    return {"y": y.detach(), **{f"d{k}": leaves[k].grad for k in GRADIENTS}}


if __name__ == "__main__":
    sys.exit(main())
