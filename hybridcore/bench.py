"""`hybridcore bench`: training-step throughput of a preset on one GPU, side by side with transformers.

One process measures, on the same config, shapes, precision and token batch:
  ours          HybridLM (fused Triton kernels on CUDA), eager, and with each layer torch.compile'd (--compile)
  hf_kernels    transformers' FalconH1ForCausalLM with mamba_ssm + causal_conv1d (when they import)
  hf_torch      the same model on transformers' pure-PyTorch path
A step is forward + loss + backward + AdamW step. Precision "amp": fp32 master weights, bf16 autocast
(default); "bf16": weights, grads and optimizer state in bf16; "fp32" (the CPU smoke run). Reported:
tokens/s (median step), model TFLOP/s from `flops.flops_per_token`, MFU against a bf16 8192^3 matmul
measured in this run, and peak memory. A peer that runs out of memory is recorded as null with status "oom". `--check` compares the
fused kernels with the reference at the real shapes (outputs and gradients). `--smoke` runs tiny on CPU.
Results: one JSON object per run under --out.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

HF_MODULE = "transformers.models.falcon_h1.modeling_falcon_h1"
PEER_PACKAGES = ("mamba_ssm", "causal_conv1d")


def add_arguments(parser) -> None:
    parser.add_argument("--preset", default="falcon-h1-0.5b")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset field, e.g. --set layout=P-P-P-P- for a few 7B layers")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (Triton autotunes here)")
    parser.add_argument("--precision", choices=["amp", "bf16", "fp32"], default="amp")
    parser.add_argument("--compile", action="store_true", help="also measure ours with each layer compiled")
    parser.add_argument("--compile-modes", nargs="+", default=["default"],
                        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                        help="torch.compile modes to measure with --compile (reduce-overhead adds CUDA graphs)")
    parser.add_argument("--compiled-only", action="store_true",
                        help="with --compile, skip the eager run of ours (long rows: it needs the most memory)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute each layer in backward, ours and the peers alike (long sequences)")
    parser.add_argument("--checkpoint-layers", type=int, default=None, metavar="N",
                        help="with --activation-checkpointing, recompute only our first N layers (ours only: "
                             "transformers checkpoints every layer)")
    parser.add_argument("--compile-cache-dir", default=None, metavar="DIR",
                        help="with --compile, where Inductor's and Triton's caches persist (as `train`)")
    parser.add_argument("--fp8", choices=["tensorwise", "rowwise", "rowwise_with_gw_hp"], default=None,
                        help="ours with float8 matmuls through torchao (as `train --fp8`)")
    parser.add_argument("--fp8-min-size", type=int, default=2048, metavar="N",
                        help="with --fp8, linears with a weight dimension below N stay in bf16")
    parser.add_argument("--loss", choices=["chunked", "plain"], default="chunked",
                        help="our loss: chunked linear+cross-entropy, or full logits")
    parser.add_argument("--no-kernels", action="store_true", help="ours on the PyTorch reference ops")
    parser.add_argument("--sdpa-backend", choices=sorted(SDPA_BACKENDS), default="auto",
                        help="restrict our attention to one scaled_dot_product_attention backend (the peers "
                             "keep PyTorch's choice); one that cannot run the shape makes ours an error")
    parser.add_argument("--documents", type=int, default=0, metavar="N",
                        help="pack each row with documents of about N tokens (ours only: per-document attention "
                             "and SSM resets, as `hybridcore train` does; FlexAttention in compiled layers on "
                             "CUDA unless HYBRIDCORE_FLEX_ATTENTION=0); 0: one document per row")
    parser.add_argument("--peers", nargs="?", const="all", choices=["all", "kernels"], default=None,
                        help="also measure transformers' Falcon-H1: both paths, or (kernels) only with the "
                             "mamba_ssm kernels, where its PyTorch path would take minutes a step")
    parser.add_argument("--peer-fallback-batch", type=int, default=1,
                        help="batch size to retry a peer at when it runs out of memory (0: no retry)")
    parser.add_argument("--wait-for-file", default=None,
                        help="before the kernel peer, wait (up to 7 min) for this file, e.g. a build's marker")
    parser.add_argument("--profile", action="store_true", help="print and save each contender's time per kernel")
    parser.add_argument("--check", action="store_true", help="compare fused and reference at real shapes")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (debug preset) for tests")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON result")
    parser.add_argument("--tag", default="", help="added to the result's file name")


# ---- measuring ----------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clean(device):
    gc.collect()
    if device.type == "cuda":
        # CUDA-graph trees keep their memory pool after the model is gone: without this reset, a peer
        # measured after our reduce-overhead run has less memory (and a fragmented allocator)
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        torch._dynamo.reset()
        reset_cudagraph_trees()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def matmul_ceiling_tflops(device, n=8192, repeats=10) -> float:
    """bf16 n^3 matmul TFLOP/s (median of several), the MFU denominator; random data, not zeros."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for i in range(repeats + 3):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    del a, b
    return 2 * n ** 3 / statistics.median(times) / 1e12


def time_steps(step, warmup: int, steps: int, device) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def kernel_times(step, repeats: int = 20, before_each=None, top: int = 12) -> dict:
    """Mean GPU time per call of `step` spent in each kernel, in ms, largest first (torch.profiler);
    prints the `top` largest."""
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            if before_each is not None:
                before_each()
            step()
        torch.cuda.synchronize()
    times = {}
    for event in prof.key_averages():
        total = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        if total > 0:
            times[event.key[:80]] = total / repeats / 1e3  # microseconds -> ms per step
    times = dict(sorted(times.items(), key=lambda kv: -kv[1]))
    print(f"    {sum(times.values()):7.3f} ms  in all kernels")
    for key, ms in list(times.items())[:top]:
        print(f"    {ms:7.3f} ms  {key}")
    return times


def measure(name: str, build, tokens: int, args, device) -> dict:
    """Build a step (model + optimizer), run it, return tokens/s, step time and peak memory."""
    _clean(device)
    result = {"name": name, "status": "ok", "tok_s": None, "step_ms": None, "peak_gib": None}
    try:
        step, info = build()
        result.update(info)
        times = time_steps(step, args.warmup, args.steps, device)
        median = statistics.median(times)
        result.update(tok_s=tokens / median, step_ms=1e3 * median, step_ms_all=[round(1e3 * t, 2) for t in times])
        if device.type == "cuda":
            result["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
            if getattr(args, "profile", False):
                try:
                    result["kernel_ms"] = kernel_times(step, repeats=3, top=25)
                except Exception as error:  # the timing above stands without the profile
                    result["kernel_ms"] = f"profiler failed: {type(error).__name__}: {error}"
    except torch.OutOfMemoryError:
        result["status"] = "oom"
    except Exception as error:  # a peer that cannot run here: say why, keep going
        message = str(error)  # a Triton compile error gives the source first and the reason last
        if len(message) > 800:
            message = f"{message[:300]} [...] {message[-500:]}"
        result["status"] = f"error: {type(error).__name__}: {message}"
        traceback.print_exc()
    step = info = None
    _clean(device)
    print(f"  {name:22s} {result['status']:6s} tok/s={_fmt(result['tok_s'])} step_ms={_fmt(result['step_ms'])} "
          f"peak_gib={_fmt(result['peak_gib'])}", flush=True)
    return result


def _fmt(value):
    return "-" if value is None else f"{value:,.1f}"


# ---- the three contenders -----------------------------------------------------------------------------
def _autocast(device, precision):
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


SDPA_BACKENDS = {"auto": None, "cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def _sdpa_backend(name: str):
    """A context that allows only the named SDPA backend ("auto": PyTorch's own choice)."""
    if SDPA_BACKENDS[name] is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])])


def document_ids(rows: int, length: int, mean_length: int, seed: int = 0) -> torch.Tensor:
    """[rows, length] document ids for packed rows: runs of uniform random length in
    [mean_length / 2, 3 * mean_length / 2], each row starting a new document (as the packed loader's rows
    do), reproducible from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    low, high = max(1, mean_length // 2), max(1, mean_length // 2) + mean_length
    ids = torch.empty(rows, length, dtype=torch.long)
    for row in range(rows):
        start, document = 0, 0
        while start < length:
            size = int(torch.randint(low, high + 1, (1,), generator=generator))
            ids[row, start:start + size] = document
            start, document = start + size, document + 1
    return ids


def _optimizer(params, device):
    return torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")


def build_ours(config, ids, args, device, compiled=False, mode="default"):
    from . import ops
    from .model import build_model
    from .train.model_setup import apply_activation_checkpointing, compile_layers

    def build():
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        model = build_model(config, device=device, dtype=dtype, seed=0)
        model.train()
        if args.activation_checkpointing:
            apply_activation_checkpointing(model, args.checkpoint_layers)
        if compiled:
            compile_layers(model, mode)
        optimizer = _optimizer(model.parameters(), device)
        inputs, labels = ids[:, :-1], ids[:, 1:]
        seq_idx = document_ids(*inputs.shape, args.documents).to(inputs.device) if args.documents else None
        kernel_mode = "off" if args.no_kernels else "auto"
        graphs = compiled and mode == "reduce-overhead"

        def step():
            if graphs:  # a new iteration: earlier steps' graph outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            with _sdpa_backend(args.sdpa_backend):  # backward too: checkpointed layers recompute there
                with ops.use_kernels(kernel_mode), _autocast(device, args.precision):
                    hidden = model.hidden_states(inputs, seq_idx=seq_idx)
                    if args.loss == "chunked":
                        loss = ops.chunked_cross_entropy(hidden, model.lm_head.weight, labels,
                                                         config.lm_head_multiplier, chunk_size=8192)
                    else:
                        loss = F.cross_entropy(model.logits(hidden).float().flatten(0, 1), labels.flatten())
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        with ops.use_kernels(kernel_mode):
            kernels = ops.kernels_active(ids.new_empty(0, dtype=torch.float32))
        return step, {"kernels": kernels, "compiled": compiled, "compile_mode": mode if compiled else None,
                      "loss": args.loss, "sdpa_backend": args.sdpa_backend, "documents": args.documents}
    return build


def hf_module(kernels: bool):
    """A fresh import of transformers' Falcon-H1 modeling, with the peer kernel packages visible or hidden
    (transformers picks its implementation at import time, so each path gets its own module object)."""
    sys.modules.pop(HF_MODULE, None)
    hidden = {}
    if not kernels:
        for name in PEER_PACKAGES:
            hidden[name] = sys.modules.get(name)
            sys.modules[name] = None  # makes `import name` fail
    try:
        module = importlib.import_module(HF_MODULE)
    finally:
        for name, previous in hidden.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
        sys.modules.pop(HF_MODULE, None)
    return module


def peer_kernels_available() -> dict:
    found = {}
    for name, probe in (("mamba_ssm", "mamba_ssm.ops.triton.ssd_combined"), ("causal_conv1d", "causal_conv1d_cuda")):
        try:
            importlib.import_module(probe)
            found[name] = True
        except Exception:
            found[name] = False
    return found


def build_hf(config, ids, args, device, kernels: bool, batch_size=None):
    def build():
        from transformers import FalconH1Config

        from .bridge.config_map import hf_config_from_model

        fields = {k: v for k, v in hf_config_from_model(config).items() if k not in ("architectures", "model_type")}
        hf_config = FalconH1Config(**fields, attn_implementation="sdpa")
        module = hf_module(kernels)
        if kernels and not peer_kernels_available()["causal_conv1d"]:
            # transformers' training path needs both packages; with mamba_ssm alone, use its SSD
            # kernel inside the unfused path (conv in PyTorch)
            module.mamba2_split_conv1d_scan_combined = lambda *a, **k: None
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        with torch.device(device):
            model = module.FalconH1ForCausalLM(hf_config)
        model.to(dtype).train()
        if args.activation_checkpointing:  # the newer name where it exists (the older warns from 5.2x)
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = _optimizer(model.parameters(), device)
        inputs = ids[:batch_size, :-1] if batch_size else ids[:, :-1]

        def step():
            with _autocast(device, args.precision):
                loss = model(input_ids=inputs, labels=inputs).loss  # transformers shifts the labels
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss
        return step, {"batch_size": inputs.shape[0]}
    return build


# ---- the run -------------------------------------------------------------------------------------------
def versions() -> dict:
    found = {"torch": torch.__version__, "python": sys.version.split()[0]}
    for name in ("triton", "transformers", "mamba_ssm", "causal_conv1d"):
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception:
            found[name] = None
    return found


def run(args) -> int:
    from .config import apply_overrides
    from .flops import flops_per_token
    from .train.files import write_json_atomic
    from .model.flex_document import ENABLED as flex_enabled
    from .presets import get_preset

    if args.smoke:
        args.preset, args.batch_size, args.seq_len = "debug", 2, 64
        args.steps, args.warmup, args.precision = 1, 1, "fp32"  # bf16 is slow on CPUs
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    for name, value in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len), ("--steps", args.steps)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if args.documents < 0:
        raise ValueError(f"--documents must be >= 0 (0: one document per row), got {args.documents}")
    if args.compiled_only and not args.compile:
        raise ValueError("--compiled-only needs --compile")
    if args.checkpoint_layers is not None and not args.activation_checkpointing:
        raise ValueError("--checkpoint-layers needs --activation-checkpointing")
    if args.checkpoint_layers is not None and args.peers:
        raise ValueError("--checkpoint-layers with --peers: transformers checkpoints every layer, so the ratio "
                         "would compare less recomputation with more; measure the peers without it")
    if args.documents and args.peers:
        raise ValueError("--documents with --peers: transformers' Falcon-H1 takes no document ids here, so the "
                         "ratio would compare packed rows with plain ones; measure the peers without --documents")
    config = apply_overrides(get_preset(args.preset), args.overrides)
    tokens = args.batch_size * args.seq_len
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"hybridcore bench: {args.preset} {args.batch_size}x{args.seq_len} {args.precision} on {gpu}", flush=True)

    result = {
        "gpu": gpu, "preset": args.preset, "overrides": args.overrides, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "precision": {"amp": "bf16 autocast, fp32 master weights", "bf16": "pure bf16",
                      "fp32": "fp32"}[args.precision],
        "step": "forward + loss + backward + AdamW",
        "activation_checkpointing": args.activation_checkpointing,
        "checkpoint_layers": args.checkpoint_layers,  # None: every layer (with activation_checkpointing)
        "documents": args.documents,
        "flex_attention": flex_enabled,  # packed documents in compiled CUDA layers (HYBRIDCORE_FLEX_ATTENTION)
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "hybridcore bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
    }
    if args.check:
        from .bench_check import check

        result["check"] = check(config, args.batch_size, args.seq_len, device)

    flops = flops_per_token(config, args.seq_len).total
    ceiling = matmul_ceiling_tflops(device, n=8192 if device.type == "cuda" else 256)
    result.update(flops_per_token=flops, matmul_tflops=ceiling)
    print(f"  bf16 matmul ceiling {ceiling:.0f} TFLOP/s; model {flops / 1e9:.2f} GFLOP/token", flush=True)

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = f"-{args.tag}" if args.tag else ""
    path = os.path.join(args.out, f"bench-{args.preset}-{args.batch_size}x{args.seq_len}{tag}-{stamp}.json")
    runs = {}

    def record(name, run_result):
        """Keep one contender's result and rewrite the JSON: a run cut short keeps what it measured."""
        runs[name] = run_result
        summarize(result, runs, flops, ceiling)
        write_json_atomic(path, result, indent=1, default=str)

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), generator=generator).to(device)
    if not args.compiled_only:
        record("ours", measure("ours", build_ours(config, ids, args, device), tokens, args, device))
    for mode in args.compile_modes if args.compile else []:
        name = "ours_compiled" if mode == "default" else f"ours_compiled_{mode}"
        record(name, measure(name, build_ours(config, ids, args, device, compiled=True, mode=mode), tokens, args,
                             device))
    if args.peers:
        for name, kernels in (("hf_torch", False), ("hf_kernels", True)):
            if not kernels and args.peers == "kernels":
                continue
            if kernels:
                _wait_for(args.wait_for_file)
                result["peer_packages"] = peer_kernels_available()
                if not result["peer_packages"]["mamba_ssm"]:
                    record(name, {"name": name, "status": "unavailable", "tok_s": None, "peak_gib": None})
                    continue
            record(name, measure(name, build_hf(config, ids, args, device, kernels), tokens, args, device))
            fallback = args.peer_fallback_batch
            if runs[name]["status"] == "oom" and 0 < fallback < args.batch_size:
                record(f"{name}_b{fallback}", measure(f"{name}_b{fallback}",
                                                      build_hf(config, ids, args, device, kernels, fallback),
                                                      fallback * args.seq_len, args, device))

    result["complete"] = True
    write_json_atomic(path, result, indent=1, default=str)
    print(f"  ours ({result['ours_variant']}): {_fmt(result['tok_s'])} tok/s, MFU {_pct(result['mfu'])}, "
          f"peak {_fmt(result['peak_gib'])} GiB; vs hf_kernels x{_fmt(result.get('speedup_vs_hf_kernels'))}, "
          f"vs hf_torch x{_fmt(result.get('speedup_vs_hf_torch'))}")
    print(f"  wrote {path}")
    return 0


def summarize(result: dict, runs: dict, flops: float, ceiling: float) -> None:
    """Fill `result` from the contenders measured so far: MFU, our best variant, ratios to the peers."""
    for r in runs.values():
        if r.get("tok_s"):
            r["model_tflops"] = r["tok_s"] * flops / 1e12
            r["mfu"] = r["model_tflops"] * 1e12 / (ceiling * 1e12)
    ours = [r for name, r in runs.items() if name.startswith("ours")]  # no eager "ours" with --compiled-only
    best = max((r for r in ours if r.get("tok_s")), key=lambda r: r["tok_s"], default=ours[0] if ours else {})
    result.update(ours_variant=best.get("name"), tok_s=best.get("tok_s"), mfu=best.get("mfu"),
                  model_tflops=best.get("model_tflops"), peak_gib=best.get("peak_gib"))
    for peer in ("hf_kernels", "hf_torch"):
        r = runs.get(peer, {})
        result[f"{peer}_tok_s"] = r.get("tok_s")
        result[f"{peer}_peak_gib"] = r.get("peak_gib")
        result[f"{peer}_status"] = r.get("status", "not run")
        result.pop(f"speedup_vs_{peer}", None)
        if r.get("tok_s") and best.get("tok_s"):
            result[f"speedup_vs_{peer}"] = best["tok_s"] / r["tok_s"]
    result["runs"] = runs
    result["complete"] = False  # until every contender asked for has run
    result["versions"] = versions()  # after each run: a peer package built meanwhile is seen too


def _wait_for(path, limit_s=420):
    start = time.time()
    while path and not os.path.exists(path) and time.time() - start < limit_s:
        time.sleep(5)


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"
