"""`hybridcore info PRESET|DIR|ORG/NAME [--json]`: layout, layer counts, parameters, FLOPs, memory. DIR is anything
hybridcore.io.load opens: a Hugging Face directory of a supported family, a model directory, a training run
or checkpoint; ORG/NAME a Hub id (its config.json, from the cache first)."""

from __future__ import annotations

import os

import torch

from .config import ModelConfig, apply_overrides
from .flops import flops_per_token, head_flops, layer_flops, memory_estimate, mixer_flops, pipeline_stages
from .layout import compact_layout, parse_layout
from .presets import get_preset, preset_names


def add_arguments(parser) -> None:
    parser.add_argument("model", help=f"a preset ({', '.join(preset_names())}), a Hugging Face model directory, "
                        "a hybridcore model directory, a training run or checkpoint, or a Hub id ORG/NAME (its "
                        "config.json, from the cache first)")
    parser.add_argument("--seq-len", type=int, default=None, help="sequence length for FLOPs per token "
                        "(default: 4096, or the model's limit if smaller)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model config field (repeatable)")
    parser.add_argument("--pp", type=int, default=1, help="show how the layers split into this many "
                        "pipeline stages (at '|' cuts, else balanced by FLOPs)")
    parser.add_argument("--tp", type=int, default=1, help="show each rank's forward FLOPs and weights under "
                        "tensor parallelism over this many ranks")
    parser.add_argument("--mixer-parallel", nargs="?", const="split", default=None, choices=("split", "interleaved"),
                        help="with --tp: the P layers' attention on one half of the tp ranks and Mamba-2 on the "
                        "other (interleaved: alternating by layer); shows each branch's share per rank")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def resolve_model_config(spec: str, overrides: list[str] = ()) -> ModelConfig:
    """A preset name, a model directory or run, or a Hub id, with `--set key=value` overrides applied."""
    from .bridge.hub import looks_like_hub_id

    if os.path.isdir(spec) or (spec not in preset_names() and looks_like_hub_id(spec)):
        from .io.load import open_source

        config = open_source(spec).config
    else:
        config = get_preset(spec)
    return apply_overrides(config, overrides)


def describe(config: ModelConfig, seq_len: int, pp: int = 1, tp: int = 1, mixer_parallel: str | None = None) -> dict:
    from .model import HybridLM

    with torch.device("meta"):
        model = HybridLM(config)
    params = model.num_parameters()
    embedding = config.vocab_size * config.d_model
    flops = flops_per_token(config, seq_len)
    return {
        "layout": config.layout,
        "layers": config.num_layers,
        "layer_counts": parse_layout(config.layout).counts(),
        "params": params,
        "params_non_embedding": params - embedding,
        "seq_len": seq_len,
        "train_flops_per_token": flops.as_dict(),
        "memory": memory_estimate(params),
        "pipeline_stages": [describe_stage(config, stage, seq_len) for stage in pipeline_stages(config, pp, seq_len)],
        "tensor_parallel": describe_tensor_parallel(config, model, seq_len, tp, mixer_parallel) if tp > 1 else None,
        "config": config.to_dict(),
    }


def describe_tensor_parallel(config: ModelConfig, model, seq_len: int, tp: int, mixer_parallel: str | None) -> dict:
    """Each tp rank's forward FLOPs per token and fp32 weight bytes in the layers (embedding and head
    aside), and, for the P layers, each branch's: the balance between the halves before a run."""
    from .parallel.mixer import branch_halves
    from .parallel.tensor_parallel import check_tensor_parallel
    from .train.config import naming_flags

    with naming_flags():  # --tp, as the user typed it
        check_tensor_parallel(config, tp, mixer_parallel)
    halves = branch_halves(config, mixer_parallel)
    mixers = mixer_flops(config, seq_len)
    ranks = [{"forward_flops_per_token": 0.0, "weights_bytes": 0} for _ in range(tp)]
    branches = {}
    for name, layer in model.layers.items():
        kind = config.layer_kinds[int(name)]
        parts = {"attention": mixers["attention"], "mamba": mixers["mamba"]} if kind == "P" else \
            {"layer": layer_flops(config, kind, seq_len)}
        for part, flops in parts.items():
            module = getattr(layer, part) if part != "layer" else layer
            weights = 4 * sum(p.numel() for p in module.parameters())
            half = halves.get(f"layers.{name}.{part}")
            holders = range(tp) if half is None else range(half * tp // 2, (half + 1) * tp // 2)
            for rank in holders:
                ranks[rank]["forward_flops_per_token"] += flops / len(holders)
                ranks[rank]["weights_bytes"] += weights // len(holders)
            if part != "layer" and part not in branches:
                branches[part] = {"forward_flops_per_token": flops, "weights_bytes": weights,
                                  "ranks_per_layer": len(holders)}
    return {"tp": tp, "mixer_parallel": mixer_parallel, "ranks": ranks, "p_layer_branches": branches}


def describe_stage(config: ModelConfig, stage: list[int], seq_len: int) -> dict:
    """A pipeline stage's layers and forward FLOPs, the LM head and loss counted on the last stage."""
    kinds = config.layer_kinds
    flops = sum(layer_flops(config, kinds[i], seq_len) for i in stage)
    if stage[-1] == len(kinds) - 1:
        flops += head_flops(config)
    return {"layers": [stage[0], stage[-1]], "layout": "".join(kinds[i] for i in stage),
            "forward_flops_per_token": flops}


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {suffix}{unit}"
    return f"{n:.0f} {unit}"


def _bytes(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def run(args) -> int:
    config = resolve_model_config(args.model, args.set)
    seq_len = args.seq_len if args.seq_len is not None else min(4096, config.max_seq_len)
    if seq_len <= 0:
        raise ValueError(f"--seq-len must be positive, got {seq_len}")
    if args.pp <= 0:
        raise ValueError(f"--pp must be positive, got {args.pp}")
    if args.tp <= 0:
        raise ValueError(f"--tp must be positive, got {args.tp}")
    if args.mixer_parallel is not None and (args.tp < 2 or args.tp % 2):
        raise ValueError(f"--mixer-parallel needs an even --tp of at least 2, got --tp {args.tp}")
    info = describe(config, seq_len, args.pp, args.tp, args.mixer_parallel)
    if args.json:
        from .io.json_codec import dumps

        print(dumps(info, indent=2))
        return 0
    counts = ", ".join(f"{n} {name}" for name, n in info["layer_counts"].items() if n)
    layout = compact_layout(config.layout)
    flops = info["train_flops_per_token"]
    lines = [
        f"model        {args.model}",
        f"layout       {layout}  ({info['layers']} sub-layers: {counts})",
        f"parameters   {info['params']:,} total, {info['params_non_embedding']:,} without the embedding",
        f"train FLOPs  {_human(flops['total'], 'FLOP')} per token at seq_len {seq_len} "
        f"(matmul {_human(flops['matmul'])}, attention {_human(flops['attention'])}, ssd {_human(flops['ssd'])})",
        "weights      " + ", ".join(f"{k} {_bytes(v)}" for k, v in info["memory"]["weights_bytes"].items()),
        "AdamW state  " + ", ".join(f"{k} {_bytes(v)}" for k, v in info["memory"]["training_bytes"].items())
        + " (weights + grads + moments, before activations)",
    ]
    if len(info["pipeline_stages"]) > 1:
        total = sum(s["forward_flops_per_token"] for s in info["pipeline_stages"])
        for rank, stage in enumerate(info["pipeline_stages"]):
            first, last = stage["layers"]
            lines.append(f"stage {rank:<6} layers {first}-{last} {compact_layout(stage['layout'])}, "
                         f"{100 * stage['forward_flops_per_token'] / total:.1f}% of the FLOPs")
    if info["tensor_parallel"] is not None:
        lines += _tensor_parallel_lines(info["tensor_parallel"])
    print("\n".join(lines))
    return 0


def _tensor_parallel_lines(tp: dict) -> list[str]:
    """Per-rank lines of `info --tp N [--mixer-parallel]` (the layers only: embedding and head aside)."""
    mode = f", mixer parallel ({tp['mixer_parallel']})" if tp["mixer_parallel"] else ""
    lines = [f"tensor par.  {tp['tp']} ranks{mode}; per rank, the layers' forward FLOPs per token and fp32 weights:"]
    for rank, cost in enumerate(tp["ranks"]):
        flops = _human(cost["forward_flops_per_token"], "FLOP")
        lines.append(f"  rank {rank:<6} {flops}, {_bytes(cost['weights_bytes'])}")
    for name, branch in tp["p_layer_branches"].items():
        ways = branch["ranks_per_layer"]
        lines.append(f"  P {name:<10} per layer {_human(branch['forward_flops_per_token'], 'FLOP')}, "
                     f"{_bytes(branch['weights_bytes'])}, over {ways} rank{'s' if ways > 1 else ''}: "
                     f"{_human(branch['forward_flops_per_token'] / ways, 'FLOP')} per rank")
    return lines
