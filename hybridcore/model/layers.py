"""The four residual sub-layers of the grammar, each with its own pre-norm.

    P: h + mamba(u * ssm_in) * ssm_out + attention(u * attn_in) * attn_out,   u = norm(h)
    M: h + mamba(u * ssm_in) * ssm_out
    *: h + attention(u * attn_in) * attn_out
    -: h + mlp(norm(h))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from .attention import Attention
from .cache import LayerCache
from .mamba2 import Mamba2Mixer
from .mlp import SwiGLU
from .norm import RMSNorm


@dataclass
class LayerInputs:
    """What every layer may need besides the residual stream, computed once per forward."""
    cos: torch.Tensor
    sin: torch.Tensor
    seq_idx: torch.Tensor | None = None


class _Residual(nn.Module):
    kind = "?"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.attention_in = config.attention_in_multiplier
        self.attention_out = config.attention_out_multiplier
        self.ssm_in = config.ssm_in_multiplier
        self.ssm_out = config.ssm_out_multiplier

    def _mamba(self, u, inputs: LayerInputs, cache: LayerCache | None):
        return self.mamba(u * self.ssm_in, inputs.seq_idx, cache.mamba if cache else None) * self.ssm_out

    def _attention(self, u, inputs: LayerInputs, cache: LayerCache | None):
        out = self.attention(u * self.attention_in, inputs.cos, inputs.sin, inputs.seq_idx,
                             cache.attention if cache else None)
        return out * self.attention_out


class ParallelHybridLayer(_Residual):
    kind = "P"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.mamba = Mamba2Mixer(config)
        self.attention = Attention(config)

    def forward(self, h, inputs: LayerInputs, cache: LayerCache | None = None):
        u = self.norm(h)
        return h + self._mamba(u, inputs, cache) + self._attention(u, inputs, cache)


class MambaLayer(_Residual):
    kind = "M"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.mamba = Mamba2Mixer(config)

    def forward(self, h, inputs: LayerInputs, cache: LayerCache | None = None):
        return h + self._mamba(self.norm(h), inputs, cache)


class AttentionLayer(_Residual):
    kind = "*"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.attention = Attention(config)

    def forward(self, h, inputs: LayerInputs, cache: LayerCache | None = None):
        return h + self._attention(self.norm(h), inputs, cache)


class MLPLayer(nn.Module):
    kind = "-"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, h, inputs: LayerInputs, cache: LayerCache | None = None):
        return h + self.mlp(self.norm(h))


LAYER_CLASSES = {cls.kind: cls for cls in (ParallelHybridLayer, MambaLayer, AttentionLayer, MLPLayer)}


def build_layer(kind: str, config: ModelConfig) -> nn.Module:
    return LAYER_CLASSES[kind](config)
