"""`generate` and its streaming form: prefill once, then one static-shape decode step per token."""

from __future__ import annotations

from typing import Iterator

import torch

from .decode import DecodeStep, prefill, prompt_layout
from .sampling import check_sampling_arguments, sample_next_token


def check_generate_arguments(model, input_ids, max_new_tokens, eos_token_id, attention_mask,
                             capture_cuda_graph) -> None:
    config = model.config
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point \
            or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must be an integer tensor [batch, length] with batch, length >= 1, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)}")
    if input_ids.shape[1] > config.max_seq_len:
        raise ValueError(f"input_ids: the prompt has {input_ids.shape[1]} tokens, longer than the model's "
                         f"max_seq_len {config.max_seq_len}")
    low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one host sync for both bounds
    if low < 0 or high >= config.vocab_size:
        raise ValueError(f"input_ids: token ids must lie in [0, {config.vocab_size}) (the model's vocab_size)")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if input_ids.shape[1] + max_new_tokens > config.max_seq_len:
        room = config.max_seq_len - input_ids.shape[1]
        raise ValueError(f"max_new_tokens (--max-new-tokens) {max_new_tokens}: the prompt's {input_ids.shape[1]} "
                         f"tokens plus the new ones would pass the model's max_seq_len {config.max_seq_len}; "
                         f"ask for at most {room} new tokens")
    if eos_token_id is not None and not (isinstance(eos_token_id, int) and 0 <= eos_token_id < config.vocab_size):
        raise ValueError(f"eos_token_id must be None or a token id in [0, {config.vocab_size}), got {eos_token_id!r}")
    if attention_mask is not None:
        check_left_padding(attention_mask, input_ids.shape)
    if capture_cuda_graph not in (None, True, False):
        raise ValueError(f"capture_cuda_graph must be None (a CUDA graph on CUDA, eager elsewhere), True or False, "
                         f"got {capture_cuda_graph!r}")
    if capture_cuda_graph and input_ids.device.type != "cuda":
        raise ValueError(f"capture_cuda_graph needs the model and input_ids on CUDA, not {input_ids.device}")


def uses_cuda_graph(model, capture_cuda_graph: bool | None, device) -> bool:
    """The decode step's mode: as asked, else (None) a CUDA graph when decoding on CUDA with a model whose
    modules are not torch.compile'd (compiled code brings its own graphs and recompiles, which must not
    happen inside a capture: such a model decodes eagerly unless asked otherwise)."""
    if capture_cuda_graph is None:
        return torch.device(device).type == "cuda" and not has_compiled_modules(model)
    return bool(capture_cuda_graph)


def has_compiled_modules(model) -> bool:
    return any(getattr(module, "_compiled_call_impl", None) is not None or hasattr(module, "_orig_mod")
               for module in model.modules())


def check_left_padding(attention_mask, shape) -> None:
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask must be a tensor of the shape of input_ids {tuple(shape)}")
    mask = attention_mask.long()
    # one host sync for the three checks
    not_binary, not_left, no_real = torch.stack([((mask != 0) & (mask != 1)).any(), (mask[:, 1:] < mask[:, :-1]).any(),
                                                 (mask[:, -1] == 0).any()]).tolist()
    if not_binary:
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if not_left:
        raise ValueError("attention_mask: padding must come first in each row (left padding)")
    if no_real:
        raise ValueError("attention_mask: every row needs at least one real token")


def stream_generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                    attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    capture_cuda_graph: bool | None = None) -> Iterator[torch.Tensor]:
    """An iterator over the next token of every row, [B], as each is chosen (arguments as in `generate`).
    The arguments are checked here, before the first token is asked for."""
    check_sampling_arguments(temperature, top_k, top_p)
    check_generate_arguments(model, input_ids, max_new_tokens, eos_token_id, attention_mask, capture_cuda_graph)
    return _tokens(model, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, attention_mask,
                   generator, capture_cuda_graph)


@torch.inference_mode()
def _tokens(model, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, attention_mask, generator,
            capture_cuda_graph) -> Iterator[torch.Tensor]:
    if max_new_tokens == 0:
        return
    batch, length = input_ids.shape
    # The last chosen token is never fed back, so the caches need one slot less than the output.
    caches = model.allocate_caches(batch, length + max_new_tokens - 1)
    seq_idx, positions, next_positions, document = prompt_layout(attention_mask, batch, length, input_ids.device)
    logits = prefill(model, input_ids, caches, seq_idx, positions)
    step = DecodeStep(model, caches, next_positions, document,
                      capture_graph=uses_cuda_graph(model, capture_cuda_graph, input_ids.device))
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    for index in range(max_new_tokens):
        tokens = sample_next_token(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            tokens = tokens.masked_fill(finished, eos_token_id)  # finished rows keep emitting EOS
            finished |= tokens == eos_token_id
        yield tokens
        if index + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
            return
        logits = step(tokens)


def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
             attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
             capture_cuda_graph: bool | None = None) -> torch.Tensor:
    """Continue every prompt of input_ids [B, L]; return ids [B, L + new], new <= max_new_tokens.

    temperature 0 is greedy; above it, sampling from softmax(logits / temperature) restricted to the
    top_k tokens and to the smallest set holding top_p of the mass, drawn with `generator`.
    eos_token_id: a row that emits it is finished and emits it from then on; generation stops early
    when every row is finished. None (the default) never stops early: pass model.config.eos_token_id to stop
    where the CLI does. attention_mask [B, L] (1 = real token) marks left padding of a batch
    of prompts of different lengths; the result equals generating each prompt alone.
    capture_cuda_graph: None (the default) records the decode step once as a CUDA graph and replays it
    for every later token when input_ids are on CUDA (several times faster: decoding is bound by kernel
    launches), and decodes eagerly elsewhere or when the model has torch.compile'd modules; True insists
    on the graph (CUDA only), False decodes eagerly.
    The prompt plus max_new_tokens must fit in the model's max_seq_len.
    """
    new_tokens = list(stream_generate(model, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id,
                                      attention_mask, generator, capture_cuda_graph))
    if not new_tokens:
        return input_ids.clone()
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1).to(input_ids.dtype)], dim=1)
