"""Logits of load_hf(tiny random transformers model) equal transformers' own, across every switch."""

import pytest
import torch

from hybridcore.bridge import load_hf

from .conftest import assert_same_logits, save_random_hf

CASES = {
    "rmsnorm-gate-then-norm-2groups-biases-untied-gqa1-conv3": {},
    "no-rmsnorm-norm-then-gate-1group-tied-no-biases-conv4": dict(
        mamba_rms_norm=False, mamba_norm_before_gate=True, mamba_n_groups=1, tie_word_embeddings=True,
        mamba_d_conv=4, num_key_value_heads=2, mamba_conv_bias=False, mamba_proj_bias=False,
        projectors_bias=False, attention_bias=False, mlp_bias=False),
    "rmsnorm-norm-then-gate-1group-tied-conv2-dt-limit": dict(
        mamba_norm_before_gate=True, mamba_n_groups=1, tie_word_embeddings=True, mamba_d_conv=2,
        time_step_limit=(0.0, 1.5)),
    "no-rmsnorm-gate-then-norm-2groups-conv5-mha": dict(
        mamba_rms_norm=False, mamba_d_conv=5, num_key_value_heads=4, mamba_n_heads=8, mamba_d_state=4),
}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_logits_match_transformers(tmp_path, changes):
    reference = save_random_hf(tmp_path, **changes)
    ours = load_hf(str(tmp_path))
    assert ours.config.tie_embeddings == bool(changes.get("tie_word_embeddings", False))
    assert ours.embed.weight.dtype == torch.float32
    assert_same_logits(reference, ours)
