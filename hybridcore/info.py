"""`hybridcore info PRESET|DIR|ORG/NAME [--json]`: layout, layer counts, parameters, FLOPs, memory. DIR is anything
hybridcore.io.load opens: a Hugging Face directory of a supported family, a model directory, a training run
or checkpoint; ORG/NAME a Hub id (its config.json, from the cache first)."""

from __future__ import annotations

import os

import torch

from .config import ModelConfig, apply_overrides
from .flops import flops_per_token, head_flops, layer_flops, memory_estimate, pipeline_stages
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


def describe(config: ModelConfig, seq_len: int, pp: int = 1) -> dict:
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
        "config": config.to_dict(),
    }


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
    seq_len = args.seq_len or min(4096, config.max_seq_len)
    if seq_len <= 0:
        raise ValueError(f"--seq-len must be positive, got {seq_len}")
    if args.pp <= 0:
        raise ValueError(f"--pp must be positive, got {args.pp}")
    info = describe(config, seq_len, args.pp)
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
    print("\n".join(lines))
    return 0
