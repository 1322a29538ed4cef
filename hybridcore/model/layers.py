"""The four residual sub-layers of the grammar, each with its own pre-norm.

    P: h + mamba(u * ssm_in) * ssm_out + attention(u * attn_in) * attn_out,   u = norm(h)
    M: h + mamba(u * ssm_in) * ssm_out
    *: h + attention(u * attn_in) * attn_out
    -: h + mlp(norm(h))                 SwiGLU or squared ReLU (ModelConfig.mlp_activation)

Each layer's branches run between `region.enter` and `region.exit` (model/parallelism.py): on one device
both return their input; under tensor parallelism the branches compute this rank's heads and channels of
the whole sequence, and exit adds their outputs over the ranks (once per layer, both branches of a P
layer together) back onto the residual stream's share. A layer may be given a region of its own
(HybridLM.use_parallelism's layer_regions), as mixer parallelism gives the P layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import ModelConfig
from ..ops.rope import rope_tables
from .attention import Attention
from .cache import LayerCache
from .mamba2 import Mamba2Mixer
from .mlp import build_mlp
from .norm import RMSNorm
from .parallelism import LOCAL_REGION, WHOLE_SEQUENCE, LocalRegion, WholeSequence


@dataclass
class LayerInputs:
    """What every layer may need besides the residual stream, computed once per forward."""
    cos: torch.Tensor
    sin: torch.Tensor
    seq_idx: torch.Tensor | None = None
    # FlexAttention's block mask of seq_idx for compiled layers (the context strategy's document_mask)
    document_mask: object | None = None
    region: LocalRegion = field(default=LOCAL_REGION)
    context: WholeSequence = field(default=WHOLE_SEQUENCE)
    # What the cache paths derive from the above once per forward and every layer reuses (rope tables,
    # the prefill's attention mask); shared by the copies dataclasses.replace makes.
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        if "rope" not in self.memo:
            self.memo["rope"] = rope_tables(self.cos, self.sin)
        return self.memo["rope"]


class _Residual(nn.Module):
    kind = "?"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps, config.norm_weight_in_fp32)
        self.attention_in = config.attention_in_multiplier
        self.attention_out = config.attention_out_multiplier
        self.ssm_in = config.ssm_in_multiplier
        self.ssm_out = config.ssm_out_multiplier

    def _mamba(self, u, inputs: LayerInputs, cache: LayerCache | None):
        return scaled(self.mamba(scaled(u, self.ssm_in), inputs, cache.mamba if cache else None), self.ssm_out)

    def _attention(self, u, inputs: LayerInputs, cache: LayerCache | None):
        out = self.attention(scaled(u, self.attention_in), inputs, cache.attention if cache else None)
        return scaled(out, self.attention_out)


def scaled(x: torch.Tensor, multiplier: float) -> torch.Tensor:
    """x * multiplier; a multiplier of 1 (Falcon-H1's attention input) is exact, so x itself: one launch
    fewer per layer where launches bound the time (decoding)."""
    return x if multiplier == 1 else x * multiplier


class ParallelHybridLayer(_Residual):
    kind = "P"
    # Independent branches of one input, summed on leaving the region: mixer parallelism may place them on
    # different ranks (parallel/mixer.py), and a rank then holds one of them, the other None.
    parallel_branches = ("attention", "mamba")

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.mamba = Mamba2Mixer(config)
        self.attention = Attention(config)

    def forward(self, h, inputs: LayerInputs, cache: LayerCache | None = None):
        u = inputs.region.enter(self.norm(h))
        if self.attention is None:
            return h + inputs.region.exit(self._mamba(u, inputs, cache))
        if self.mamba is None:
            return h + inputs.region.exit(self._attention(u, inputs, cache))
        return h + inputs.region.exit(self._mamba(u, inputs, cache) + self._attention(u, inputs, cache))


class MambaLayer(_Residual):
    kind = "M"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.mamba = Mamba2Mixer(config)

    def forward(self, h, inputs: LayerInputs, cache: LayerCache | None = None):
        return h + inputs.region.exit(self._mamba(inputs.region.enter(self.norm(h)), inputs, cache))


class AttentionLayer(_Residual):
    kind = "*"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.attention = Attention(config)

    def forward(self, h, inputs: LayerInputs, cache: LayerCache | None = None):
        return h + inputs.region.exit(self._attention(inputs.region.enter(self.norm(h)), inputs, cache))


class MLPLayer(nn.Module):
    kind = "-"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps, config.norm_weight_in_fp32)
        self.mlp = build_mlp(config)

    def forward(self, h, inputs: LayerInputs, cache: LayerCache | None = None):
        return h + inputs.region.exit(self.mlp(inputs.region.enter(self.norm(h))))


LAYER_CLASSES = {cls.kind: cls for cls in (ParallelHybridLayer, MambaLayer, AttentionLayer, MLPLayer)}


def build_layer(kind: str, config: ModelConfig) -> nn.Module:
    return LAYER_CLASSES[kind](config)
