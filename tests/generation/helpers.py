"""Tiny random models and a cache-free greedy loop: what the generation tests compare against."""

from __future__ import annotations

import torch

from hybridcore.config import ModelConfig
from hybridcore.model import build_model

VOCAB = 61


def tiny_config(**changes) -> ModelConfig:
    """Small enough for dozens of decode steps in well under a second; chunk 8 so prompts span chunks."""
    base = dict(vocab_size=VOCAB, d_model=32, layout="P-", num_heads=4, num_kv_heads=2, head_dim=8,
                mamba_n_heads=4, mamba_d_head=8, mamba_d_state=6, mamba_n_groups=2, mamba_d_conv=3,
                mamba_chunk_size=8, d_ff=48, rope_theta=1e4, mamba_rms_norm=True, attention_bias=True,
                mamba_proj_bias=True, projectors_bias=True, mlp_bias=True, max_seq_len=128,
                embedding_multiplier=1.7, lm_head_multiplier=0.3, key_multiplier=0.7, ssm_in_multiplier=1.2,
                ssm_out_multiplier=0.6, ssm_multipliers=(0.5, 1.5, 0.7, 1.2, 0.9))
    base.update(changes)
    return ModelConfig(**base)


def random_model(config: ModelConfig, seed: int = 0, dtype=torch.float64):
    """Every parameter random (matrices around 0, vectors around 1), so that no token wins by default."""
    model = build_model(config, dtype=dtype, seed=seed).eval()
    randomize(model, seed)
    return model


@torch.no_grad()
def randomize(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
        param.copy_(noise * 0.5 + (0.0 if param.ndim > 1 else 1.0))


@torch.no_grad()
def greedy_without_cache(model, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The obviously right loop: a full forward over the whole sequence for every new token."""
    ids = input_ids
    for _ in range(max_new_tokens):
        next_token = model(ids)[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_token], dim=1)
    return ids


def distinct_new_tokens(ids: torch.Tensor, prompt_length: int) -> int:
    return len(set(ids[:, prompt_length:].flatten().tolist()))


def assert_greedy_tokens_match(hf, ours, input_ids: torch.Tensor, new_tokens: int) -> None:
    """hybridcore.generate's greedy tokens equal transformers' generate on the same prompts, and the
    continuation is varied enough for the comparison to mean something."""
    import hybridcore

    with torch.no_grad():
        expected = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                               do_sample=False)
    got = hybridcore.generate(ours, input_ids, new_tokens)
    assert got.shape == (input_ids.shape[0], input_ids.shape[1] + new_tokens)
    assert distinct_new_tokens(got, input_ids.shape[1]) >= 5, "a degenerate model would make the comparison weak"
    mismatch = (got != expected).nonzero()
    assert mismatch.numel() == 0, f"first differing (row, position): {mismatch[0].tolist()}"
