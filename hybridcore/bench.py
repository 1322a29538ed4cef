"""`hybridcore bench`: the training-step throughput of one contender on one GPU, alone in this process.

A contender is one implementation of the same model, measured on the same config, token batch, shapes,
precision, warm-up and timing (`--contender`):
  ours        HybridLM (Triton kernels on CUDA) as `train` runs it: on CUDA each layer torch.compile'd
              with CUDA graphs by default (train.config.fast_defaults), eager with --no-compile
  hf_torch    transformers' FalconH1ForCausalLM on its pure-PyTorch path
  hf_kernels  the same with mamba_ssm's Triton SSD and causal_conv1d's CUDA conv ("unavailable" when
              either does not import)
One invocation measures one contender, so none inherits another's compile caches, CUDA-graph pools or
allocator state; benchmarks/run.sh launches them one after another. A step is forward + loss + backward
+ AdamW step. Precision "amp": fp32 master weights under bf16 autocast (default); "bf16": weights, grads
and optimizer state in bf16; "fp32" (the CPU smoke run). After --warmup untimed steps, --repeats windows
of --steps timed steps each; a window's figure is its median step; the result is the median of the
windows, with their range. MFU is model FLOP/s (`hybridcore.flops`) over the datasheet dense bf16 peak
(--peak-tflops, 989 for H100/H200); the bf16 matmul throughput measured after the contender is recorded
beside it as "% of measured". A contender that runs out of memory is recorded with status "oom".
`--check` compares the fused kernels with the reference at the real shapes. `--smoke` runs tiny on CPU.
Result: one JSON file per figure and contender under --out, rewritten after every window.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import statistics
import sys
import time
import traceback

import torch

from .bench_record import environment, kernel_times, matmul_tflops, median_and_spread, synchronize, versions
from .train.config import CHECKPOINT_POLICIES, FP8_RECIPES, TrainConfig, fast_defaults

HF_MODULE = "transformers.models.falcon_h1.modeling_falcon_h1"
PEER_PACKAGES = ("mamba_ssm", "causal_conv1d")
CONTENDERS = {
    "ours": "hybridcore",
    "hf_torch": "transformers, PyTorch path",
    "hf_kernels": "transformers + mamba_ssm + causal_conv1d",
}
PRECISIONS = {"amp": "bf16 autocast, fp32 master weights", "bf16": "pure bf16", "fp32": "fp32"}
COMPILE_MODES = ["default", "reduce-overhead", "max-autotune-no-cudagraphs"]
__all__ = ["add_arguments", "run", "build_ours", "build_hf", "kernel_times", "versions", "CONTENDERS"]


def add_arguments(parser) -> None:
    parser.add_argument("--contender", choices=list(CONTENDERS), default="ours",
                        help="what to measure in this process: ours, transformers' PyTorch path (hf_torch) or "
                             "transformers with the mamba_ssm and causal_conv1d kernels (hf_kernels)")
    parser.add_argument("--preset", default="falcon-h1-0.5b")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset field, e.g. --set layout=P-P-P-P- for a few 7B layers")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile and autotune here)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per window (its median step counts)")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows (the median is reported, and the range)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="amp")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the GPU's datasheet dense bf16 TFLOP/s, MFU's denominator (989: H100 and H200 SXM)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="ours: each layer torch.compile'd (default: on with CUDA, off on CPU, as `train`)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                        help="ours: torch.compile mode, implies --compile (reduce-overhead adds CUDA graphs; the "
                        "default, as `train`: reduce-overhead on CUDA without --activation-checkpointing or --fp8)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute each layer in backward, ours and the peers alike (long sequences)")
    parser.add_argument("--checkpoint-layers", type=int, default=None, metavar="N",
                        help="ours, with --activation-checkpointing: recompute only the first N layers")
    parser.add_argument("--checkpoint-policy", choices=CHECKPOINT_POLICIES, default="full",
                        help="ours, with --activation-checkpointing: full recomputes each layer's forward; "
                        "selective keeps its matrix products', attention's and collectives' outputs")
    parser.add_argument("--compile-cache-dir", default=None, metavar="DIR",
                        help="with --compile, where Inductor's and Triton's caches persist (as `train`)")
    parser.add_argument("--fp8", choices=FP8_RECIPES, default=None,
                        help="ours with float8 matmuls through torchao (as `train --fp8`)")
    parser.add_argument("--fp8-min-size", type=int, default=TrainConfig.fp8_min_size, metavar="N",
                        help="with --fp8, linears with a weight dimension below N stay in bf16")
    parser.add_argument("--loss", choices=["chunked", "plain"], default="chunked",
                        help="ours: chunked linear + cross-entropy, or full logits")
    parser.add_argument("--no-kernels", action="store_true", help="ours on the PyTorch reference ops")
    parser.add_argument("--sdpa-backend", choices=sorted(SDPA_BACKENDS), default="auto",
                        help="ours: restrict attention to one scaled_dot_product_attention backend; one that "
                             "cannot run the shape makes the run an error")
    parser.add_argument("--documents", type=int, default=0, metavar="N",
                        help="ours: pack each row with documents of about N tokens (per-document attention and "
                             "SSM resets, as `hybridcore train` does; FlexAttention in compiled layers on CUDA "
                             "unless HYBRIDCORE_FLEX_ATTENTION=0); 0: one document per row")
    parser.add_argument("--profile", action="store_true", help="also record the time per kernel (CUDA)")
    parser.add_argument("--check", action="store_true",
                        help="ours: after timing, compare fused kernels and reference at these shapes")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (debug preset) for tests")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON result")
    parser.add_argument("--tag", default="", help="added to the figure's name (and so to the file's)")


# flags that change how ours runs; the peers run as transformers ships them: (flag, attribute, its default)
OURS_ONLY = [("--compile", "compile", None), ("--compile-mode", "compile_mode", None),
             ("--checkpoint-layers", "checkpoint_layers", None), ("--checkpoint-policy", "checkpoint_policy", "full"),
             ("--loss", "loss", "chunked"),
             ("--no-kernels", "no_kernels", False), ("--sdpa-backend", "sdpa_backend", "auto"),
             ("--documents", "documents", 0), ("--check", "check", False)]


def check_arguments(args) -> None:
    for name in ("batch_size", "seq_len", "steps", "repeats"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if not args.peak_tflops > 0:
        raise ValueError(f"--peak-tflops must be positive (the GPU's datasheet dense bf16 TFLOP/s), "
                         f"got {args.peak_tflops}")
    if args.documents < 0:
        raise ValueError(f"--documents must be >= 0 (0: one document per row), got {args.documents}")
    if args.compile_mode not in (None, "default") and args.compile is False:
        raise ValueError(f"--compile-mode {args.compile_mode} compiles: it cannot go with --no-compile")
    if args.checkpoint_layers is not None and not args.activation_checkpointing:
        raise ValueError("--checkpoint-layers needs --activation-checkpointing")
    if args.checkpoint_policy != "full" and not args.activation_checkpointing:
        raise ValueError(f"--checkpoint-policy {args.checkpoint_policy} needs --activation-checkpointing")
    if args.contender != "ours":
        for flag, attribute, default in OURS_ONLY:
            if getattr(args, attribute) != default:
                raise ValueError(f"{flag} applies to --contender ours only (transformers is measured as it "
                                 f"ships, checkpointing every layer and taking no document ids); drop it for "
                                 f"--contender {args.contender}")


# ---- measuring ----------------------------------------------------------------------------------------
def _clean(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def time_steps(step, steps: int, device) -> list[float]:
    """Wall time of each of `steps` calls of `step`, each ended by a synchronize."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def measure(build, tokens: int, args, device, after_window, say=lambda message: None) -> dict:
    """Build the contender's step, warm it up, time --repeats windows (calling `after_window(result)` after
    each, so a run cut short keeps what it measured), and record peak memory. `say` hears of each phase
    (compiling can take minutes before the first window)."""
    _clean(device)
    result = {"status": "incomplete", "windows_step_ms": []}
    try:
        step, info = build()
        result.update(info)
        started = time.perf_counter()
        say(f"warming up: {args.warmup} untimed step(s) (compiling and autotuning happen here)")
        for _ in range(args.warmup):
            step()
        synchronize(device)
        say(f"warm after {time.perf_counter() - started:.1f} s; timing {args.repeats} window(s) of "
            f"{args.steps} step(s)")
        for window in range(args.repeats):
            times = time_steps(step, args.steps, device)
            result["windows_step_ms"].append([round(1e3 * t, 3) for t in times])
            say(f"window {window + 1}/{args.repeats}: {tokens / statistics.median(times):,.0f} tok/s")
            summarize_windows(result, tokens)
            if device.type == "cuda":
                result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            after_window(result)
        result["status"] = "ok"
        if args.profile and device.type == "cuda":
            try:
                result["kernel_ms"] = kernel_times(step, repeats=3, top=25)
            except Exception as error:  # the timing above stands without the profile
                result["kernel_ms"] = f"profiler failed: {type(error).__name__}: {error}"
    except torch.OutOfMemoryError:
        result["status"] = "oom"
    except Exception as error:  # a contender that cannot run here: say why
        message = str(error)  # a Triton compile error gives the source first and the reason last
        if len(message) > 800:
            message = f"{message[:300]} [...] {message[-500:]}"
        result["status"] = f"error: {type(error).__name__}: {message}"
        traceback.print_exc()
    step = info = None
    _clean(device)
    return result


def summarize_windows(result: dict, tokens: int) -> None:
    """tokens/s of each window from its median step; the figure is the median window, with the range."""
    per_window = [tokens / (statistics.median(window) / 1e3) for window in result["windows_step_ms"]]
    summary = median_and_spread(per_window)
    result.update(tokens_per_s=summary["median"], tokens_per_s_spread=summary["spread"],
                  tokens_per_s_windows=per_window, step_ms=1e3 * tokens / summary["median"])


def _fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


# ---- the contenders -----------------------------------------------------------------------------------
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
    """Our step is the trainer's: the model through `parallelize` (one process) and `train_step`."""
    from . import ops
    from .model import build_model
    from .parallel import parallelize
    from .train.step import Batch, build_optimizers, train_step

    def build():
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        model = parallelize(build_model(config, device=device, dtype=dtype, seed=0),
                            activation_checkpointing=args.activation_checkpointing,
                            checkpoint_layers=args.checkpoint_layers, checkpoint_policy=args.checkpoint_policy,
                            compile=compiled, compile_mode=mode,
                            compile_cache_dir=args.compile_cache_dir, float8=args.fp8,
                            float8_min_size=args.fp8_min_size)
        model.train()
        optimizers = build_optimizers(model, lr=1e-4, weight_decay=0.1)
        seq_idx = None
        if args.documents:  # ids hold one more column than the rows train on: its document is the last one's
            seq_idx = document_ids(ids.shape[0], ids.shape[1] - 1, args.documents)  # on the host, as a loader's
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:]], dim=1)
        batch = Batch.from_tokens(ids, seq_idx)
        kernel_mode = "off" if args.no_kernels else "auto"
        loss_chunk = 8192 if args.loss == "chunked" else ids.numel()  # "plain": one chunk, the logits whole
        autocast_dtype = torch.bfloat16 if args.precision == "amp" else None

        def step():
            with _sdpa_backend(args.sdpa_backend):  # backward too: checkpointed layers recompute there
                with ops.use_kernels(kernel_mode):
                    return train_step(model, optimizers, [batch], max_norm=1.0, autocast_dtype=autocast_dtype,
                                      loss_chunk=loss_chunk, cuda_graphs=compiled and mode == "reduce-overhead").loss

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


def peer_packages() -> dict:
    """Whether each kernel package imports here: True, or the error's text."""
    found = {}
    for name, probe in (("mamba_ssm", "mamba_ssm.ops.triton.ssd_combined"), ("causal_conv1d", "causal_conv1d_cuda")):
        try:
            importlib.import_module(probe)
            found[name] = True
        except Exception as error:
            found[name] = f"{type(error).__name__}: {error}"
    return found


def build_hf(config, ids, args, device, kernels: bool):
    def build():
        from transformers import FalconH1Config

        from .bridge.config_map import hf_config_from_model

        fields = {k: v for k, v in hf_config_from_model(config).items() if k not in ("architectures", "model_type")}
        hf_config = FalconH1Config(**fields, attn_implementation="sdpa")
        module = hf_module(kernels)
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
        inputs = ids[:, :-1]

        def step():
            with _autocast(device, args.precision):
                loss = model(input_ids=inputs, labels=inputs).loss  # transformers shifts the labels
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss
        return step, {}
    return build


# ---- the run -------------------------------------------------------------------------------------------
def figure_name(args) -> str:
    """The figure's name, and so its file's: a step measured another way than the default is another
    figure (one run's result never replaces another's)."""
    variants = [args.tag] if args.tag else []
    variants += [args.precision] if args.precision != "amp" and not args.smoke else []  # --smoke's CPU fp32
    variants += ["ac" + (f"{args.checkpoint_layers}" if args.checkpoint_layers else "")
                 + ("-selective" if args.checkpoint_policy == "selective" else "")] \
        if args.activation_checkpointing else []
    variants += {True: ["compiled"], False: ["eager"]}.get(args.compile, [])
    variants += [args.compile_mode] if args.compile_mode else []
    variants += [f"fp8-{args.fp8}"] if args.fp8 else []
    variants += ["loss-plain"] if args.loss != "chunked" else []
    variants += ["reference-ops"] if args.no_kernels else []
    variants += [f"sdpa-{args.sdpa_backend}"] if args.sdpa_backend != "auto" else []
    return f"train_step-{args.preset}-{args.batch_size}x{args.seq_len}" + "".join(f"-{v}" for v in variants)


def run(args) -> int:
    from .config import apply_overrides
    from .flops import flops_per_token, mfu
    from .model.flex_document import ENABLED as flex_enabled
    from .presets import get_preset
    from .train.files import write_json_atomic

    if args.smoke:
        args.preset, args.batch_size, args.seq_len = "debug", 2, 64
        args.warmup, args.steps, args.repeats, args.precision = 1, 1, 2, "fp32"  # bf16 is slow on CPUs
    check_arguments(args)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.check and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("--check compares the Triton kernels with their twins, which needs CUDA (or "
                         "TRITON_INTERPRET=1, slowly, on CPU); leave --check out here")
    config = apply_overrides(get_preset(args.preset), args.overrides)
    tokens = args.batch_size * args.seq_len
    flops = flops_per_token(config, args.seq_len).total
    record = {
        "figure": figure_name(args), "kind": "train_step", "contender": args.contender,
        "contender_name": CONTENDERS[args.contender],
        "preset": args.preset, "overrides": args.overrides, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "precision": PRECISIONS[args.precision], "step": "forward + loss + backward + AdamW",
        "warmup_steps": args.warmup, "steps_per_window": args.steps, "windows": args.repeats,
        "activation_checkpointing": args.activation_checkpointing,
        "checkpoint_layers": args.checkpoint_layers,  # None: every layer (with activation_checkpointing)
        "checkpoint_policy": args.checkpoint_policy if args.activation_checkpointing else None,
        "documents": args.documents,
        "flex_attention": flex_enabled,  # packed documents in compiled CUDA layers (HYBRIDCORE_FLEX_ATTENTION)
        "flops_per_token": flops, "num_gpus": 1, "peak_tflops": args.peak_tflops,
        **environment(device), "process_id": os.getpid(),  # one contender per process: a new id each
        "command": "hybridcore bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
    }
    print(f"hybridcore bench: {CONTENDERS[args.contender]}, {args.preset} {args.batch_size}x{args.seq_len} "
          f"{args.precision} on {record['gpu']}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    # a step on packed documents is filed apart from the plain step's
    variant = "-documents" if args.documents else ""
    path = os.path.join(args.out, f"{record['figure']}-{args.contender}{variant}.json")

    def save(result):
        record.update(result)
        if result.get("tokens_per_s"):
            record["model_tflops"] = result["tokens_per_s"] * flops / 1e12
            record["mfu"] = mfu(result["tokens_per_s"], flops, 1, args.peak_tflops * 1e12)
        write_json_atomic(path, record, indent=1, default=str)

    save({"status": "incomplete"})  # a process killed before its first window leaves this
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), generator=generator).to(device)
    if args.contender == "ours":
        compiled, mode = fast_defaults(args.compile, args.compile_mode, device.type, 1, args.activation_checkpointing,
                                       args.fp8)
        build = build_ours(config, ids, args, device, compiled=compiled, mode=mode)
    else:
        kernels = args.contender == "hf_kernels"
        if kernels:
            record["peer_packages"] = peer_packages()
            missing = {name: why for name, why in record["peer_packages"].items() if why is not True}
            if missing:
                save({"status": "unavailable", "reason": "; ".join(f"{k} does not import ({v})"
                                                                     for k, v in missing.items())})
                print(f"  {args.contender}: unavailable: {record['reason']}\n  wrote {path}")
                return 0
        build = build_hf(config, ids, args, device, kernels)
    result = measure(build, tokens, args, device, after_window=save,
                     say=lambda message: print(f"  {message}", flush=True))
    if args.check and result["status"] == "ok":
        from .bench_check import check

        result["check"] = check(config, args.batch_size, args.seq_len, device)
    ceiling = matmul_tflops(device, n=8192 if device.type == "cuda" else 256)  # after: the contender ran first
    result["matmul_tflops_measured"] = ceiling
    if result.get("tokens_per_s"):
        result["pct_of_measured"] = result["tokens_per_s"] * flops / 1e12 / ceiling
    record["versions"] = versions()  # after the run: what the contender imported is loaded now
    save(result)
    print_summary(record, path)
    return 1 if record["status"].startswith("error") else 0


def print_summary(record: dict, path: str) -> None:
    if record.get("tokens_per_s"):
        low, high = record["tokens_per_s_spread"]
        print(f"  {record['contender']}: {_fmt(record['tokens_per_s'])} tok/s (median of {record['windows']} "
              f"windows, range {_fmt(low)}-{_fmt(high)}), MFU {100 * record['mfu']:.1f}% of "
              f"{record['peak_tflops']:.0f} TFLOP/s ({100 * record['pct_of_measured']:.1f}% of the measured "
              f"{record['matmul_tflops_measured']:.4g} TFLOP/s matmul), "
              f"peak {_fmt(record.get('peak_memory_gib'), 1)} GiB")
    else:
        print(f"  {record['contender']}: {record['status']}")
    print(f"  wrote {path}")
