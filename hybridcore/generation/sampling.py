"""Choosing the next token from logits: greedy at temperature 0, else top-k / top-p sampling."""

from __future__ import annotations

import torch


def check_sampling_arguments(temperature: float, top_k: int | None, top_p: float | None,
                             names: dict[str, str] | None = None) -> None:
    """The sampling arguments' limits; `names` shows them under other names (the CLI's flags, where None is
    a flag left out and needs no mention)."""
    shown = names or {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p"}
    or_none = "" if names else " None or"
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0 \
            or temperature == float("inf"):
        raise ValueError(f"{shown['temperature']} must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"{shown['top_k']} must be{or_none} an integer >= 1, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool)
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"{shown['top_p']} must be{or_none} in (0, 1], got {top_p!r}")


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]. top_k and top_p only apply when sampling (temperature > 0)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float()
    # from the best score down: a temperature so small that scores / temperature overflow still samples
    # (the best token, as greedy does) instead of producing inf - inf
    scores = (scores - scores.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth_best = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        scores = _keep_top_p(scores, top_p)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _keep_top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose mass reaches top_p (at least one); the rest get -inf."""
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    probs = torch.softmax(sorted_scores, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # 0 for the best token, so it always stays
    drop_sorted = mass_before >= top_p
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
    return scores.masked_fill(drop, float("-inf"))
