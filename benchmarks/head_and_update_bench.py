"""Two parts of a training step that grow with the parameter count rather than the tokens, each timed two
ways on one GPU: the LM head's weight gradient summed over the loss chunks, and clipping with the AdamW step.

    python benchmarks/head_and_update_bench.py            # falcon-h1-7b's head, 2,048-token chunks; 2B parameters
    python benchmarks/head_and_update_bench.py --smoke    # CPU, tiny

Head: `widen_then_add` rounds each chunk's product to bf16, widens it to fp32 and adds it (a plain autocast
matmul followed by an fp32 sum); `accumulate_product` (hybridcore.ops.cross_entropy, what training runs)
sums in fp32 inside the matmul. Each reports the milliseconds of the first chunk and of a later one, and
the relative error of the sum over --chunks chunks against float64.
Update: `separate_pass` divides the gradients by the clipping factor in a pass of its own before torch's
fused AdamW step; `in_fused_step` hands the factor to that step as its grad_scale (what train_step does).
Both include the gradient norm. Median and range of --repeats timings after two untimed runs, all in one
process (kernel timings of one shape, not a contender comparison). Writes one JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from hybridcore.bench_record import environment, median_and_spread, synchronize, write_report

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=130176, help="head rows (falcon-h1-7b's 130,049 padded to 128)")
    p.add_argument("--d-model", type=int, default=3072)
    p.add_argument("--chunk", type=int, default=2048, help="tokens per loss chunk")
    p.add_argument("--chunks", type=int, default=4, help="chunks summed for the error")
    p.add_argument("--params", type=float, default=2.0e9, help="fp32 parameters of the update")
    p.add_argument("--tensors", type=int, default=100, help="the parameters split into this many tensors")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes")
    p.add_argument("--out", type=Path, default=None, help="JSON file or folder (default: benchmarks/results/)")
    args = p.parse_args(argv)
    if args.smoke:
        args.vocab, args.d_model, args.chunk, args.chunks, args.params, args.tensors, args.repeats = \
            256, 64, 32, 3, 2e5, 10, 3
    return args


def timed_ms(fn, device, repeats: int) -> dict:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return median_and_spread(times)


def widen_then_add(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """The plain way: the product in the inputs' dtype, widened, then added (or copied, first)."""
    product = (a @ b).to(out.dtype)
    out.copy_(product) if first else out.add_(product)


def time_head(args, device) -> dict:
    from hybridcore.ops.cross_entropy import accumulate_product

    generator = torch.Generator(device).manual_seed(0)
    pieces = [(torch.randn(args.chunk, args.vocab, device=device, generator=generator).mul_(1e-3).bfloat16().t(),
               torch.randn(args.chunk, args.d_model, device=device, generator=generator).bfloat16())
              for _ in range(args.chunks)]
    exact = torch.zeros(args.vocab, args.d_model, device=device, dtype=torch.float64)
    for a, b in pieces:
        exact.addmm_(a.double(), b.double())
    scale = exact.abs().max()
    out = torch.empty(args.vocab, args.d_model, device=device)
    report = {}
    for name, accumulate in (("widen_then_add", widen_then_add), ("accumulate_product", accumulate_product)):
        for index, (a, b) in enumerate(pieces):
            accumulate(out, a, b, first=index == 0)
        error = ((out.double() - exact).abs().max() / scale).item()
        a, b = pieces[0]
        report[name] = {"first_chunk_ms": timed_ms(lambda: accumulate(out, a, b, True), device, args.repeats),
                        "later_chunk_ms": timed_ms(lambda: accumulate(out, a, b, False), device, args.repeats),
                        "relative_error": error}
    return report


def time_update(args, device) -> dict:
    from hybridcore.parallel.clipping import clip_divisor

    sizes = [int(args.params) // args.tensors] * args.tensors
    params = [torch.nn.Parameter(torch.randn(n, device=device).mul_(0.02)) for n in sizes]
    for param in params:
        param.grad = torch.randn_like(param).mul_(1e-3)
    grads = [param.grad for param in params]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    max_norm = 1e-3  # below the gradients' norm: the factor is applied

    def separate_pass():
        divisor = clip_divisor(torch.nn.utils.get_total_norm(grads, 2.0), max_norm)
        torch._foreach_div_(grads, divisor)
        optimizer.step()

    def in_fused_step():
        optimizer.grad_scale = clip_divisor(torch.nn.utils.get_total_norm(grads, 2.0), max_norm)
        optimizer.step()
        optimizer.grad_scale = None

    return {"parameters": sum(sizes), "tensors": len(sizes),
            **{name: {"ms": timed_ms(fn, device, args.repeats)}
               for name, fn in (("separate_pass", separate_pass), ("in_fused_step", in_fused_step))}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    arguments = sys.argv[1:] if argv is None else argv
    report = {"benchmark": "head_and_update", "smoke": args.smoke,
              "command": "python benchmarks/head_and_update_bench.py " + " ".join(arguments),
              "head": {"vocab": args.vocab, "d_model": args.d_model, "chunk": args.chunk, "chunks": args.chunks},
              **environment(device)}
    report["head"].update(time_head(args, device))
    report["update"] = time_update(args, device)
    for name in ("widen_then_add", "accumulate_product"):
        row = report["head"][name]
        print(f"head   {name:20s} first chunk {row['first_chunk_ms']['median']:8.3f} ms, later "
              f"{row['later_chunk_ms']['median']:8.3f} ms, relative error of the sum {row['relative_error']:.1e}")
    for name in ("separate_pass", "in_fused_step"):
        row = report["update"][name]["ms"]
        print(f"update {name:20s} {row['median']:8.2f} ms  [{row['spread'][0]:.2f}, {row['spread'][1]:.2f}]  "
              f"({report['update']['parameters']:,} fp32 parameters)")
    write_report(report, args.out, RESULTS, f"head_and_update-v{args.vocab}-d{args.d_model}-c{args.chunk}.json",
                 args.smoke)
    return report


if __name__ == "__main__":
    main()
