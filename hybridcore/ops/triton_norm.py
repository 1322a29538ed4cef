"""Triton gated RMSNorm over groups, forward and backward. Twin: `norm.gated_rms_norm_ref`.

Rows of d channels split into G groups; each group is normalised on its own (statistics in fp32):
    norm_before_gate=False: out = rmsnorm(y * silu(z)) * w        True: out = rmsnorm(y) * w * silu(z)

Spanning (tensor parallelism, one group wider than this rank's channels; twin `norm.gated_rms_norm_spanning_ref`):
the forward and backward kernels take their one row statistic from outside instead of a sum over the
channels they hold, and `gnorm_row_sums` computes this rank's part of it, so the caller sums that over the
ranks in between (the sum of squares forward, the sum of dn * n backward).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_ssd import INTERPRET

BLOCK_R = 4 if INTERPRET else 16  # rows per program; the backward keeps one partial weight gradient for each
# Rows per step of a program: a step holds about this many fp32 elements of each tensor it touches. Sixteen
# rows of falcon-h1-7b's 3,072 channels a step made the backward spill its registers: 2.4 ms a layer at
# 2 x 4096 tokens on an H100, about 30 times what its memory traffic takes.
TILE_ELEMENTS = 64 if INTERPRET else 4096


def _tiling(block_d: int) -> tuple[int, int]:
    """(rows per step, warps) for rows of block_d channels (a power of two)."""
    tile_r = max(1, min(BLOCK_R, TILE_ELEMENTS // block_d))
    return tile_r, 4 if tile_r * block_d <= 2048 else 8


@triton.jit
def _gnorm_fwd_kernel(y_ptr, z_ptr, w_ptr, ss_ptr, out_ptr, rstd_ptr, R, DG, G, s_y_r, s_z_r, s_o_r, eps, width,
                      BEFORE: tl.constexpr, SPANNING: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    g = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    r_ok = offs_r < R
    d_ok = offs_d < DG
    mask = r_ok[:, None] & d_ok[None, :]
    col = g * DG + offs_d
    y = tl.load(y_ptr + offs_r[:, None] * s_y_r + col[None, :], mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs_r[:, None] * s_z_r + col[None, :], mask=mask, other=0.0).to(tl.float32)
    silu = z * tl.sigmoid(z)
    if not BEFORE:
        y = y * silu
    if SPANNING:  # the sum of squares over the whole group, from every rank that holds part of it
        sum_squares = tl.load(ss_ptr + offs_r, mask=r_ok, other=0.0)
    else:
        sum_squares = tl.sum(y * y, axis=1)
    rstd = 1.0 / tl.sqrt(sum_squares / width + eps)
    w = tl.load(w_ptr + col, mask=d_ok, other=0.0).to(tl.float32)
    out = y * rstd[:, None] * w[None, :]
    if BEFORE:
        out = out * silu
    tl.store(out_ptr + offs_r[:, None] * s_o_r + col[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + offs_r * G + g, rstd, mask=r_ok)


@triton.jit
def _gnorm_bwd_kernel(y_ptr, z_ptr, w_ptr, rstd_ptr, dot_ptr, dout_ptr, dy_ptr, dz_ptr, dw_part_ptr, R, DG, G, D,
                      s_y_r, s_z_r, s_do_r, s_dy_r, s_dz_r, width,
                      BEFORE: tl.constexpr, SPANNING: tl.constexpr, BLOCK_R: tl.constexpr, TILE_R: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    # BLOCK_R rows, TILE_R at a time; their weight gradient summed here, one partial row per program
    pid_r = tl.program_id(0)
    g = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < DG
    col = g * DG + offs_d
    w = tl.load(w_ptr + col, mask=d_ok, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for r0 in range(0, BLOCK_R, TILE_R):
        offs_r = pid_r * BLOCK_R + r0 + tl.arange(0, TILE_R)
        r_ok = offs_r < R
        mask = r_ok[:, None] & d_ok[None, :]
        y = tl.load(y_ptr + offs_r[:, None] * s_y_r + col[None, :], mask=mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + offs_r[:, None] * s_z_r + col[None, :], mask=mask, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + offs_r[:, None] * s_do_r + col[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + offs_r * G + g, mask=r_ok, other=0.0)
        sig = tl.sigmoid(z)
        silu = z * sig
        dsilu = sig * (1.0 + z * (1.0 - sig))
        if BEFORE:
            n = y * rstd[:, None]
            dz = dout * n * w[None, :] * dsilu
            dn = dout * silu * w[None, :]
            dw += tl.sum(dout * silu * n, axis=0)
        else:
            n = y * silu * rstd[:, None]
            dn = dout * w[None, :]
            dw += tl.sum(dout * n, axis=0)
        if SPANNING:  # sum(dn * n) over the whole group, from every rank that holds part of it
            dot = tl.load(dot_ptr + offs_r, mask=r_ok, other=0.0)
        else:
            dot = tl.sum(dn * n, axis=1)
        du = rstd[:, None] * (dn - n * (dot / width)[:, None])
        if BEFORE:
            dy = du
        else:
            dy = du * silu
            dz = du * y * dsilu
        tl.store(dy_ptr + offs_r[:, None] * s_dy_r + col[None, :], dy.to(dy_ptr.dtype.element_ty), mask=mask)
        tl.store(dz_ptr + offs_r[:, None] * s_dz_r + col[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_part_ptr + pid_r * D + col, dw, mask=d_ok)


@triton.jit
def _gnorm_row_sum_kernel(y_ptr, z_ptr, w_ptr, rstd_ptr, dout_ptr, out_ptr, R, D, s_y_r, s_z_r, s_do_r,
                          BEFORE: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    # this rank's part of a spanning group's row statistic: sum(u^2) forward, sum(dn * n) backward
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    r_ok = offs_r < R
    d_ok = offs_d < D
    mask = r_ok[:, None] & d_ok[None, :]
    y = tl.load(y_ptr + offs_r[:, None] * s_y_r + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs_r[:, None] * s_z_r + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    silu = z * tl.sigmoid(z)
    u = y if BEFORE else y * silu
    if BACKWARD:
        dout = tl.load(dout_ptr + offs_r[:, None] * s_do_r + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + offs_r, mask=r_ok, other=0.0)
        dn = dout * w[None, :]
        if BEFORE:
            dn = dn * silu
        total = tl.sum(dn * u, axis=1) * rstd
    else:
        total = tl.sum(u * u, axis=1)
    tl.store(out_ptr + offs_r, total, mask=r_ok)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., d] -> [rows, d] with unit channel stride (a view when the layout allows)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def gnorm_forward(y, z, weight, n_groups, eps, norm_before_gate, sum_squares=None, group_width=None):
    """out and the rstd of every row and group [rows, G]. sum_squares [rows] (with group_width, the
    whole group's width): one spanning group whose sum of squares the caller gathered over the ranks."""
    d = y.shape[-1]
    y2, z2 = _rows(y), _rows(z)
    rows = y2.shape[0]
    dg = d // n_groups
    spanning = sum_squares is not None
    out = torch.empty(rows, d, device=y.device, dtype=y.dtype)
    rstd = torch.empty(rows, n_groups, device=y.device, dtype=torch.float32)
    block_d = triton.next_power_of_2(dg)
    tile_r, warps = _tiling(block_d)
    _gnorm_fwd_kernel[(triton.cdiv(rows, tile_r), n_groups)](
        y2, z2, weight, sum_squares if spanning else rstd, out, rstd, rows, dg, n_groups, y2.stride(0), z2.stride(0),
        out.stride(0), float(eps), float(group_width if spanning else dg), BEFORE=bool(norm_before_gate),
        SPANNING=spanning, BLOCK_R=tile_r, BLOCK_D=block_d, num_warps=warps)
    return out.view(y.shape), rstd


def gnorm_row_sums(y, z, norm_before_gate, weight=None, rstd=None, dout=None):
    """[rows] fp32, this rank's part of a spanning group's statistic: the sum of squares of the normalised
    input (forward), or with weight, rstd and dout the sum of dn * n the backward needs."""
    y2, z2 = _rows(y), _rows(z)
    rows, d = y2.shape
    backward = dout is not None
    do2 = _rows(dout) if backward else y2
    out = torch.empty(rows, device=y.device, dtype=torch.float32)
    block_d = triton.next_power_of_2(d)
    tile_r, warps = _tiling(block_d)
    _gnorm_row_sum_kernel[(triton.cdiv(rows, tile_r),)](
        y2, z2, weight if backward else y2, rstd if backward else out, do2, out, rows, d, y2.stride(0), z2.stride(0),
        do2.stride(0), BEFORE=bool(norm_before_gate), BACKWARD=backward, BLOCK_R=tile_r, BLOCK_D=block_d,
        num_warps=warps)
    return out


def gnorm_backward(dout, y, z, weight, rstd, n_groups, norm_before_gate, dot=None, group_width=None):
    """dy, dz, dw. dot [rows] (with group_width): a spanning group's sum of dn * n over the ranks."""
    d = y.shape[-1]
    y2, z2, do2 = _rows(y), _rows(z), _rows(dout)
    rows = y2.shape[0]
    dg = d // n_groups
    spanning = dot is not None
    dy = torch.empty(rows, d, device=y.device, dtype=y.dtype)
    dz = torch.empty(rows, d, device=z.device, dtype=z.dtype)
    num_r = triton.cdiv(rows, BLOCK_R)
    dw_part = torch.empty(num_r, d, device=y.device, dtype=torch.float32)
    block_d = triton.next_power_of_2(dg)
    tile_r, warps = _tiling(block_d)
    _gnorm_bwd_kernel[(num_r, n_groups)](
        y2, z2, weight, rstd, dot if spanning else rstd, do2, dy, dz, dw_part, rows, dg, n_groups, d, y2.stride(0),
        z2.stride(0), do2.stride(0), dy.stride(0), dz.stride(0), float(group_width if spanning else dg),
        BEFORE=bool(norm_before_gate), SPANNING=spanning, BLOCK_R=BLOCK_R, TILE_R=tile_r, BLOCK_D=block_d,
        num_warps=warps)
    return dy.view(y.shape), dz.view(z.shape), dw_part.sum(0)
