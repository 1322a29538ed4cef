"""Greedy tokens equal transformers' greedy `generate` for Nemotron-H, Granite-4.0-H and Bamba (tiny random
models in float64, weights copied through each family's key map)."""

from __future__ import annotations


import pytest
import torch

from hybridcore.bridge.families import FAMILIES, model_config_from_hf
from hybridcore.bridge.keys import ours_state_from_hf
from hybridcore.model import HybridLM
from tests.bridge.family_cases import CASES, random_model, skip_unless_grouped_norm

from .helpers import assert_greedy_tokens_match

transformers = pytest.importorskip("transformers")

NEW_TOKENS = 40
PROMPT_LENGTH = 21  # more than one chunk of 16
NAMES = ["nemotron_h/relu2-8groups-gqa-biases-conv3", "granite/rope-multipliers-tied-biases-1group",
         "bamba/quarter-rope-2groups-tied-no-biases-conv4"]


def hf_and_ours(name: str):
    model_type, changes = CASES[name]
    skip_unless_grouped_norm(model_type, changes)
    hf = random_model(model_type, changes, seed=len(name)).double()
    with torch.no_grad():  # larger matrices than the parity tests': a varied continuation, not one token repeated
        for param in hf.parameters():
            if param.ndim > 1:
                param.mul_(param[0].numel() ** 0.5 * 0.3)
    hf.generation_config.eos_token_id = None  # never stop early: compare every token
    hf.generation_config.pad_token_id = 0
    config = model_config_from_hf(hf.config.to_dict())
    family = FAMILIES[model_type]
    ours = HybridLM(config).double().eval()
    state = {family.canonical_key(key): tensor for key, tensor in hf.state_dict().items()}
    result = ours.load_state_dict(ours_state_from_hf(config, state, family.key_map(config)), strict=False)
    assert result.missing_keys == (["lm_head.weight"] if config.tie_embeddings else []) and not result.unexpected_keys
    return hf, ours


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_equal_transformers_generate(name):
    hf, ours = hf_and_ours(name)
    input_ids = torch.randint(0, hf.config.vocab_size, (2, PROMPT_LENGTH), generator=torch.Generator().manual_seed(3))
    assert_greedy_tokens_match(hf, ours, input_ids, NEW_TOKENS)
