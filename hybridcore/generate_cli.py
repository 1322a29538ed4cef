"""`hybridcore generate`: continue a prompt with a Hugging Face Falcon-H1 directory or a training
checkpoint, printing the text as the tokens arrive."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", metavar="HF_DIR",
                        help="a Hugging Face model directory (with tokenizer.json) or Hub id ORG/NAME")
    source.add_argument("--checkpoint", metavar="CKPT",
                        help="a training checkpoint or run directory, or a model directory from import-hf")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=128,
                        help="tokens to generate at most; the prompt plus these fit in the model's max_seq_len")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                        help="replay the decode step as a CUDA graph: the default on --device cuda (eager "
                        "decoding is bound by kernel launches); --no-cuda-graph decodes eagerly")
    parser.add_argument("--tokenizer", default=None,
                        help="override the tokenizer: 'byte', a tokenizer.json or a prepared data directory")


def run(args) -> int:
    import torch

    from .generation import stream_generate

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if args.cuda_graph and device != "cuda":
        raise ValueError(f"--cuda-graph needs --device cuda (the device is {device})")
    model, tokenizer, eos_id = load_model_and_tokenizer(args, device)
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise ValueError("--prompt: the text encodes to no tokens")
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    tokens = stream_generate(model, input_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, eos_token_id=eos_id, generator=generator,
                             capture_cuda_graph=args.cuda_graph)
    print_stream(args.prompt, prompt_ids, tokens, tokenizer, eos_id)
    return 0


def print_stream(prompt: str, prompt_ids: list[int], tokens, tokenizer, eos_id: int | None, out=None) -> None:
    """Write the prompt, then the continuation as it grows. Prompt and continuation are decoded
    together (so the tokenizer places the spaces between them) and only the new tail is printed,
    held back while it ends inside a multi-byte character."""
    out = out or sys.stdout
    out.write(prompt)
    out.flush()
    new_ids, shown = [], ""
    for step in tokens:
        token = int(step[0])
        if token == eos_id:
            break
        new_ids.append(token)
        text = continuation_text(tokenizer, prompt_ids, new_ids)
        if text.endswith("\ufffd") or not text.startswith(shown):
            continue
        out.write(text[len(shown):])
        out.flush()
        shown = text
    text = continuation_text(tokenizer, prompt_ids, new_ids)
    out.write((text[len(shown):] if text.startswith(shown) else "") + "\n")
    out.flush()


def continuation_text(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    prompt_text, whole = tokenizer.decode(prompt_ids), tokenizer.decode(prompt_ids + new_ids)
    return whole[len(prompt_text):] if whole.startswith(prompt_text) else tokenizer.decode(new_ids)


def load_model_and_tokenizer(args, device):
    """(model, tokenizer with encode/decode, eos id or None) from --hf or --checkpoint."""
    import torch

    from .io.load import load_model, open_source

    if args.hf:
        source = open_source(args.hf, weights=True)  # a directory, or a Hub id through the cache
        model = load_model(source.path, device=device)
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else HubTokenizer.from_dir(source.path)
    else:
        source = open_source(args.checkpoint)
        if source.kind == "model_dir" and not args.tokenizer:  # from `hybridcore import-hf`: no tokenizer
            raise ValueError(f"--checkpoint {args.checkpoint} is a model directory without a tokenizer; "
                             "name one with --tokenizer (the HF directory's tokenizer.json, or 'byte')")
        model = load_model(source.checkpoint or source.path, device=device, dtype=torch.float32)
        tokenizer = load_tokenizer(args.tokenizer or run_data_dir(args.checkpoint))
    eos_id = model.config.eos_token_id
    if eos_id is None:
        eos_id = getattr(tokenizer, "eos_id", None)
    return model, tokenizer, eos_id


def load_tokenizer(spec):
    try:
        from .data.tokenizers import load_tokenizer as load
    except ImportError as error:
        raise ValueError(f"--tokenizer: this build cannot load tokenizers ({error})") from None
    return load(spec)


def run_data_dir(checkpoint: str) -> Path:
    """The prepared data directory (meta.json + tokenizer) the checkpoint's run trained on."""
    from .train.checkpoint import read_checkpoint_config, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    train = read_checkpoint_config(path).get("train", {})
    candidates = [Path(train["data"])] if train.get("data") else []
    candidates += [path.parent.parent / "data"]  # RUN_DIR/checkpoints/step_N -> RUN_DIR/data
    if train.get("out"):
        candidates.append(Path(train["out"]) / "data")
    for directory in candidates:
        if (directory / "meta.json").is_file():
            return directory
    raise ValueError(f"--checkpoint: cannot find the run's tokenizer (looked for meta.json in "
                     f"{', '.join(str(c) for c in candidates)}); name one with --tokenizer")


class HubTokenizer:
    """tokenizer.json of a Hugging Face directory, through the `tokenizers` library."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_dir(cls, directory: str) -> "HubTokenizer":
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ValueError("--hf: reading tokenizer.json needs the `tokenizers` package "
                             "(pip install tokenizers)") from None
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"--hf: {directory} has no tokenizer.json; name a tokenizer with --tokenizer")
        return cls(Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids  # with the tokenizer's own special tokens (e.g. BOS)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
