"""The Triton causal conv1d and gated RMSNorm as torch.library custom ops (autograd and fake shapes
registered), drop-ins for `conv.causal_conv1d_ref` and `norm.gated_rms_norm_ref`."""

from __future__ import annotations

import torch
from torch import Tensor

from . import triton_conv, triton_norm


# ---- causal depthwise conv1d ----------------------------------------------------------------------
@torch.library.custom_op("hybridcore::causal_conv1d_fwd", mutates_args=())
def conv_fwd(x: Tensor, weight: Tensor, bias: Tensor | None, seq_idx: Tensor | None,
             initial_state: Tensor | None) -> Tensor:
    return triton_conv.conv_forward(x, weight, bias, seq_idx, initial_state)


@conv_fwd.register_fake
def _(x, weight, bias, seq_idx, initial_state):
    return x.new_empty(x.shape)


@torch.library.custom_op("hybridcore::causal_conv1d_bwd", mutates_args=())
def conv_bwd(dy: Tensor, x: Tensor, weight: Tensor, seq_idx: Tensor | None,
             initial_state: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dw, db, dinit = triton_conv.conv_backward(dy, x, weight, seq_idx, initial_state)
    return dx, dw.to(weight.dtype), db, dinit if dinit is not None else x.new_empty(0)


@conv_bwd.register_fake
def _(dy, x, weight, seq_idx, initial_state):
    batch, _, channels = x.shape
    dinit = x.new_empty(batch, channels, weight.shape[1] - 1, dtype=torch.float32) if initial_state is not None \
        else x.new_empty(0)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), x.new_empty(channels, dtype=torch.float32), dinit


def _conv_setup(ctx, inputs, output):
    x, weight, bias, seq_idx, initial_state = inputs
    ctx.save_for_backward(x, weight, seq_idx, initial_state)
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _conv_backward(ctx, dy):
    x, weight, seq_idx, initial_state = ctx.saved_tensors
    dx, dw, db, dinit = conv_bwd(dy, x, weight, seq_idx, initial_state)
    return (dx, dw, db.to(ctx.bias_dtype) if ctx.bias_dtype is not None else None, None,
            dinit.to(initial_state.dtype) if initial_state is not None else None)


conv_fwd.register_autograd(_conv_backward, setup_context=_conv_setup)


def causal_conv1d(x, weight, bias=None, seq_idx=None, initial_state=None, return_final_state=False):
    """Drop-in for `causal_conv1d_ref`: (y, final_state or None)."""
    if initial_state is not None:
        initial_state = initial_state.to(x.dtype)
    y = conv_fwd(x, weight, bias, seq_idx, initial_state)
    if not return_final_state:
        return y, None
    # the final state is a copy of the last K-1 inputs: plain (differentiable) tensor ops
    width = weight.shape[-1]
    batch, length, channels = x.shape
    if width == 1:
        tail = x[:, :0]
    elif length >= width - 1:  # the inputs alone fill the window (a prompt): no history to join
        tail = x[:, length - (width - 1):]
    else:
        history = (x.new_zeros(batch, width - 1, channels) if initial_state is None
                   else initial_state.transpose(1, 2))
        tail = torch.cat([history, x], dim=1)[:, -(width - 1):]
    if seq_idx is not None and width > 1:
        docs = torch.cat([seq_idx[:, :1].expand(batch, width - 1), seq_idx], dim=1)[:, -(width - 1):]
        tail = tail * (docs == seq_idx[:, -1:])[..., None].to(x.dtype)
    return y, tail.transpose(1, 2).contiguous()


# ---- grouped gated RMSNorm -------------------------------------------------------------------------
@torch.library.custom_op("hybridcore::gated_rms_norm_fwd", mutates_args=())
def gnorm_fwd(y: Tensor, gate: Tensor, weight: Tensor, n_groups: int, eps: float,
              norm_before_gate: bool) -> tuple[Tensor, Tensor]:
    return triton_norm.gnorm_forward(y, gate, weight, n_groups, eps, norm_before_gate)


@gnorm_fwd.register_fake
def _(y, gate, weight, n_groups, eps, norm_before_gate):
    rows = y.numel() // y.shape[-1]
    return y.new_empty(y.shape), y.new_empty(rows, n_groups, dtype=torch.float32)


@torch.library.custom_op("hybridcore::gated_rms_norm_bwd", mutates_args=())
def gnorm_bwd(dout: Tensor, y: Tensor, gate: Tensor, weight: Tensor, rstd: Tensor, n_groups: int,
              norm_before_gate: bool) -> tuple[Tensor, Tensor, Tensor]:
    dy, dz, dw = triton_norm.gnorm_backward(dout, y, gate, weight, rstd, n_groups, norm_before_gate)
    return dy, dz, dw.to(weight.dtype)


@gnorm_bwd.register_fake
def _(dout, y, gate, weight, rstd, n_groups, norm_before_gate):
    return y.new_empty(y.shape), gate.new_empty(gate.shape), weight.new_empty(weight.shape)


def _gnorm_setup(ctx, inputs, output):
    y, gate, weight, n_groups, eps, norm_before_gate = inputs
    ctx.save_for_backward(y, gate, weight, output[1])
    ctx.options = (n_groups, norm_before_gate)
    ctx.mark_non_differentiable(output[1])


def _gnorm_backward(ctx, dout, _drstd):
    y, gate, weight, rstd = ctx.saved_tensors
    dy, dz, dw = gnorm_bwd(dout, y, gate, weight, rstd, *ctx.options)
    return dy, dz, dw, None, None, None


gnorm_fwd.register_autograd(_gnorm_backward, setup_context=_gnorm_setup)


def gated_rms_norm(y, gate, weight, n_groups, eps, norm_before_gate):
    """Drop-in for `norm.gated_rms_norm_ref`."""
    return gnorm_fwd(y, gate, weight, int(n_groups), float(eps), bool(norm_before_gate))[0]


# ---- one gated-norm group spanning several ranks' channels (tensor parallelism) ---------------------
@torch.library.custom_op("hybridcore::gated_rms_norm_row_sums", mutates_args=())
def gnorm_row_sums(y: Tensor, gate: Tensor, norm_before_gate: bool, weight: Tensor | None = None,
                   rstd: Tensor | None = None, dout: Tensor | None = None) -> Tensor:
    return triton_norm.gnorm_row_sums(y, gate, norm_before_gate, weight, rstd, dout)


@gnorm_row_sums.register_fake
def _(y, gate, norm_before_gate, weight=None, rstd=None, dout=None):
    return y.new_empty(y.numel() // y.shape[-1], dtype=torch.float32)


@torch.library.custom_op("hybridcore::gated_rms_norm_spanning_fwd", mutates_args=())
def gnorm_spanning_fwd(y: Tensor, gate: Tensor, weight: Tensor, sum_squares: Tensor, group_width: int, eps: float,
                       norm_before_gate: bool) -> tuple[Tensor, Tensor]:
    return triton_norm.gnorm_forward(y, gate, weight, 1, eps, norm_before_gate, sum_squares, group_width)


@gnorm_spanning_fwd.register_fake
def _(y, gate, weight, sum_squares, group_width, eps, norm_before_gate):
    return y.new_empty(y.shape), y.new_empty(y.numel() // y.shape[-1], 1, dtype=torch.float32)


@torch.library.custom_op("hybridcore::gated_rms_norm_spanning_bwd", mutates_args=())
def gnorm_spanning_bwd(dout: Tensor, y: Tensor, gate: Tensor, weight: Tensor, rstd: Tensor, dot: Tensor,
                       group_width: int, norm_before_gate: bool) -> tuple[Tensor, Tensor, Tensor]:
    dy, dz, dw = triton_norm.gnorm_backward(dout, y, gate, weight, rstd, 1, norm_before_gate, dot, group_width)
    return dy, dz, dw.to(weight.dtype)


@gnorm_spanning_bwd.register_fake
def _(dout, y, gate, weight, rstd, dot, group_width, norm_before_gate):
    return y.new_empty(y.shape), gate.new_empty(gate.shape), weight.new_empty(weight.shape)


class _SpanningGatedNorm(torch.autograd.Function):
    """Two kernels and one small all-reduce each way: this rank's row sums, their sum over the ranks
    (`all_sum`), then the kernel that normalises (forward) or forms the gradients (backward)."""

    @staticmethod
    def forward(ctx, y, gate, weight, group_width, eps, norm_before_gate, all_sum):
        sum_squares = all_sum(gnorm_row_sums(y, gate, norm_before_gate))
        out, rstd = gnorm_spanning_fwd(y, gate, weight, sum_squares, group_width, eps, norm_before_gate)
        ctx.save_for_backward(y, gate, weight, rstd)
        ctx.group_width, ctx.norm_before_gate, ctx.all_sum = group_width, norm_before_gate, all_sum
        return out

    @staticmethod
    def backward(ctx, dout):
        y, gate, weight, rstd = ctx.saved_tensors
        dot = ctx.all_sum(gnorm_row_sums(y, gate, ctx.norm_before_gate, weight, rstd, dout))
        dy, dz, dw = gnorm_spanning_bwd(dout, y, gate, weight, rstd, dot, ctx.group_width, ctx.norm_before_gate)
        return dy, dz, dw, None, None, None, None


def gated_rms_norm_spanning(y, gate, weight, group_width, eps, norm_before_gate, all_sum):
    """Drop-in for `norm.gated_rms_norm_spanning_ref`."""
    return _SpanningGatedNorm.apply(y, gate, weight, int(group_width), float(eps), bool(norm_before_gate), all_sum)
