"""The Mamba-2 mixer as Falcon-H1 defines it.

    zxbcdt = in_proj(u) * mup_vector            segments [z | x | B | C | dt], mup = ssm_multipliers
    xBC    = silu(causal depthwise conv(xBC))    reset at document boundaries
    y      = SSD(x, dt = clamp(softplus(dt + dt_bias)), A = -exp(A_log), B, C) + D * x
    y      = gated_rmsnorm(y, z)  or  y * silu(z)
    out    = out_proj(y)

The scan and conv go through `hybridcore.ops`, which picks a fused kernel where one is available and
the pure-PyTorch reference otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..ops import causal_conv1d, gated_rms_norm, ssd, ssd_step
from .cache import MambaCache


class Mamba2Mixer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.mamba_n_heads
        self.head_dim = config.mamba_d_head
        self.d_ssm = config.d_ssm
        self.n_groups = config.mamba_n_groups
        self.d_state = config.mamba_d_state
        self.d_conv = config.mamba_d_conv
        self.chunk_size = config.mamba_chunk_size
        self.time_step_limit = config.time_step_limit
        self.ssm_multipliers = config.ssm_multipliers
        self.use_rms_norm = config.mamba_rms_norm
        self.norm_before_gate = config.mamba_norm_before_gate
        self.norm_eps = config.norm_eps
        conv_dim = config.mamba_conv_dim

        self.in_proj = nn.Linear(config.d_model, config.mamba_in_proj_dim, bias=config.mamba_proj_bias)
        # Depthwise conv weight kept as [channels, 1, d_conv] (nn.Conv1d's layout, Falcon-H1's key shape).
        self.conv_weight = nn.Parameter(torch.empty(conv_dim, 1, self.d_conv))
        self.conv_bias = nn.Parameter(torch.empty(conv_dim)) if config.mamba_conv_bias else None
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.num_heads))
        self.norm_weight = nn.Parameter(torch.empty(self.d_ssm)) if self.use_rms_norm else None
        self.out_proj = nn.Linear(self.d_ssm, config.d_model, bias=config.projectors_bias)

    def reset_parameters(self) -> None:
        """The released Falcon-H1 init for the SSM parameters; the linears are initialised by the model."""
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.arange(1, self.num_heads + 1, dtype=torch.float32)))
            self.D.fill_(1.0)
            self.dt_bias.fill_(1.0)
            bound = self.d_conv ** -0.5  # nn.Conv1d's default for a depthwise kernel (fan_in = d_conv)
            self.conv_weight.uniform_(-bound, bound)
            if self.conv_bias is not None:
                self.conv_bias.uniform_(-bound, bound)
            if self.norm_weight is not None:
                self.norm_weight.fill_(1.0)

    def segment_widths(self) -> list[int]:
        group_state = self.n_groups * self.d_state
        return [self.d_ssm, self.d_ssm, group_state, group_state, self.num_heads]

    def mup_vector(self, device, dtype) -> torch.Tensor:
        """ssm_multipliers spread over the five in_proj segments; built on the fly, never stored."""
        return torch.cat([torch.full((width,), float(m), device=device, dtype=dtype)
                          for width, m in zip(self.segment_widths(), self.ssm_multipliers)])

    def forward(self, u: torch.Tensor, seq_idx: torch.Tensor | None = None,
                cache: MambaCache | None = None) -> torch.Tensor:
        batch, length, _ = u.shape
        if cache is not None and length == 1:
            return self.decode_token(u, cache)
        projected = self.in_proj(u)
        # Under autocast u is fp32 and in_proj's output bf16: multiply by the exact fp32 multipliers, then
        # round once back to bf16, so that the conv and the scan run on bf16 (fp32 here doubled their time
        # and overflowed shared memory at 7B shapes). Without autocast the dtypes agree and this is HF's product.
        zxbcdt = (projected * self.mup_vector(u.device, u.dtype)).to(projected.dtype)
        z, xBC, dt = torch.split(zxbcdt, [self.d_ssm, self.d_ssm + 2 * self.n_groups * self.d_state,
                                          self.num_heads], dim=-1)

        xBC, conv_state = self.conv(xBC, seq_idx, cache.conv_state if cache is not None else None)
        xBC = F.silu(xBC)
        x, B, C = torch.split(xBC, [self.d_ssm, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)

        y, ssm_state = self.scan(
            x.view(batch, length, self.num_heads, self.head_dim), dt,
            B.view(batch, length, self.n_groups, self.d_state), C.view(batch, length, self.n_groups, self.d_state),
            seq_idx, cache.ssm_state if cache is not None else None)
        if cache is not None:
            cache.conv_state.copy_(conv_state)
            cache.ssm_state.copy_(ssm_state)
        y = y.reshape(batch, length, self.d_ssm)
        return self.out_proj(self.gate(y, z))

    def decode_token(self, u: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """forward for one token per row [B, 1, d_model] from the cached conv window and SSM state (both
        updated in place), in as few tensor ops as the math allows: decoding is bound by op launches.
        One token has no document boundary inside it: the cache belongs to its document."""
        batch = u.shape[0]
        zxbcdt = self.in_proj(u)
        mup, A = self._decode_constants(u)
        z, xBC, dt = torch.split(zxbcdt.mul_(mup), [self.d_ssm, self.d_ssm + 2 * self.n_groups * self.d_state,
                                                    self.num_heads], dim=-1)
        window = torch.cat([cache.conv_state, xBC.transpose(1, 2)], dim=-1)  # [B, conv_dim, d_conv]
        cache.conv_state.copy_(window[:, :, 1:])
        # The depthwise conv over exactly one window is a grouped conv1d with one output position.
        xBC = F.silu(F.conv1d(window, self.conv_weight, self.conv_bias, groups=window.shape[1])).view(batch, 1, -1)
        x, B, C = torch.split(xBC, [self.d_ssm, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        y = ssd_step(x.view(batch, 1, self.num_heads, self.head_dim), dt, A,
                     B.view(batch, 1, self.n_groups, self.d_state), C.view(batch, 1, self.n_groups, self.d_state),
                     cache.ssm_state, D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.time_step_limit)
        return self.out_proj(self.gate(y.view(batch, 1, self.d_ssm), z))

    def _decode_constants(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mup_vector, A = -exp(A_log)) for decoding, rebuilt only when the device, dtype or A_log change
        (a plain attribute: not state, not saved)."""
        key = (like.device, like.dtype, self.A_log.data_ptr(), self.A_log._version)
        if getattr(self, "_decode_key", None) != key:
            self._decode_key = key
            self._decode_values = (self.mup_vector(like.device, like.dtype), -torch.exp(self.A_log.float()))
        return self._decode_values

    # conv, scan and gate are methods so that hybridcore.parallel can run them across ranks (context
    # parallel: conv and scan; tensor parallel with a norm group split over ranks: gate). conv and scan
    # return a final state only when an initial one (a cache) goes in.
    def gate(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.use_rms_norm:
            return gated_rms_norm(y, z, self.norm_weight, self.n_groups, self.norm_eps, self.norm_before_gate)
        return y * F.silu(z)

    def conv(self, xBC: torch.Tensor, seq_idx: torch.Tensor | None, initial_state: torch.Tensor | None):
        return causal_conv1d(xBC, self.conv_weight.squeeze(1), self.conv_bias, seq_idx=seq_idx,
                             initial_state=initial_state, return_final_state=initial_state is not None)

    def scan(self, x: torch.Tensor, dt: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             seq_idx: torch.Tensor | None, initial_state: torch.Tensor | None):
        A = -torch.exp(self.A_log.float())
        options = dict(D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.time_step_limit)
        if initial_state is not None and x.shape[1] == 1:
            # Decoding: one recurrent step h = exp(dt*A) h + dt * x B^T on the cached state, in place,
            # rather than padding a single token up to a whole chunk.
            return ssd_step(x, dt, A, B, C, initial_state, **options), initial_state
        return ssd(x, dt, A, B, C, chunk_size=self.chunk_size, initial_state=initial_state, seq_idx=seq_idx,
                   return_final_state=initial_state is not None, **options)
