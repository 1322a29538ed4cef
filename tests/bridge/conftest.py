"""Tiny random transformers Falcon-H1 models saved to disk: the external reference for the bridge."""

from __future__ import annotations

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 97
CHUNK = 16
SEQ_LEN = 45  # longer than the chunk and not a multiple of it

# Every multiplier away from 1, every bias on: a wrong or missing one cannot hide.
BASE = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=1, head_dim=8, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head="auto", mamba_n_groups=2,
    mamba_d_state=8, mamba_d_conv=3, mamba_chunk_size=CHUNK, mamba_rms_norm=True, mamba_norm_before_gate=False,
    mamba_conv_bias=True, mamba_proj_bias=True, projectors_bias=True, attention_bias=True, mlp_bias=True,
    tie_word_embeddings=False, embedding_multiplier=1.7, lm_head_multiplier=0.3, key_multiplier=0.7,
    attention_in_multiplier=1.3, attention_out_multiplier=0.8, ssm_in_multiplier=1.2, ssm_out_multiplier=0.6,
    mlp_multipliers=[0.9, 1.4], ssm_multipliers=[0.5, 1.5, 0.7, 1.2, 0.9], rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 1e4}, max_position_embeddings=256,
)


def tiny_model_config(**changes):
    """A hybridcore ModelConfig small enough for any test, any layout."""
    from hybridcore.config import ModelConfig

    base = dict(vocab_size=61, d_model=32, layout="P-P-", num_heads=4, num_kv_heads=2, head_dim=8,
                mamba_n_heads=4, mamba_d_head=8, mamba_d_state=6, mamba_n_groups=2, mamba_chunk_size=8,
                d_ff=48, rope_theta=1e4, mamba_rms_norm=True)
    return ModelConfig(**{**base, **changes})


def hf_config(**changes):
    return transformers.FalconH1Config(**{**BASE, **changes})


@torch.no_grad()
def random_hf_model(config, seed: int = 0):
    """FalconH1ForCausalLM with EVERY parameter drawn at random (norms, A_log, D, dt_bias included)."""
    torch.manual_seed(seed)
    model = transformers.FalconH1ForCausalLM(config).eval()
    for name, param in model.named_parameters():
        if param.ndim >= 2:
            fan_in = param[0].numel()
            param.copy_(torch.randn_like(param) * fan_in ** -0.5)
        else:  # norms, biases and the per-head SSM parameters: around 1 but nowhere near their init
            param.copy_(1.0 + 0.5 * torch.randn_like(param))
    return model


def save_random_hf(directory, seed: int = 0, max_shard_size=None, **changes):
    model = random_hf_model(hf_config(**changes), seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    return model


def input_ids(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ_LEN), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def assert_same_logits(reference, ours, ids=None) -> None:
    ids = input_ids() if ids is None else ids
    expected = reference(ids).logits.float()
    got = ours(ids)
    got = (got.logits if hasattr(got, "logits") else got).float()
    assert got.shape == expected.shape
    error = (got - expected).abs().max().item()
    assert error <= 1e-4 * expected.abs().max().item(), f"max |diff| {error}"


class WarningCollector(logging.Handler):
    """transformers' logger does not propagate to the root, so caplog cannot see it: attach directly."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("transformers").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("transformers").removeHandler(self)


def load_with_transformers(directory):
    """from_pretrained, asserting nothing is missing or unexpected and nothing was warned about."""
    with WarningCollector() as warned:
        model, info = transformers.FalconH1ForCausalLM.from_pretrained(str(directory), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not info["error_msgs"], info
    assert warned.messages == []
    return model.eval()
