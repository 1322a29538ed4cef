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
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature, a number >= 0; 0 = greedy (the default)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample among the K most likely tokens only (with --temperature > 0)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample among the most likely tokens whose probability reaches P, in (0, 1] "
                        "(with --temperature > 0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                        help="replay the decode step as a CUDA graph: the default on --device cuda (eager "
                        "decoding is bound by kernel launches); --no-cuda-graph decodes eagerly")
    parser.add_argument("--tokenizer", default=None,
                        help="override the tokenizer: 'byte', a tokenizer.json (or a directory holding one) or a "
                        "prepared data directory; default: the one that goes with the model")


def check_arguments(args) -> None:
    """The flags' own limits, named as flags, before any model is read."""
    from .generation.sampling import check_sampling_arguments

    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    check_sampling_arguments(args.temperature, args.top_k, args.top_p,
                             names={"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p"})
    for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p)):
        if value is not None and args.temperature == 0:
            raise ValueError(f"{flag} applies when sampling, and --temperature 0 is greedy: give --temperature "
                             f"above 0 (e.g. 0.8), or leave {flag} out")


def run(args) -> int:
    import torch

    from .generation import stream_generate

    check_arguments(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if args.cuda_graph and device != "cuda":
        raise ValueError(f"--cuda-graph needs --device cuda (the device is {device})")
    model, tokenizer, eos_id = load_model_and_tokenizer(args, device)
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise ValueError("--prompt: the text encodes to no tokens")
    limit = model.config.max_seq_len
    if len(prompt_ids) > limit:
        raise ValueError(f"--prompt: {len(prompt_ids)} tokens, more than the model's max_seq_len {limit}; "
                         f"shorten the prompt")
    if max(prompt_ids) >= model.config.vocab_size:
        raise ValueError(f"--prompt: token id {max(prompt_ids)} is outside the model's vocabulary of "
                         f"{model.config.vocab_size}: the tokenizer ({describe_tokenizer(args)}) is not the "
                         f"model's; name the right one with --tokenizer")
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

    flag, spec = ("--hf", args.hf) if args.hf else ("--checkpoint", args.checkpoint)
    source = open_source(spec, weights=bool(args.hf))  # a directory, or a Hub id through the cache
    if args.tokenizer:
        tokenizer = tokenizer_from_spec(args.tokenizer)
    elif source.kind == "checkpoint":
        tokenizer = load_tokenizer(run_data_dir(source))
    else:  # a Hugging Face or model directory: its own tokenizer.json
        tokenizer = HubTokenizer.from_dir(source.path, flag)
    dtype = torch.float32 if source.kind == "checkpoint" else None
    model = load_model(source.checkpoint or source.path, device=device, dtype=dtype)
    eos_id = model.config.eos_token_id
    if eos_id is None:
        eos_id = getattr(tokenizer, "eos_id", None)
    return model, tokenizer, eos_id


def describe_tokenizer(args) -> str:
    return f"--tokenizer {args.tokenizer}" if args.tokenizer else "the one found with the model"


def tokenizer_from_spec(spec: str):
    """--tokenizer: 'byte' or a prepared data directory as `prepare` saved it; a tokenizer.json, or a
    directory holding one, as a Hugging Face tokenizer (no end-of-text token needed: the model's is used)."""
    path = Path(spec)
    if spec == "byte" or (path.is_dir() and (path / "meta.json").is_file()):
        return load_tokenizer(spec)
    if path.is_dir():
        return HubTokenizer.from_dir(path, "--tokenizer")
    if path.is_file():
        return HubTokenizer.from_file(path, "--tokenizer")
    raise ValueError(f"--tokenizer {spec}: neither 'byte' nor an existing tokenizer.json or directory")


def load_tokenizer(spec):
    try:
        from .data.tokenizers import load_tokenizer as load
    except ImportError as error:
        raise ValueError(f"--tokenizer: this build cannot load tokenizers ({error})") from None
    return load(spec)


def run_data_dir(source) -> Path:
    """The prepared data directory (meta.json + tokenizer) a training checkpoint's run trained on."""
    found = source.data_dir()
    if found is None:
        raise ValueError(f"--checkpoint: cannot find the run's tokenizer (looked for meta.json in "
                         f"{', '.join(str(c) for c in source.data_dirs())}); name one with --tokenizer")
    return found


class HubTokenizer:
    """tokenizer.json of a Hugging Face directory, through the `tokenizers` library."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_dir(cls, directory, flag: str) -> "HubTokenizer":
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"{flag}: {directory} has no tokenizer.json; name a tokenizer with --tokenizer "
                             f"(a tokenizer.json, a prepared data directory, or 'byte')")
        return cls.from_file(path, flag)

    @classmethod
    def from_file(cls, path, flag: str) -> "HubTokenizer":
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ValueError(f"{flag}: reading tokenizer.json needs the `tokenizers` package "
                             "(pip install tokenizers)") from None
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as error:  # the Rust side raises a bare Exception
            raise ValueError(f"{flag}: {path} is not a tokenizer.json the tokenizers library reads ({error})") \
                from None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids  # with the tokenizer's own special tokens (e.g. BOS)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
