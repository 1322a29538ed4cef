"""The MLPs of the `-` sub-layer, chosen by ModelConfig.mlp_activation.

    swiglu  down(up(x) * silu(gate(x) * m_gate)) * m_down    Falcon-H1 (with its two µP multipliers), Bamba, Granite
    relu2   down(relu(up(x)) ** 2) * m_down                  Nemotron-H: no gate
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..ops import swiglu
from .plan import COLWISE, ROWWISE, linear_plan


class SwiGLU(nn.Module):
    parallel_plan = {**linear_plan("gate_proj", COLWISE), **linear_plan("up_proj", COLWISE),
                     **linear_plan("down_proj", ROWWISE)}

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_multiplier, self.down_multiplier = config.mlp_multipliers
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = swiglu(self.gate_proj(x), self.up_proj(x), self.gate_multiplier)
        return self.down_proj(hidden) * self.down_multiplier


class SquaredReLUMLP(nn.Module):
    parallel_plan = {**linear_plan("up_proj", COLWISE), **linear_plan("down_proj", ROWWISE)}

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.down_multiplier = config.mlp_multipliers[1]  # the gate's multiplier is 1: there is no gate
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.square(F.relu(self.up_proj(x)))) * self.down_multiplier


MLP_CLASSES = {"swiglu": SwiGLU, "relu2": SquaredReLUMLP}


def build_mlp(config: ModelConfig) -> nn.Module:
    return MLP_CLASSES[config.mlp_activation](config)
