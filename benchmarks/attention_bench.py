"""Packed-document attention alone, forward + backward: the causal SDPA kernel (no document masking, the
speed to approach) against FlexAttention's document mask: with the block mask built inside the compiled
region by create_block_mask (flex_inside), or once outside it by create_block_mask or by the model's
document_block_mask (flex_model; flex_model64, by name, with 64-token mask blocks, which torch 2.11's
lowering refused on an H100), and with some kernel options;
and against FlashAttention's variable-length kernel with the documents as its sequences (CUDA only).
The model's block mask build is timed on its own ("mask_build_ms": once per forward, for every layer).

    python benchmarks/attention_bench.py                  # falcon-h1-0.5b's attention, 4 x 4096, GPU
    python benchmarks/attention_bench.py --smoke          # CPU, tiny: the variants run (no timing claims)

Each variant is compiled on its own (static shapes), warmed up, then timed with CUDA events over
--iters iterations (the median and range, host time included: "ms"), and its kernels' GPU time summed
by the profiler over as many more ("kernel_ms", what a CUDA-graphed step pays); all written as JSON.
One process runs every variant: these are kernel timings of one op at one shape, not a contender
comparison.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hybridcore.model.flex_document import SMALL_HEAD_OPTIONS  # noqa: E402

# FlexAttention kernel_options tried on top of the document mask (FlexAttention's own names); flex_tuned
# is what the model passes (hybridcore.model.flex_document.flex_kernel_options). Not ROWS_GUARANTEED_SAFE
# (a document mask leaves rows with no key inside some of the blocks visited: those rows came out NaN) or
# BLOCKS_ARE_CONTIGUOUS (its outputs were wrong on a document mask, a relative error of 0.16).
VARIANTS = {
    "flex": {},
    "flex_tuned": None,
    "flex_fwd128x128w8": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_warps": 8, "fwd_num_stages": 3},
    "flex_bwd64x64": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64,
                      "bwd_num_warps": 4, "bwd_num_stages": 3},
    # the model's options with one change each
    "flex_tuned_tma": {**SMALL_HEAD_OPTIONS, "USE_TMA": True},
    "flex_tuned_fwd128x64": {**SMALL_HEAD_OPTIONS, "fwd_BLOCK_M": 128},
    "flex_tuned_bwd_m32": {**SMALL_HEAD_OPTIONS, "bwd_BLOCK_M1": 32, "bwd_BLOCK_N2": 32},
    "flex_tuned_stages4": {**SMALL_HEAD_OPTIONS, "fwd_num_stages": 4, "bwd_num_stages": 4},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--documents", type=int, default=3200, help="mean document length (bench.document_ids)")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--variants", nargs="+",
                   default=["sdpa_causal", "flex_model", "flex_inside", *VARIANTS, "varlen"])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.seq_len, args.heads, args.kv_heads, args.head_dim = 1, 256, 2, 1, 16
        args.documents, args.iters = 64, 2
        args.variants = ["sdpa_causal", "flex_model", "flex_inside", "flex"]
    return args


def make_variant(name: str, seq_idx: torch.Tensor, length: int, head_dim: int, device):
    """A callable (q, k, v) -> attention output for the variant `name`."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def causal_same_document(b, h, q_index, kv_index):
        return (kv_index <= q_index) & (seq_idx[b, q_index] == seq_idx[b, kv_index])

    if name == "sdpa_causal":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if name == "varlen":
        return varlen_documents(seq_idx)
    options = variant_options(name, head_dim, device)
    if name.startswith("flex_model"):  # as the model runs it: document_block_mask once per forward
        from hybridcore.model.flex_document import MASK_BLOCK, document_block_mask
        mask = document_block_mask(seq_idx, 64 if name == "flex_model64" else MASK_BLOCK)
        compiled = torch.compile(flex_attention, dynamic=False)
        return lambda q, k, v: compiled(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=options)
    if name == "flex_inside":  # the block mask built in every compiled call, by create_block_mask
        def inside(q, k, v):
            mask = create_block_mask(causal_same_document, q.shape[0], None, length, length, device=q.device)
            return flex_attention(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=options)
        return torch.compile(inside, dynamic=False)
    mask = create_block_mask(causal_same_document, seq_idx.shape[0], None, length, length, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=options)


def variant_options(name: str, head_dim: int, device) -> dict | None:
    """The kernel_options a FlexAttention variant passes (None: FlexAttention's own choice)."""
    if name in ("flex_inside", "flex_tuned", "flex_model", "flex_model64"):
        from hybridcore.model.flex_document import flex_kernel_options
        return flex_kernel_options(head_dim, device)
    return dict(VARIANTS[name]) or None if name in VARIANTS else None


def varlen_documents(seq_idx: torch.Tensor):
    """FlashAttention's variable-length kernel over the documents as sequences (torch.nn.attention.varlen),
    causal inside each. Its layout is [tokens, heads, head_dim]: the transposes from the bench's
    [B, heads, L, head_dim] are copies timed with it (the model's projections give that layout as a view)."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    batch, length = seq_idx.shape
    starts = torch.ones_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    cu = torch.cat([starts.flatten().nonzero().flatten(), torch.tensor([batch * length], device=seq_idx.device)])
    cu = cu.to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    parameters = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in parameters else {"window_size": (-1, 0)}
    gqa = "enable_gqa" in parameters

    def attend(q, k, v):
        heads = q.shape[1]
        if not gqa:  # this torch's varlen_attn wants as many key/value heads as query heads
            k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
        flat = [t.transpose(1, 2).reshape(batch * length, t.shape[1], t.shape[3]) for t in (q, k, v)]
        out = varlen_attn(*flat, cu, cu, longest, longest, **causal, **({"enable_gqa": True} if gqa else {}))
        return out.view(batch, length, heads, -1).transpose(1, 2)
    return attend


def time_variant(fn, q, k, v, grad, iters: int, cuda: bool) -> list[float]:
    def once():
        out = fn(q, k, v)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    for _ in range(3):
        once()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            once()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            once()
            times.append(1000 * (time.perf_counter() - t))
    return times


def mask_build_ms(seq_idx: torch.Tensor, iters: int) -> list[float]:
    """Wall time of the model's eager block mask build (document_block_mask), host and GPU, per call."""
    from hybridcore.model.flex_document import document_block_mask

    for _ in range(3):
        document_block_mask(seq_idx)
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        document_block_mask(seq_idx)
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t))
    return times


def kernel_ms(fn, q, k, v, grad, iters: int) -> float:
    """GPU time of one forward + backward from the profiler's kernel records (launch gaps left out)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn(q, k, v).backward(grad)
        torch.cuda.synchronize()
    q.grad = k.grad = v.grad = None
    return sum(event.self_device_time_total for event in prof.key_averages()) / iters / 1000


def main(argv=None) -> dict:
    args = parse_args(argv)
    from hybridcore.bench import document_ids, versions
    from hybridcore.bench_record import git_state
    from hybridcore.io.json_codec import write_json

    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    B, L, H, KV, D = args.batch_size, args.seq_len, args.heads, args.kv_heads, args.head_dim
    seq_idx = document_ids(B, L, args.documents).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, H, L, D, device=device, dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(B, KV, L, D, device=device, dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(B, KV, L, D, device=device, dtype=dtype, generator=gen).requires_grad_()
    grad = torch.randn(B, H, L, D, device=device, dtype=dtype, generator=gen)
    report = {"benchmark": "attention", "device": torch.cuda.get_device_name() if cuda else "cpu",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "versions": versions(), "git_commit": git_state()["git_commit"],
              "shape": dict(batch=B, seq_len=L, heads=H, kv_heads=KV, head_dim=D),
              "mean_document": args.documents, "variants": {}}
    if cuda:
        build = mask_build_ms(seq_idx, args.iters)
        report["mask_build_ms"] = {"median": statistics.median(build), "range": [min(build), max(build)]}
        print(f"document_block_mask  {report['mask_build_ms']['median']:.3f} ms per forward", flush=True)
    reference = None
    for name in args.variants:
        started = time.perf_counter()
        torch._dynamo.reset()  # each variant compiles flex_attention afresh (no recompile limit reached)
        try:
            fn = make_variant(name, seq_idx, L, D, device)
            out = fn(q, k, v).detach().float()
            if reference is None and name != "sdpa_causal":  # the first document path is the reference
                reference = out
            error = None if name == "sdpa_causal" else float((out - reference).norm() / reference.norm())
            times = time_variant(fn, q, k, v, grad, args.iters, cuda)
            row = {"ms": statistics.median(times), "ms_range": [min(times), max(times)],
                   "kernel_ms": kernel_ms(fn, q, k, v, grad, args.iters) if cuda else None,
                   "rel_error_vs_first": error, "options": variant_options(name, D, device),
                   "compile_and_warm_s": time.perf_counter() - started}
        except Exception as exc:  # one variant's failure (an option the kernel rejects) leaves the others
            row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        report["variants"][name] = row
        kernels = f", kernels {row['kernel_ms']:.3f} ms" if row.get("kernel_ms") is not None else ""
        print(f"{name:20s} " + (f"{row['ms']:.3f} ms ({row['ms_range'][0]:.3f}-{row['ms_range'][1]:.3f}){kernels} "
                                f"err {row['rel_error_vs_first']}" if "ms" in row else row["error"]), flush=True)
    if args.out is not None or not args.smoke:
        out = args.out or RESULTS / f"attention-{B}x{L}-{H}h{KV}kv{D}-doc{args.documents}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, report, indent=1)
        print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
