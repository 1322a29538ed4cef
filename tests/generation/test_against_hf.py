"""Greedy tokens equal transformers' greedy `generate` on tiny random Falcon-H1 models (weights copied
through the key map, so the test does not depend on the checkpoint loader)."""

from __future__ import annotations


import pytest
import torch

from hybridcore.bridge.config_map import model_config_from_hf
from hybridcore.bridge.keys import ours_state_from_hf
from hybridcore.model import HybridLM

from .helpers import assert_greedy_tokens_match

transformers = pytest.importorskip("transformers")

NEW_TOKENS = 40
PROMPT_LENGTH = 21  # more than one chunk of 16

BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head="auto",
            mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=3, mamba_chunk_size=16, mamba_rms_norm=True,
            mamba_norm_before_gate=False, tie_word_embeddings=False, embedding_multiplier=1.7,
            lm_head_multiplier=0.3, key_multiplier=0.7, attention_in_multiplier=1.3, attention_out_multiplier=0.8,
            ssm_in_multiplier=1.2, ssm_out_multiplier=0.6, mlp_multipliers=[0.9, 1.4],
            ssm_multipliers=[0.5, 1.5, 0.7, 1.2, 0.9], rms_norm_eps=1e-5, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4})

CONFIGS = {
    "rms_norm-groups2-gqa": {},
    "no_rms_norm-groups1-mqa-biases": dict(mamba_rms_norm=False, mamba_n_groups=1, num_key_value_heads=1,
                                          mamba_conv_bias=True, mamba_proj_bias=True, projectors_bias=True,
                                          attention_bias=True, mlp_bias=True),
    "norm_before_gate-tied-3layers": dict(mamba_norm_before_gate=True, tie_word_embeddings=True,
                                          num_hidden_layers=3, num_attention_heads=8),
}


def hf_and_ours(changes: dict, seed: int):
    config = transformers.FalconH1Config(**{**BASE, **changes})
    torch.manual_seed(seed)
    hf = transformers.FalconH1ForCausalLM(config).eval().double()
    with torch.no_grad():
        for param in hf.parameters():
            param.copy_(torch.randn_like(param) * (0.3 if param.ndim > 1 else 0.5) + (0.0 if param.ndim > 1 else 1.0))
    hf.generation_config.eos_token_id = None  # never stop early: compare every token
    hf.generation_config.pad_token_id = 0
    ours_config = model_config_from_hf(config.to_dict())
    ours = HybridLM(ours_config).double().eval()
    state = hf.state_dict()
    result = ours.load_state_dict(ours_state_from_hf(ours_config, state), strict=False)
    tied_head = ["lm_head.weight"] if ours_config.tie_embeddings else []  # shares embed.weight
    assert result.missing_keys == tied_head and not result.unexpected_keys
    return hf, ours


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens_equal_transformers_generate(name):
    hf, ours = hf_and_ours(CONFIGS[name], seed=len(name))
    input_ids = torch.randint(0, 97, (2, PROMPT_LENGTH), generator=torch.Generator().manual_seed(3))
    assert_greedy_tokens_match(hf, ours, input_ids, NEW_TOKENS)
