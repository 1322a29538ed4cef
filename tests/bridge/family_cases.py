"""Tiny random transformers models of the other families (Nemotron-H, Granite-4.0-H dense, Bamba), every
parameter drawn at random: the external reference for their bridge, parity and generation tests.

Each case covers switches the others do not: every MLP activation, full / partial / no RoPE, one and
several Mamba groups, biases on and off, multipliers away from 1, tied and untied heads.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from .conftest import CHUNK, VOCAB, WarningCollector

transformers = pytest.importorskip("transformers")

CLASSES = {
    "nemotron_h": ("NemotronHConfig", "NemotronHForCausalLM"),
    "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM"),
    "bamba": ("BambaConfig", "BambaForCausalLM"),
}

_COMMON = dict(vocab_size=VOCAB, hidden_size=32, max_position_embeddings=256)
BASES = {
    "nemotron_h": dict(_COMMON, layers_block_type=["linear_attention", "mlp", "full_attention", "mlp",
                                                   "linear_attention", "mlp"],
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
                       ssm_state_size=8, mamba_num_heads=8, mamba_head_dim=4, n_groups=8, chunk_size=CHUNK,
                       conv_kernel=3, use_bias=True, use_conv_bias=True, mlp_bias=True, layer_norm_epsilon=1e-5),
    "granitemoehybrid": dict(_COMMON, num_hidden_layers=3, layer_types=["mamba", "attention", "mamba"],
                             num_attention_heads=4, num_key_value_heads=2, num_local_experts=0, intermediate_size=48,
                             shared_intermediate_size=48, mamba_n_heads=4, mamba_d_state=8, mamba_n_groups=1,
                             mamba_expand=1, mamba_chunk_size=CHUNK, mamba_d_conv=3, position_embedding_type="rope",
                             embedding_multiplier=3.0, residual_multiplier=0.4, attention_multiplier=0.3,
                             logits_scaling=2.5, attention_bias=True, mamba_proj_bias=True, mamba_conv_bias=True,
                             tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e4},
                             rms_norm_eps=1e-5),
    "bamba": dict(_COMMON, num_hidden_layers=3, attn_layer_indices=[1], num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=48, mamba_n_heads=4, mamba_d_state=8, mamba_n_groups=1, mamba_expand=1,
                  mamba_chunk_size=CHUNK, mamba_d_conv=3, attention_bias=True, mlp_bias=True, mamba_proj_bias=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e4}, tie_word_embeddings=False,
                  rms_norm_eps=1e-5),
}

# name -> (model_type, changes to its base)
CASES = {
    "nemotron_h/relu2-8groups-gqa-biases-conv3": ("nemotron_h", {}),
    "nemotron_h/legacy-pattern-1group-mha-no-biases-conv4-dt-limit": ("nemotron_h", dict(
        layers_block_type=None, hybrid_override_pattern="M*-M-", n_groups=1, num_key_value_heads=4, use_bias=False,
        use_conv_bias=False, mlp_bias=False, conv_kernel=4, time_step_limit=(0.0, 2.0))),
    "granite/rope-multipliers-tied-biases-1group": ("granitemoehybrid", {}),
    "granite/nope-mqa-2groups-untied-no-biases": ("granitemoehybrid", dict(
        position_embedding_type="nope", num_key_value_heads=1, mamba_n_groups=2, tie_word_embeddings=False,
        attention_bias=False, mamba_proj_bias=False, mamba_conv_bias=False, embedding_multiplier=0.6,
        residual_multiplier=1.7, attention_multiplier=0.05, logits_scaling=0.8)),
    "bamba/default-partial-rope-biases-untied-1group": ("bamba", {}),
    "bamba/quarter-rope-2groups-tied-no-biases-conv4": ("bamba", dict(
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25},
        mamba_n_groups=2, tie_word_embeddings=True, attention_bias=False, mlp_bias=False, mamba_proj_bias=False,
        mamba_d_conv=4)),
}


def classes(model_type: str):
    config_class, model_class = CLASSES[model_type]
    return getattr(transformers, config_class), getattr(transformers, model_class)


def hf_config(model_type: str, **changes):
    return classes(model_type)[0](**{**BASES[model_type], **changes})


def skip_unless_grouped_norm(model_type: str, changes: dict) -> None:
    """transformers before 5.2x normalised Bamba's and Granite's gated norm over the whole width in its
    PyTorch path, whatever mamba_n_groups (its Mamba kernels, and later versions, by group, as hybridcore)."""
    groups = {**BASES[model_type], **changes}.get("mamba_n_groups", 1)
    if model_type == "nemotron_h" or groups == 1:
        return
    module = transformers.models.bamba.modeling_bamba
    if "group_size" not in inspect.signature(module.BambaRMSNormGated.__init__).parameters:
        pytest.skip(f"transformers {transformers.__version__} normalises the gated norm over the full width "
                    f"when mamba_n_groups > 1")


@torch.no_grad()
def random_model(model_type: str, changes: dict, seed: int = 0):
    """The family's ForCausalLM with EVERY parameter drawn at random (norms, A_log, D, dt_bias included)."""
    torch.manual_seed(seed)
    model = classes(model_type)[1](hf_config(model_type, **changes)).eval()
    for param in model.parameters():
        if param.ndim >= 2:
            param.copy_(torch.randn_like(param) * param[0].numel() ** -0.5)
        else:
            param.copy_(1.0 + 0.5 * torch.randn_like(param))
    return model


def save_case(directory, name: str, seed: int = 0):
    model_type, changes = CASES[name]
    skip_unless_grouped_norm(model_type, changes)
    model = random_model(model_type, changes, seed)
    model.save_pretrained(str(directory))
    return model


def load_with_transformers(directory, model_type: str):
    """from_pretrained, asserting nothing is missing or unexpected and nothing was warned about."""
    with WarningCollector() as warned:
        model, info = classes(model_type)[1].from_pretrained(str(directory), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not info["error_msgs"], info
    assert warned.messages == [], warned.messages
    return model.eval()
