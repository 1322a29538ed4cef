"""Model configuration: shapes, the layer-grammar string, Falcon-H1's µP forward multipliers and the
switches other dense hybrid families need (MLP activation, partial or no RoPE, attention and logits
scaling, norm rounding).

Every field is a plain value. Multipliers are config, never parameters, so they never appear in a
checkpoint. `validate()` raises ValueError naming the field, so a user's typo fails before any work.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from .layout import parse_layout


MLP_ACTIVATIONS = ("swiglu", "relu2")


@dataclass
class ModelConfig:
    """A model's shapes, its layer-grammar layout and its µP forward multipliers.

    Each field's string below it is its reference entry (docs/configuration.md is generated from them);
    a trailing [unit] gives the unit. `hybridcore ... --set NAME=VALUE` changes a field of a preset."""

    vocab_size: int = 258
    """Rows of the embedding and the LM head; token ids lie in [0, vocab_size) [tokens]"""
    d_model: int = 256
    """Width of the residual stream [channels]"""
    layout: str = "P-" * 4
    """The layer grammar: one character per residual sub-layer (P parallel hybrid, M Mamba-2, * attention,
    - MLP), '|' marks a pipeline-stage boundary (docs/layer-grammar.md)"""
    num_heads: int = 4
    """Attention query heads [heads]"""
    num_kv_heads: int = 2
    """Attention key and value heads, shared by num_heads / num_kv_heads query heads each (grouped-query
    attention) [heads]"""
    head_dim: int = 64
    """Channels per attention head; even, for the rotary embedding [channels]"""
    rope_theta: float = 1e11
    """Base of the rotary position embedding's frequencies"""
    rope_fraction: float = 1.0
    """Share of head_dim the rotary embedding rotates (its first channels): 1 full, 0.5 Bamba's partial, 0 no
    positional encoding at all (Nemotron-H, Granite's "nope")"""
    attention_scale: float | None = None
    """Softmax scale of attention; None: head_dim ** -0.5 (Granite sets its own, attention_multiplier)"""
    max_seq_len: int = 16384
    """Longest sequence the model is meant for: generation refuses longer prompts [tokens]"""
    attention_bias: bool = False
    """Biases in the attention's q, k, v and o projections"""
    mamba_n_heads: int = 8
    """Mamba-2 heads, each with its own decay A and time step dt [heads]"""
    mamba_d_head: int = 32
    """Channels per Mamba-2 head; mamba_n_heads x mamba_d_head is d_ssm, the mixer's inner width [channels]"""
    mamba_d_state: int = 32
    """State size N of each Mamba-2 head (the B and C projections' width per group) [channels]"""
    mamba_n_groups: int = 1
    """Groups of heads sharing one B and one C (and one gated-norm group) [groups]"""
    mamba_d_conv: int = 4
    """Width of the causal depthwise convolution over x, B and C [tokens]"""
    mamba_chunk_size: int = 64
    """Chunk length of the chunked SSD scan: quadratic attention-like work inside a chunk, a state passed
    between chunks; changes speed, not the result beyond rounding [tokens]"""
    mamba_conv_bias: bool = True
    """A bias in the causal convolution"""
    mamba_proj_bias: bool = False
    """A bias in the Mamba-2 input projection (in_proj)"""
    mamba_rms_norm: bool = False
    """A gated RMSNorm on the SSD output before out_proj (normalises y * silu(z) per group); off: the gate
    y * silu(z) alone"""
    mamba_norm_before_gate: bool = False
    """With mamba_rms_norm: normalise y first, then gate (rmsnorm(y) * w * silu(z)); off, as the released
    models: rmsnorm(y * silu(z)) * w"""
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    """(low, high) clamp of the time step dt after softplus; (0, inf) clamps nothing"""
    d_ff: int = 512
    """Inner width of the SwiGLU MLP [channels]"""
    mlp_bias: bool = False
    """Biases in the MLP's projections"""
    mlp_activation: str = "swiglu"
    """The MLP: "swiglu", down(up(x) * silu(gate(x))); "relu2", down(relu(up(x)) ** 2) without a gate
    (Nemotron-H)"""
    projectors_bias: bool = False
    """A bias in the Mamba-2 output projection (out_proj; Falcon-H1 calls it projectors_bias)"""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm"""
    norm_weight_in_fp32: bool = False
    """RMSNorm multiplies by its weight in fp32 and then rounds to the input dtype (Nemotron-H), instead of
    rounding first (Falcon-H1, Llama): the same in fp32, not in bf16"""
    tie_embeddings: bool = False
    """The LM head shares the embedding's weight"""
    embedding_multiplier: float = 1.0
    """µP: the token embeddings are multiplied by this before the first layer"""
    lm_head_multiplier: float = 1.0
    """µP: the logits are multiplied by this"""
    attention_in_multiplier: float = 1.0
    """µP: the normed input of each attention sub-layer is multiplied by this"""
    attention_out_multiplier: float = 1.0
    """µP: each attention sub-layer's output is multiplied by this before the residual sum"""
    key_multiplier: float = 1.0
    """µP: the attention keys are multiplied by this (before the rotary embedding)"""
    ssm_in_multiplier: float = 1.0
    """µP: the normed input of each Mamba-2 sub-layer is multiplied by this"""
    ssm_out_multiplier: float = 1.0
    """µP: each Mamba-2 sub-layer's output is multiplied by this before the residual sum"""
    mlp_multipliers: tuple[float, float] = (1.0, 1.0)
    """µP: (gate, down) of the MLP: down(up(x) * silu(gate(x) * gate)) * down (relu2: the down one only)"""
    logits_divisor: float = 1.0
    """The logits are divided by this (Granite's logits_scaling): lm_head(h) * lm_head_multiplier / this"""
    ssm_multipliers: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)
    """µP: one multiplier for each of the five segments of the Mamba-2 in_proj output, (z, x, B, C, dt)"""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of linear and embedding weights (biases start at 0)"""
    eos_token_id: int | None = None
    """The tokenizer's end-of-document token: `hybridcore generate` stops on it (in Python, pass it to
    `hybridcore.generate` as eos_token_id, whose default None never stops early), and training checks the
    prepared data uses the same one; None: no such token"""

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep one canonical form.
        self.time_step_limit = tuple(float(v) for v in self.time_step_limit)
        self.mlp_multipliers = tuple(float(v) for v in self.mlp_multipliers)
        self.ssm_multipliers = tuple(float(v) for v in self.ssm_multipliers)
        self.validate()

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def d_ssm(self) -> int:
        return self.mamba_n_heads * self.mamba_d_head

    @property
    def mamba_conv_dim(self) -> int:
        return self.d_ssm + 2 * self.mamba_n_groups * self.mamba_d_state

    @property
    def mamba_in_proj_dim(self) -> int:
        return 2 * self.d_ssm + 2 * self.mamba_n_groups * self.mamba_d_state + self.mamba_n_heads

    @property
    def rotary_dim(self) -> int:
        """Channels of each attention head that RoPE rotates (transformers rounds the fraction down)."""
        return int(self.head_dim * self.rope_fraction)

    @property
    def layer_kinds(self) -> list[str]:
        return parse_layout(self.layout).kinds

    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        self._check_types()
        parse_layout(self.layout)  # raises ValueError naming the character and position
        # Every float, alone or in a tuple, must be a number: nan passes every `<=` check below and
        # inf (or nan) silently fills the model with nan. Only time_step_limit's upper bound may be +inf.
        for item in fields(self):
            value = getattr(self, item.name)
            for index, number in enumerate(value if isinstance(value, tuple) else (value,)):
                unbounded = item.name == "time_step_limit" and index == 1 and number == math.inf
                if isinstance(number, float) and not math.isfinite(number) and not unbounded:
                    raise ValueError(f"ModelConfig.{item.name} must be a finite number, got {value!r}")
        for name in ("vocab_size", "d_model", "num_heads", "num_kv_heads", "head_dim", "max_seq_len",
                     "mamba_n_heads", "mamba_d_head", "mamba_d_state", "mamba_n_groups", "mamba_d_conv",
                     "mamba_chunk_size", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if len(self.mlp_multipliers) != 2:
            raise ValueError(f"ModelConfig.mlp_multipliers needs 2 values (gate, down), got {self.mlp_multipliers!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if not 0.0 <= self.rope_fraction <= 1.0:
            raise ValueError(f"ModelConfig.rope_fraction must be between 0 (no RoPE) and 1 (all of head_dim), "
                             f"got {self.rope_fraction}")
        if self.rotary_dim % 2:
            raise ValueError(f"ModelConfig.rope_fraction {self.rope_fraction} of head_dim {self.head_dim} rotates "
                             f"{self.rotary_dim} channels; RoPE needs an even number")
        if self.attention_scale is not None and not self.attention_scale > 0:
            raise ValueError(f"ModelConfig.attention_scale must be positive (or None for head_dim ** -0.5), "
                             f"got {self.attention_scale}")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(f"ModelConfig.mlp_activation must be one of {', '.join(MLP_ACTIVATIONS)}, "
                             f"got {self.mlp_activation!r}")
        if self.mlp_activation == "relu2" and self.mlp_multipliers[0] != 1.0:
            raise ValueError(f"ModelConfig.mlp_multipliers[0] (the gate's) must be 1.0 with mlp_activation "
                             f"'relu2', which has no gate; got {self.mlp_multipliers[0]}")
        if not self.logits_divisor > 0:
            raise ValueError(f"ModelConfig.logits_divisor must be positive, got {self.logits_divisor}")
        if self.mamba_n_heads % self.mamba_n_groups:
            raise ValueError(f"ModelConfig.mamba_n_heads ({self.mamba_n_heads}) must be a multiple of "
                             f"mamba_n_groups ({self.mamba_n_groups})")
        if len(self.time_step_limit) != 2 or not self.time_step_limit[0] <= self.time_step_limit[1]:
            raise ValueError(f"ModelConfig.time_step_limit must be (low, high) with low <= high, "
                             f"got {self.time_step_limit!r}")
        if len(self.ssm_multipliers) != 5:
            raise ValueError(f"ModelConfig.ssm_multipliers needs 5 values (z, x, B, C, dt), "
                             f"got {self.ssm_multipliers!r}")
        if not self.init_std > 0:
            raise ValueError(f"ModelConfig.init_std must be positive, got {self.init_std}")
        if self.time_step_limit[0] < 0:
            raise ValueError(f"ModelConfig.time_step_limit's low bound clamps dt, a step size: it must be >= 0, "
                             f"got {self.time_step_limit!r}")
        if self.rope_theta <= 0:
            raise ValueError(f"ModelConfig.rope_theta must be positive, got {self.rope_theta}")
        if self.norm_eps <= 0:
            raise ValueError(f"ModelConfig.norm_eps must be positive, got {self.norm_eps}")
        if self.eos_token_id is not None and not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(f"ModelConfig.eos_token_id {self.eos_token_id} is outside the vocabulary "
                             f"(vocab_size {self.vocab_size})")

    def _check_types(self) -> None:
        """Each field holds its default's type (a JSON "false" is not False; an int where a float goes is)."""
        for item in fields(self):
            value = getattr(self, item.name)
            kind = _OPTIONAL.get(item.name) or type(item.default)
            if item.name in _OPTIONAL and value is None:
                continue
            numbers = value if kind is tuple and isinstance(value, tuple) else (value,)
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind in (float, tuple):
                ok = all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers)
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, kind)
            if not ok:
                what = {bool: "True or False", float: "a number", tuple: "a tuple of numbers", int: "an integer"}
                raise ValueError(f"ModelConfig.{item.name} must be {what.get(kind, kind.__name__)}, got {value!r}")

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["time_step_limit"] = list(self.time_step_limit)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return dataclass_from_dict(cls, data)

    def replace(self, **changes) -> "ModelConfig":
        return self.from_dict({**self.to_dict(), **changes})


def dataclass_from_dict(cls, data: dict):
    """cls(**data), with an error naming any key that is not a field of the dataclass `cls`."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**data)


_OPTIONAL = {"eos_token_id": int, "attention_scale": float}


def coerce_field(name: str, text: str):
    """Turn a `--set name=value` string into the type of ModelConfig.<name>."""
    types = {f.name: f for f in fields(ModelConfig)}
    if name not in types:
        raise ValueError(f"unknown model config key {name!r}; known keys: {', '.join(sorted(types))}")
    current = getattr(ModelConfig(), name)
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, tuple):
            return tuple(float(v) for v in text.strip("()[]").split(","))
        if name in _OPTIONAL:  # fields whose default is None
            return None if text.lower() == "none" else _OPTIONAL[name](text)
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        return text
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a value for {name} "
                         f"(expected {type(current).__name__})") from None


def apply_overrides(config: ModelConfig, overrides: list[str]) -> ModelConfig:
    """`config` with every `--set KEY=VALUE` of `overrides` applied; errors name the flag and the key."""
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = (part.strip() for part in item.split("=", 1))
        try:
            changes[key] = coerce_field(key, value)
        except ValueError as error:
            raise ValueError(f"--set {key}: {error}") from None
    if not changes:
        return config
    try:
        return config.replace(**changes)
    except ValueError as error:
        raise ValueError(f"--set: {error}") from None


__all__ = ["ModelConfig", "MLP_ACTIVATIONS", "coerce_field", "apply_overrides", "dataclass_from_dict"]
