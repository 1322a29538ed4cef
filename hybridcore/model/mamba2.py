"""The Mamba-2 mixer as Falcon-H1 defines it.

    zxbcdt = in_proj(u) * mup_vector            segments [z | x | B | C | dt], mup = ssm_multipliers
    xBC    = silu(causal depthwise conv(xBC))    reset at document boundaries
    y      = SSD(x, dt = clamp(softplus(dt + dt_bias)), A = -exp(A_log), B, C) + D * x
    y      = gated_rmsnorm(y, z)  or  y * silu(z)
    out    = out_proj(y)

The in_proj and the conv hold one parameter per segment (in_proj.weight_z ... weight_dt, conv_weight_x,
_B, _C), concatenated for one product and one conv: tensor parallelism gives each rank a slice of every
segment (Megatron's per-segment split), so a rank's concatenation is the fused in_proj of a mixer with its
share of the heads and groups; the checkpoint keys are the same in every layout. Head and group counts
are read from those shapes. The scan and conv go through the layer's context strategy (model.parallelism)
and `hybridcore.ops`, which picks a fused kernel where one applies and the pure-PyTorch twin otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..ops import (causal_conv1d, causal_conv1d_step, gated_rms_norm, gated_rms_norm_spanning, ssd, ssd_step,
                   swiglu)
from .cache import KeepsInferenceValues, MambaCache
from .plan import COLWISE, GROUPS, OUTPUT_BIAS, ROWWISE

if TYPE_CHECKING:
    from .layers import LayerInputs

IN_PROJ_SEGMENTS = ("z", "x", "B", "C", "dt")
CONV_SEGMENTS = ("x", "B", "C")
_SEGMENT_RULE = {"z": COLWISE, "x": COLWISE, "B": GROUPS, "C": GROUPS, "dt": COLWISE}


class SegmentedLinear(nn.Module):
    """A linear layer whose output rows are named segments, one parameter each (weight_z, bias_z, ...);
    forward is one product with their concatenation."""

    def __init__(self, in_features: int, segments: dict[str, int], bias: bool):
        super().__init__()
        self.segments = tuple(segments)
        for name, rows in segments.items():
            self.register_parameter(f"weight_{name}", nn.Parameter(torch.empty(rows, in_features)))
            self.register_parameter(f"bias_{name}", nn.Parameter(torch.empty(rows)) if bias else None)
        self.reset_parameters()

    def weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"weight_{name}") for name in self.segments]

    def biases(self) -> list[torch.Tensor] | None:
        biases = [getattr(self, f"bias_{name}") for name in self.segments]
        return None if biases[0] is None else biases

    @torch.no_grad()
    def _fill(self, init_weight, init_bias) -> None:
        """Draw the weights (and biases) as one fused tensor each, so the values are a fused nn.Linear's."""
        weights, biases = self.weights(), self.biases()
        rows = [w.shape[0] for w in weights]
        fused = torch.empty(sum(rows), weights[0].shape[1], device=weights[0].device, dtype=weights[0].dtype)
        init_weight(fused)
        for weight, piece in zip(weights, fused.split(rows)):
            weight.copy_(piece)
        if biases is not None:
            fused_bias = init_bias(torch.empty(sum(rows), device=biases[0].device, dtype=biases[0].dtype))
            for bias, piece in zip(biases, fused_bias.split(rows)):
                bias.copy_(piece)

    def reset_parameters(self) -> None:
        """nn.Linear's default init (a module built on its own); HybridLM.init_weights uses init_normal."""
        if self.weights()[0].is_meta:
            return
        bound = self.weights()[0].shape[1] ** -0.5
        self._fill(lambda w: nn.init.kaiming_uniform_(w, a=5 ** 0.5), lambda b: nn.init.uniform_(b, -bound, bound))

    def init_normal(self, std: float) -> None:
        """Normal weights (mean 0, std), zero biases."""
        self._fill(lambda w: nn.init.normal_(w, mean=0.0, std=std), nn.init.zeros_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        biases = self.biases()
        return F.linear(x, torch.cat(self.weights()), torch.cat(biases) if biases is not None else None)


class Mamba2Mixer(KeepsInferenceValues):
    parallel_plan = {
        **{f"in_proj.{kind}_{s}": _SEGMENT_RULE[s] for s in IN_PROJ_SEGMENTS for kind in ("weight", "bias")},
        **{f"conv_{kind}_{s}": _SEGMENT_RULE[s] for s in CONV_SEGMENTS for kind in ("weight", "bias")},
        "dt_bias": COLWISE, "A_log": COLWISE, "D": COLWISE, "norm_weight": COLWISE,
        "out_proj.weight": ROWWISE, "out_proj.bias": OUTPUT_BIAS,
    }

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.head_dim = config.mamba_d_head
        self.d_state = config.mamba_d_state
        self.d_conv = config.mamba_d_conv
        self.chunk_size = config.mamba_chunk_size
        self.time_step_limit = config.time_step_limit
        self.ssm_multipliers = dict(zip(IN_PROJ_SEGMENTS, config.ssm_multipliers))
        self.use_rms_norm = config.mamba_rms_norm
        self.norm_before_gate = config.mamba_norm_before_gate
        self.norm_eps = config.norm_eps
        self.norm_group_width = config.d_ssm // config.mamba_n_groups  # channels per gated-norm group
        group_state = config.mamba_n_groups * config.mamba_d_state
        widths = {"z": config.d_ssm, "x": config.d_ssm, "B": group_state, "C": group_state,
                  "dt": config.mamba_n_heads}

        self.in_proj = SegmentedLinear(config.d_model, widths, bias=config.mamba_proj_bias)
        # Depthwise conv weights kept as [channels, 1, d_conv] (nn.Conv1d's layout, Falcon-H1's key shape).
        for segment in CONV_SEGMENTS:
            self.register_parameter(f"conv_weight_{segment}",
                                    nn.Parameter(torch.empty(widths[segment], 1, self.d_conv)))
            self.register_parameter(f"conv_bias_{segment}", nn.Parameter(torch.empty(widths[segment]))
                                    if config.mamba_conv_bias else None)
        self.dt_bias = nn.Parameter(torch.empty(config.mamba_n_heads))
        self.A_log = nn.Parameter(torch.empty(config.mamba_n_heads))
        self.D = nn.Parameter(torch.empty(config.mamba_n_heads))
        self.norm_weight = nn.Parameter(torch.empty(config.d_ssm)) if self.use_rms_norm else None
        self.out_proj = nn.Linear(config.d_ssm, config.d_model, bias=config.projectors_bias)

    def reset_parameters(self) -> None:
        """The released Falcon-H1 init for the SSM parameters; the linears are initialised by the model."""
        with torch.no_grad():
            heads = self.A_log.shape[0]
            self.A_log.copy_(torch.log(torch.arange(1, heads + 1, dtype=torch.float32)))
            self.D.fill_(1.0)
            self.dt_bias.fill_(1.0)
            bound = self.d_conv ** -0.5  # nn.Conv1d's default for a depthwise kernel (fan_in = d_conv)
            for name in ("weight", "bias"):  # drawn as one tensor, as a fused conv's would be
                parts = [getattr(self, f"conv_{name}_{s}") for s in CONV_SEGMENTS]
                if parts[0] is None:
                    continue
                fused = torch.cat(parts).uniform_(-bound, bound)
                for part, piece in zip(parts, fused.split([p.shape[0] for p in parts])):
                    part.copy_(piece)
            if self.norm_weight is not None:
                self.norm_weight.fill_(1.0)

    def conv_weight(self) -> torch.Tensor:
        """[channels, d_conv] over the segments x, B, C."""
        return torch.cat([getattr(self, f"conv_weight_{s}") for s in CONV_SEGMENTS]).squeeze(1)

    def conv_bias(self) -> torch.Tensor | None:
        parts = [getattr(self, f"conv_bias_{s}") for s in CONV_SEGMENTS]
        return None if parts[0] is None else torch.cat(parts)

    def mup_vector(self, widths: list[int], device, dtype) -> torch.Tensor:
        """ssm_multipliers spread over the five in_proj segments; built on the fly, never stored."""
        return torch.cat([torch.full((width,), float(self.ssm_multipliers[s]), device=device, dtype=dtype)
                          for width, s in zip(widths, IN_PROJ_SEGMENTS)])

    def forward(self, u: torch.Tensor, inputs: LayerInputs, cache: MambaCache | None = None) -> torch.Tensor:
        batch, length, _ = u.shape
        if cache is not None and length == 1:
            return self.decode_token(u, inputs, cache)
        widths = [w.shape[0] for w in self.in_proj.weights()]  # this rank's share of each segment
        d_ssm, group_state, heads = widths[1], widths[2], widths[4]
        groups = group_state // self.d_state
        projected = self.in_proj(u)
        if cache is not None:  # inference: the constants the decode step keeps, not rebuilt per layer call
            mup, A, weight, bias = self._decode_constants(u, widths)
        else:
            mup = self.mup_vector(widths, u.device, u.dtype)
        # Under autocast u is fp32 and in_proj's output bf16: multiply by the exact fp32 multipliers, then
        # round once back to bf16, so that the conv and the scan run on bf16 (fp32 here doubled their time
        # and overflowed shared memory at 7B shapes). Without autocast the dtypes agree and this is HF's product.
        zxbcdt = (projected * mup).to(projected.dtype)
        z, xBC, dt = torch.split(zxbcdt, [d_ssm, d_ssm + 2 * group_state, heads], dim=-1)

        if cache is None:
            weight, bias = self.conv_weight(), self.conv_bias()
            xBC = inputs.context.conv(xBC, weight, bias, inputs.seq_idx)
        else:
            xBC, conv_state = causal_conv1d(xBC, weight, bias, seq_idx=inputs.seq_idx, initial_state=cache.conv_state,
                                            return_final_state=True)
            cache.conv_state.copy_(conv_state)
        xBC = F.silu(xBC)
        x, B, C = torch.split(xBC, [d_ssm, group_state, group_state], dim=-1)
        x = x.view(batch, length, heads, self.head_dim)
        B, C = B.view(batch, length, groups, self.d_state), C.view(batch, length, groups, self.d_state)

        if cache is None:
            A = -torch.exp(self.A_log.float())
        options = dict(D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.time_step_limit)
        if cache is None:
            y = inputs.context.scan(x, dt, A, B, C, inputs.seq_idx, chunk_size=self.chunk_size, **options)
        else:
            y, ssm_state = ssd(x, dt, A, B, C, chunk_size=self.chunk_size, initial_state=cache.ssm_state,
                               seq_idx=inputs.seq_idx, return_final_state=True, **options)
            cache.ssm_state.copy_(ssm_state)
        return self.out_proj(self.gate(y.reshape(batch, length, d_ssm), z, inputs))

    def decode_token(self, u: torch.Tensor, inputs: LayerInputs, cache: MambaCache) -> torch.Tensor:
        """forward for one token per row [B, 1, d_model] from the cached conv window and SSM state (both
        updated in place), in as few tensor ops as the math allows: decoding is bound by op launches.
        One recurrent step h = exp(dt*A) h + dt * x B^T rather than a single token padded up to a chunk.
        One token has no document boundary inside it: the cache belongs to its document."""
        batch = u.shape[0]
        widths = [w.shape[0] for w in self.in_proj.weights()]
        d_ssm, group_state, heads = widths[1], widths[2], widths[4]
        mup, A, weight, bias = self._decode_constants(u, widths)
        z, xBC, dt = torch.split(self.in_proj(u).mul_(mup), [d_ssm, d_ssm + 2 * group_state, heads], dim=-1)
        xBC = causal_conv1d_step(xBC.view(batch, -1), cache.conv_state, weight, bias, silu=True)  # [B, conv_dim]
        x, B, C = torch.split(xBC, [d_ssm, group_state, group_state], dim=1)
        groups = group_state // self.d_state
        y = ssd_step(x.view(batch, 1, heads, self.head_dim), dt, A, B.view(batch, 1, groups, self.d_state),
                     C.view(batch, 1, groups, self.d_state), cache.ssm_state, D=self.D, dt_bias=self.dt_bias,
                     dt_softplus=True, dt_limit=self.time_step_limit)
        return self.out_proj(self.gate(y.view(batch, 1, d_ssm), z, inputs))

    def _decode_constants(self, like: torch.Tensor, widths: list[int]):
        """(mup_vector, A = -exp(A_log), conv weight [C, K], conv bias) for prefill and decoding, kept between
        calls on the device and in the dtype of `like`. On the autograd graph, or traced into a compiled layer
        (which folds them), they are built for the call and never kept."""
        def build():
            return (self.mup_vector(widths, like.device, like.dtype), -torch.exp(self.A_log.float()),
                    self.conv_weight(), self.conv_bias())
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return build()
        parameters = (self.A_log, *(getattr(self, f"conv_{kind}_{s}") for kind in ("weight", "bias")
                                    for s in CONV_SEGMENTS))
        return self.kept(f"decode_constants {like.device} {like.dtype}", parameters, build)

    def gate(self, y: torch.Tensor, z: torch.Tensor, inputs: LayerInputs) -> torch.Tensor:
        if not self.use_rms_norm:
            return swiglu(z, y, 1.0)  # y * silu(z)
        if y.shape[-1] < self.norm_group_width:  # one norm group spans this rank's channels and others'
            return gated_rms_norm_spanning(y, z, self.norm_weight, self.norm_group_width, self.norm_eps,
                                           self.norm_before_gate, inputs.region.all_sum)
        return gated_rms_norm(y, z, self.norm_weight, y.shape[-1] // self.norm_group_width, self.norm_eps,
                              self.norm_before_gate)
