"""Named model configurations. Presets are data: plain dicts of ModelConfig fields, nothing keyed on names.

Falcon-H1 shapes and µP multipliers are the released ones (see the project's falcon-h1.md); Nemotron-H-8B's
are its public config.json's, through the bridge's translation. Released sizes whose every value is not
confirmed (Falcon-H1 1.5B and 3B, the other Nemotron-H sizes, Granite-4.0-H, Bamba) are left out rather
than guessed.
"""

from __future__ import annotations

from .config import ModelConfig

# What every released Falcon-H1 model shares.
_FALCON_H1_COMMON = dict(
    rope_theta=1e11, norm_eps=1e-5, mamba_d_conv=4, mamba_conv_bias=True, mamba_proj_bias=False,
    projectors_bias=False, attention_bias=False, mlp_bias=False, mamba_norm_before_gate=False,
    tie_embeddings=False, embedding_multiplier=5.656854, attention_in_multiplier=1.0,
)
_SSM_MULTIPLIERS_DEEP = (0.35355339, 0.25, 0.1767767, 0.5, 0.35355339)

PRESETS: dict[str, dict] = {
    "debug": dict(
        description="a few million parameters; a training step well under a second on 2 CPU cores",
        vocab_size=258, d_model=256, layout="P-" * 4, num_heads=4, num_kv_heads=2, head_dim=64,
        mamba_n_heads=8, mamba_d_head=32, mamba_d_state=32, mamba_n_groups=1, mamba_chunk_size=64,
        d_ff=512, max_seq_len=4096, rope_theta=1e4, mamba_rms_norm=True, eos_token_id=256,
    ),
    "falcon-h1-0.5b": dict(
        _FALCON_H1_COMMON, description="Falcon-H1-0.5B (released shape and multipliers)",
        vocab_size=32784, d_model=1024, layout="P-" * 36, num_heads=8, num_kv_heads=2, head_dim=64,
        mamba_n_heads=24, mamba_d_head=64, mamba_d_state=128, mamba_n_groups=1, mamba_chunk_size=128,
        mamba_rms_norm=False, d_ff=2048, max_seq_len=16384,
        lm_head_multiplier=0.0390625, key_multiplier=0.390625, attention_out_multiplier=0.9375,
        ssm_in_multiplier=1.25, ssm_out_multiplier=0.23570226, mlp_multipliers=(0.88388348, 0.5859375),
        ssm_multipliers=(0.35355339, 0.25, 0.35355339, 0.5, 0.35355339),
    ),
    "falcon-h1-1.5b-deep": dict(
        _FALCON_H1_COMMON, description="Falcon-H1-1.5B-Deep (released shape and multipliers)",
        vocab_size=65537, d_model=1280, layout="P-" * 66, num_heads=6, num_kv_heads=2, head_dim=128,
        mamba_n_heads=24, mamba_d_head=64, mamba_d_state=256, mamba_n_groups=1, mamba_chunk_size=128,
        mamba_rms_norm=True, d_ff=3072, max_seq_len=131072,
        lm_head_multiplier=0.03125, key_multiplier=0.1767767, attention_out_multiplier=0.5,
        ssm_in_multiplier=1.0, ssm_out_multiplier=0.23570226, mlp_multipliers=(0.70710678, 0.3125),
        ssm_multipliers=_SSM_MULTIPLIERS_DEEP,
    ),
    "falcon-h1-7b": dict(
        _FALCON_H1_COMMON, description="Falcon-H1-7B (released shape and multipliers)",
        vocab_size=130049, d_model=3072, layout="P-" * 44, num_heads=12, num_kv_heads=2, head_dim=128,
        mamba_n_heads=24, mamba_d_head=128, mamba_d_state=256, mamba_n_groups=1, mamba_chunk_size=256,
        mamba_rms_norm=True, d_ff=12288, max_seq_len=262144,
        lm_head_multiplier=0.01302083, key_multiplier=0.03069, attention_out_multiplier=0.10417,
        ssm_in_multiplier=0.41667, ssm_out_multiplier=0.11785113, mlp_multipliers=(0.2946, 0.03255),
        ssm_multipliers=_SSM_MULTIPLIERS_DEEP,
    ),
    "falcon-h1-34b": dict(
        _FALCON_H1_COMMON, description="Falcon-H1-34B (released shape and multipliers)",
        vocab_size=261120, d_model=5120, layout="P-" * 72, num_heads=20, num_kv_heads=4, head_dim=128,
        mamba_n_heads=32, mamba_d_head=128, mamba_d_state=256, mamba_n_groups=2, mamba_chunk_size=128,
        mamba_rms_norm=True, d_ff=21504, max_seq_len=262144,
        lm_head_multiplier=0.0078125, key_multiplier=0.011049, attention_out_multiplier=0.0375,
        ssm_in_multiplier=0.25, ssm_out_multiplier=0.08838835, mlp_multipliers=(0.1767767, 0.01116071),
        ssm_multipliers=_SSM_MULTIPLIERS_DEEP,
    ),
    "nemotron-h-8b": dict(
        description="Nemotron-H-8B-Base-8K (released shape): Mamba-2, attention without RoPE, squared-ReLU MLPs",
        vocab_size=131072, d_model=4096, layout="M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-",
        num_heads=32, num_kv_heads=8, head_dim=128, rope_fraction=0.0, max_seq_len=8192, attention_bias=False,
        mamba_n_heads=128, mamba_d_head=64, mamba_d_state=128, mamba_n_groups=8, mamba_d_conv=4, mamba_chunk_size=128,
        mamba_conv_bias=True, mamba_proj_bias=False, projectors_bias=False, mamba_rms_norm=True,
        mamba_norm_before_gate=False, d_ff=21504, mlp_bias=False, mlp_activation="relu2", norm_eps=1e-5,
        norm_weight_in_fp32=True, tie_embeddings=False, eos_token_id=2,
    ),
    "hybrid-seq-small": dict(
        description="example: a sequential hybrid, Mamba-2 and attention in separate layers",
        vocab_size=32784, d_model=768, layout="M-M-M*-" * 4, num_heads=12, num_kv_heads=4, head_dim=64,
        mamba_n_heads=24, mamba_d_head=64, mamba_d_state=128, mamba_n_groups=1, mamba_chunk_size=128,
        mamba_rms_norm=True, d_ff=2048, max_seq_len=8192, rope_theta=1e6,
    ),
    "transformer-small": dict(
        description="example: a plain Llama-style transformer, attention and MLP only",
        vocab_size=32784, d_model=768, layout="*-" * 8, num_heads=12, num_kv_heads=4, head_dim=64,
        d_ff=2048, max_seq_len=8192, rope_theta=1e6,
    ),
    "mamba2-small": dict(
        description="example: pure Mamba-2, no attention and no MLP",
        vocab_size=32784, d_model=768, layout="M" * 24, mamba_n_heads=24, mamba_d_head=64, mamba_d_state=128,
        mamba_n_groups=1, mamba_chunk_size=128, mamba_rms_norm=True, max_seq_len=8192,
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    fields = {k: v for k, v in PRESETS[name].items() if k != "description"}
    return ModelConfig(**fields)
