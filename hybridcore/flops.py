"""FLOPs per token (for MFU) and memory estimates, from the config alone.

Forward FLOPs per token, split by where they go:
  matmul     2 x (weights of every linear layer, the LM head included; the embedding lookup is free)
  attention  causal QK^T and AV: 2 x 2 x heads x head_dim x (seq_len / 2) per attention layer
  ssd        the chunked scan per Mamba layer and head, with chunk Q, state N, head dim P:
             intra-chunk C.B^T and its product with x (causal half of the chunk): Q x (N + P),
             chunk states and inter-chunk output: 2 x 2 x N x P
Training is counted as 3 x forward (backward = 2 x forward), the usual convention.

MFU (model FLOPs utilisation) is model FLOP/s over the GPUs' datasheet dense bf16 peak, as Megatron and
torchtitan report it; recomputation under activation checkpointing is not counted as model FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig


@dataclass
class FlopsPerToken:
    matmul: float
    attention: float
    ssd: float

    @property
    def total(self) -> float:
        return self.matmul + self.attention + self.ssd

    def as_dict(self) -> dict:
        return {"matmul": self.matmul, "attention": self.attention, "ssd": self.ssd, "total": self.total}


def mlp_matrices(config: ModelConfig) -> int:
    """d_model x d_ff matrices in one MLP: gate, up and down for SwiGLU; up and down without a gate."""
    return 3 if config.mlp_activation == "swiglu" else 2


def linear_weights(config: ModelConfig) -> int:
    """Number of weights in all linear layers (biases excluded), LM head included."""
    c = config
    attention = c.d_model * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    mamba = c.d_model * c.mamba_in_proj_dim + c.d_ssm * c.d_model
    mlp = mlp_matrices(c) * c.d_model * c.d_ff
    per_kind = {"P": attention + mamba, "M": mamba, "*": attention, "-": mlp}
    return sum(per_kind[k] for k in c.layer_kinds) + c.d_model * c.vocab_size


def mixer_flops(config: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token of one attention and one Mamba-2 mixer (the two branches of a P layer)."""
    c = config
    attention = 2.0 * c.d_model * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads) \
        + 2.0 * c.num_heads * c.head_dim * seq_len
    chunk = min(c.mamba_chunk_size, seq_len)
    mamba = 2.0 * (c.d_model * c.mamba_in_proj_dim + c.d_ssm * c.d_model) + c.mamba_n_heads * (
        chunk * (c.mamba_d_state + c.mamba_d_head) + 4.0 * c.mamba_d_state * c.mamba_d_head)
    return {"attention": attention, "mamba": mamba}


def layer_flops(config: ModelConfig, kind: str, seq_len: int) -> float:
    """Forward FLOPs per token of one sub-layer of the given grammar kind (for pipeline balancing)."""
    mixers = mixer_flops(config, seq_len)
    mlp = 2.0 * mlp_matrices(config) * config.d_model * config.d_ff
    return {"P": mixers["attention"] + mixers["mamba"], "M": mixers["mamba"], "*": mixers["attention"], "-": mlp}[kind]


def head_flops(config: ModelConfig) -> float:
    """Forward FLOPs per token of the LM head and its loss (the product, the softmax and its gradient)."""
    return 2.0 * config.d_model * config.vocab_size + 4.0 * config.vocab_size


def pipeline_stages(config: ModelConfig, num_stages: int, seq_len: int) -> list[list[int]]:
    """Layer indices of each pipeline stage: the layout's '|' cuts if it has them, else balanced by FLOPs,
    the LM head and loss counted with the last layer (the embedding lookup costs no FLOPs: it goes with
    the first layer at no weight)."""
    from .layout import parse_layout, split_by_cost

    layout = parse_layout(config.layout)
    if len(layout.stages) > 1:
        if len(layout.stages) != num_stages:
            raise ValueError(f"layout {config.layout!r} has {len(layout.stages)} stages ('|' cuts) "
                             f"but {num_stages} pipeline stages were asked for")
        return layout.stages
    costs = [layer_flops(config, k, seq_len) for k in layout.kinds]
    costs[-1] += head_flops(config)
    return split_by_cost(costs, num_stages)


def flops_per_token(config: ModelConfig, seq_len: int, training: bool = True) -> FlopsPerToken:
    c = config
    kinds = c.layer_kinds
    attention_layers = sum(k in "P*" for k in kinds)
    mamba_layers = sum(k in "PM" for k in kinds)
    matmul = 2.0 * linear_weights(c)
    attention = attention_layers * 2.0 * 2.0 * c.num_heads * c.head_dim * seq_len / 2
    chunk = min(c.mamba_chunk_size, seq_len)
    per_head = chunk * (c.mamba_d_state + c.mamba_d_head) + 4.0 * c.mamba_d_state * c.mamba_d_head
    ssd = mamba_layers * c.mamba_n_heads * per_head
    scale = 3.0 if training else 1.0
    return FlopsPerToken(matmul * scale, attention * scale, ssd * scale)


# dense bf16 tensor-core peak of one H100 or H200 SXM (the datasheet's figure without sparsity), FLOP/s
DATASHEET_PEAK_BF16_FLOPS = 989e12


def mfu(tokens_per_s: float, flops_per_token: float, num_gpus: int = 1,
        peak_flops_per_gpu: float = DATASHEET_PEAK_BF16_FLOPS) -> float:
    """Model FLOPs utilisation: model FLOP/s over num_gpus x the per-GPU datasheet peak."""
    if not peak_flops_per_gpu > 0 or num_gpus < 1:
        raise ValueError(f"peak_flops_per_gpu must be > 0 and num_gpus >= 1, got {peak_flops_per_gpu}, {num_gpus}")
    return tokens_per_s * flops_per_token / (num_gpus * peak_flops_per_gpu)


BYTES_PER_DTYPE = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


def memory_estimate(num_params: int) -> dict:
    """Bytes for the weights in each dtype, and for AdamW training state with fp32 master weights:
    two fp32 moments, plus an fp32 master copy when the weights themselves are kept in 16 bits."""
    weights = {name: num_params * size for name, size in BYTES_PER_DTYPE.items()}
    adam_moments = 2 * 4 * num_params
    return {
        "weights_bytes": weights,
        "training_bytes": {
            "fp32": weights["fp32"] + 4 * num_params + adam_moments,  # weights + grads + moments
            "bf16_mixed": weights["bf16"] + 2 * num_params + 4 * num_params + adam_moments,
        },
    }
