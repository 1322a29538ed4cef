"""Triton kernels for the chunked SSD scan, forward and backward. Twin: `ssd.ssd_chunked`.

Notation (per batch b, chunk c of Q tokens, head h in group g, head dim P, state N):
    dt_l  = clamp(softplus(dt_raw_l + dt_bias))           a_l = cumsum_{j<=l} dt_j * A   (within the chunk)
    CB    = C B^T per group                              [Q, Q]
    y_l   = sum_{s<=l} CB[l,s] e^{a_l - a_s} dt_s x_s    (intra-chunk)
          + e^{a_l} C_l S_c^T                            (state S_c [P, N] entering the chunk)
          + D x_l
    S_{c+1} = e^{a_last} S_c + sum_s e^{a_last - a_s} dt_s x_s B_s^T
Document resets (seq_idx) zero every term that would cross a change of document.

Forward: dt -> CB -> chunk states -> state passing -> chunk scan (5 launches).
Backward: local state grads -> reverse state passing -> dCB (+ intra dt/dA terms) -> dB, dC (+ state terms)
          -> dx -> dt/dA/dt_bias (6 launches), all accumulations in fp32 and no atomics.
The last, partial chunk is handled by masked loads (dt = 0 there, which leaves the state untouched).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .triton_autotune import autotune

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# Under the interpreter each kernel runs one small config. Its GPU candidates stay reachable here, by the
# id of that one-config list, so that a test can run the GPU's block shapes through the interpreter too.
INTERPRETED_GPU_CONFIGS: dict[int, list] = {}


def _configs(gpu: list[tuple[dict, int, int]], interpret: dict) -> list:
    """Autotune candidates for the GPU; a single small one under the CPU interpreter."""
    candidates = [triton.Config(meta, num_warps=w, num_stages=s) for meta, w, s in gpu]
    if not INTERPRET:
        return candidates
    small = [triton.Config(interpret, num_warps=1, num_stages=1)]
    INTERPRETED_GPU_CONFIGS[id(small)] = candidates
    return small


# ---------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _softplus(x):
    # log1p(exp(x)) with torch's threshold of 20; log1p via the (w - 1) correction, exact for tiny exp(x)
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _doc(seq_ptr, s_seq_l, t, L):
    # document of token t (clamped into [0, L) so padded positions belong to the last document)
    t = tl.minimum(tl.maximum(t, 0), L - 1)
    return tl.load(seq_ptr + t * s_seq_l)


# ---------------------------------------------------------------------------------------------------
# forward 1: dt (bias, softplus, clamp) and its within-chunk cumulative decay a = cumsum(dt * A)
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _dt_fwd_kernel(dt_ptr, bias_ptr, A_ptr, dt_out_ptr, a_out_ptr, L, H, nchunks,
                   s_dt_b, s_dt_l, s_dt_h, dt_min, dt_max,
                   HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
                   CHUNK: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    offs_l = tl.arange(0, CHUNK)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = offs_h < H
    t = pid_c * CHUNK + offs_l
    mask = (t < L)[:, None] & h_ok[None, :]
    dt = tl.load(dt_ptr + pid_b * s_dt_b + t[:, None] * s_dt_l + offs_h[None, :] * s_dt_h, mask=mask,
                 other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_h, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    if SOFTPLUS:
        dt = _softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dt = tl.where(mask, dt, 0.0)
    A = tl.load(A_ptr + offs_h, mask=h_ok, other=0.0).to(tl.float32)
    a = tl.cumsum(dt * A[None, :], axis=0)
    out = ((pid_b * H + offs_h[None, :]) * nchunks + pid_c) * CHUNK + offs_l[:, None]
    tl.store(dt_out_ptr + out, dt, mask=h_ok[None, :])
    tl.store(a_out_ptr + out, a, mask=h_ok[None, :])


# ---------------------------------------------------------------------------------------------------
# forward 2: CB = C B^T per chunk and group (fp32)
# ---------------------------------------------------------------------------------------------------
@autotune(
    configs=_configs([(dict(BLOCK_M=64, BLOCK_S=64, BLOCK_K=64), 4, 3),
                      (dict(BLOCK_M=128, BLOCK_S=128, BLOCK_K=32), 8, 3),
                      (dict(BLOCK_M=64, BLOCK_S=128, BLOCK_K=64), 4, 3)],
                     dict(BLOCK_M=16, BLOCK_S=16, BLOCK_K=16)),
    key=["CHUNK", "N"])
@triton.jit
def _cb_fwd_kernel(C_ptr, B_ptr, cb_ptr, L, nchunks, G, N,
                   s_C_b, s_C_l, s_C_g, s_C_n, s_B_b, s_B_l, s_B_g, s_B_n,
                   CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_bc = tl.program_id(0)
    pid_b = (pid_bc // nchunks).to(tl.int64)
    pid_c = pid_bc % nchunks
    pid_g = tl.program_id(1)
    num_s = tl.cdiv(CHUNK, BLOCK_S)
    pid_m = tl.program_id(2) // num_s
    pid_s = tl.program_id(2) % num_s
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    t_m = pid_c * CHUNK + offs_m
    t_s = pid_c * CHUNK + offs_s
    m_ok = (offs_m < CHUNK) & (t_m < L)
    s_ok = (offs_s < CHUNK) & (t_s < L)
    C_base = C_ptr + pid_b * s_C_b + pid_g * s_C_g
    B_base = B_ptr + pid_b * s_B_b + pid_g * s_B_g
    acc = tl.zeros((BLOCK_M, BLOCK_S), dtype=tl.float32)
    for k0 in range(0, N, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < N
        c = tl.load(C_base + t_m[:, None] * s_C_l + offs_k[None, :] * s_C_n, mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)
        bT = tl.load(B_base + t_s[None, :] * s_B_l + offs_k[:, None] * s_B_n, mask=s_ok[None, :] & k_ok[:, None],
                     other=0.0)
        acc += tl.dot(c, bT)
    out = cb_ptr + ((pid_b * nchunks + pid_c) * G + pid_g) * CHUNK * CHUNK
    tl.store(out + offs_m[:, None] * CHUNK + offs_s[None, :], acc,
             mask=(offs_m < CHUNK)[:, None] & (offs_s < CHUNK)[None, :])


# ---------------------------------------------------------------------------------------------------
# forward 3 / backward 1: out[b,c,h] = sum_l X[l]^T w_l Y[l]  ([P, N], fp32)
#   MODE 0 (chunk states):    X = x,  Y = B, w_l = dt_l e^{a_last - a_l} [doc_l == doc at chunk end]
#   MODE 1 (local state grad): X = dy, Y = C, w_l = e^{a_l}             [doc_l == doc entering chunk]
# ---------------------------------------------------------------------------------------------------
@autotune(
    configs=_configs([(dict(BLOCK_P=64, BLOCK_N=64, BLOCK_L=64), 4, 3),
                      (dict(BLOCK_P=64, BLOCK_N=128, BLOCK_L=64), 4, 3),
                      (dict(BLOCK_P=64, BLOCK_N=128, BLOCK_L=32), 4, 4),
                      (dict(BLOCK_P=128, BLOCK_N=128, BLOCK_L=32), 8, 3)],
                     dict(BLOCK_P=16, BLOCK_N=16, BLOCK_L=16)),
    key=["CHUNK", "P", "N", "MODE"])
@triton.jit
def _chunk_state_kernel(X_ptr, Y_ptr, dt_ptr, a_ptr, seq_ptr, out_ptr, L, H, G, P, N, nchunks,
                        s_X_b, s_X_l, s_X_h, s_X_p, s_Y_b, s_Y_l, s_Y_g, s_Y_n, s_seq_b, s_seq_l,
                        MODE: tl.constexpr, HAS_SEQ: tl.constexpr, CHUNK: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_bc = tl.program_id(0)
    pid_b = (pid_bc // nchunks).to(tl.int64)
    pid_c = pid_bc % nchunks
    pid_h = tl.program_id(1)
    pid_g = pid_h // (H // G)
    num_n = tl.cdiv(N, BLOCK_N)
    offs_p = (tl.program_id(2) // num_n) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = (tl.program_id(2) % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    p_ok = offs_p < P
    n_ok = offs_n < N
    dt_base = ((pid_b * H + pid_h) * nchunks + pid_c) * CHUNK
    a_last = tl.load(a_ptr + dt_base + CHUNK - 1)
    if HAS_SEQ:
        seq_base = seq_ptr + pid_b * s_seq_b
        if MODE == 0:
            doc_ref = _doc(seq_base, s_seq_l, pid_c * CHUNK + CHUNK - 1, L)
        else:
            doc_ref = _doc(seq_base, s_seq_l, pid_c * CHUNK - 1, L)
    X_base = X_ptr + pid_b * s_X_b + pid_h * s_X_h
    Y_base = Y_ptr + pid_b * s_Y_b + pid_g * s_Y_g
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for l0 in range(0, CHUNK, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        t = pid_c * CHUNK + offs_l
        l_ok = (offs_l < CHUNK) & (t < L)
        xT = tl.load(X_base + t[None, :] * s_X_l + offs_p[:, None] * s_X_p, mask=l_ok[None, :] & p_ok[:, None],
                     other=0.0)
        y = tl.load(Y_base + t[:, None] * s_Y_l + offs_n[None, :] * s_Y_n, mask=l_ok[:, None] & n_ok[None, :],
                    other=0.0)
        a_l = tl.load(a_ptr + dt_base + offs_l, mask=offs_l < CHUNK, other=0.0)
        if MODE == 0:
            dt_l = tl.load(dt_ptr + dt_base + offs_l, mask=offs_l < CHUNK, other=0.0)
            w = dt_l * tl.exp(tl.minimum(a_last - a_l, 0.0))
        else:
            w = tl.exp(a_l)
        if HAS_SEQ:
            w = tl.where(_doc(seq_base, s_seq_l, t, L) == doc_ref, w, 0.0)
        w = tl.where(l_ok, w, 0.0)
        acc += tl.dot((xT.to(tl.float32) * w[None, :]).to(y.dtype), y)
    out = out_ptr + ((pid_b * nchunks + pid_c) * H + pid_h) * P * N
    tl.store(out + offs_p[:, None] * N + offs_n[None, :], acc, mask=p_ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------------------------------------------
# forward 4: state passing across chunks (sequential in c); writes the state entering each chunk
# Each program walks the chunks for BLOCK elements of one head's state: the serial loop is latency-bound,
# and the best trade of programs in flight against loads per thread is the GPU's to find (autotuned); small
# blocks under the interpreter, so that the tests cover several blocks per head.
# ---------------------------------------------------------------------------------------------------
_STATE_PASS_CONFIGS = _configs([(dict(BLOCK=block), warps, 1)
                                for block, warps in ((256, 2), (512, 4), (1024, 4), (1024, 8), (2048, 8))],
                               dict(BLOCK=64))


@autotune(configs=_STATE_PASS_CONFIGS, key=["PN", "nchunks", "HAS_SEQ"])
@triton.jit
def _state_pass_fwd_kernel(local_ptr, enter_ptr, final_ptr, init_ptr, a_ptr, seq_ptr, L, H, nchunks, PN,
                           s_seq_b, s_seq_l, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
                           CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1)
    offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < PN
    if HAS_INIT:
        state = tl.load(init_ptr + (pid_b * H + pid_h) * PN + offs, mask=ok, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BLOCK,), dtype=tl.float32)
    # pointers to chunk 0, advanced one chunk per iteration (no int32 chunk offsets to overflow)
    chunk_step = H * PN
    local_ptrs = local_ptr + (pid_b * nchunks * H + pid_h) * PN + offs
    enter_ptrs = enter_ptr + (pid_b * nchunks * H + pid_h) * PN + offs
    a_last_ptr = a_ptr + (pid_b * H + pid_h) * nchunks * CHUNK + CHUNK - 1
    # software pipelining: chunk c+1's loads are issued before chunk c's arithmetic, so each step of the
    # serial loop overlaps the next step's memory latency instead of waiting on it
    next_local = tl.load(local_ptrs, mask=ok, other=0.0)
    next_a_last = tl.load(a_last_ptr)
    if HAS_SEQ:
        seq_base = seq_ptr + pid_b * s_seq_b
        doc_prev = _doc(seq_base, s_seq_l, 0, L)
        next_doc_end = _doc(seq_base, s_seq_l, CHUNK - 1, L)
    for c in range(nchunks):
        local = next_local
        a_last = next_a_last
        has_next = c + 1 < nchunks  # the last step prefetches nothing
        local_ptrs += chunk_step
        a_last_ptr += CHUNK
        # (offs < PN or 0) rather than ok & has_next: the interpreter mishandles & with a scalar mask
        next_local = tl.load(local_ptrs, mask=offs < tl.where(has_next, PN, 0), other=0.0)
        next_a_last = tl.load(a_last_ptr, mask=has_next, other=0.0)
        if HAS_SEQ:
            doc_end = next_doc_end
            next_doc_end = _doc(seq_base, s_seq_l, (c + 1) * CHUNK + CHUNK - 1, L)  # clamped: in bounds
        tl.store(enter_ptrs, state, mask=ok)
        enter_ptrs += chunk_step
        scale = tl.exp(a_last)
        if HAS_SEQ:
            scale = tl.where(doc_end == doc_prev, scale, 0.0)
            doc_prev = doc_end
        state = state * scale + local
    tl.store(final_ptr + (pid_b * H + pid_h) * PN + offs, state, mask=ok)


# ---------------------------------------------------------------------------------------------------
# forward 5: chunk scan, y = inter-chunk (C S^T) + intra-chunk (masked CB @ x) + D x
# ---------------------------------------------------------------------------------------------------
@autotune(
    configs=_configs([(dict(BLOCK_M=64, BLOCK_P=64, BLOCK_K=64, BLOCK_KN=64), 4, 3),
                      (dict(BLOCK_M=128, BLOCK_P=64, BLOCK_K=64, BLOCK_KN=64), 8, 3),
                      (dict(BLOCK_M=64, BLOCK_P=64, BLOCK_K=32, BLOCK_KN=128), 4, 2),
                      (dict(BLOCK_M=64, BLOCK_P=128, BLOCK_K=64, BLOCK_KN=64), 8, 3)],
                     dict(BLOCK_M=16, BLOCK_P=16, BLOCK_K=16, BLOCK_KN=16)),
    key=["CHUNK", "P", "N"])
@triton.jit
def _chunk_scan_fwd_kernel(x_ptr, C_ptr, cb_ptr, dt_ptr, a_ptr, enter_ptr, D_ptr, seq_ptr, y_ptr,
                           L, H, G, P, N, nchunks,
                           s_x_b, s_x_l, s_x_h, s_x_p, s_C_b, s_C_l, s_C_g, s_C_n, s_seq_b, s_seq_l,
                           s_y_b, s_y_l, s_y_h, s_y_p,
                           HAS_D: tl.constexpr, HAS_SEQ: tl.constexpr, CHUNK: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_KN: tl.constexpr):
    pid_bc = tl.program_id(0)
    pid_b = (pid_bc // nchunks).to(tl.int64)
    pid_c = pid_bc % nchunks
    pid_h = tl.program_id(1)
    pid_g = pid_h // (H // G)
    num_p = tl.cdiv(P, BLOCK_P)
    pid_m = tl.program_id(2) // num_p
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = (tl.program_id(2) % num_p) * BLOCK_P + tl.arange(0, BLOCK_P)
    t_m = pid_c * CHUNK + offs_m
    m_ok = (offs_m < CHUNK) & (t_m < L)
    p_ok = offs_p < P
    dt_base = ((pid_b * H + pid_h) * nchunks + pid_c) * CHUNK
    a_m = tl.load(a_ptr + dt_base + offs_m, mask=offs_m < CHUNK, other=0.0)
    x_base = x_ptr + pid_b * s_x_b + pid_h * s_x_h
    C_base = C_ptr + pid_b * s_C_b + pid_g * s_C_g

    # the state entering the chunk, read through C
    S_base = enter_ptr + ((pid_b * nchunks + pid_c) * H + pid_h) * P * N
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_KN):
        offs_n = n0 + tl.arange(0, BLOCK_KN)
        n_ok = offs_n < N
        c = tl.load(C_base + t_m[:, None] * s_C_l + offs_n[None, :] * s_C_n, mask=m_ok[:, None] & n_ok[None, :],
                    other=0.0)
        sT = tl.load(S_base + offs_p[None, :] * N + offs_n[:, None], mask=p_ok[None, :] & n_ok[:, None], other=0.0)
        acc += tl.dot(c, sT.to(c.dtype))
    scale_m = tl.exp(a_m)
    if HAS_SEQ:
        seq_base = seq_ptr + pid_b * s_seq_b
        doc_m = _doc(seq_base, s_seq_l, t_m, L)
        doc_enter = _doc(seq_base, s_seq_l, pid_c * CHUNK - 1, L)
        scale_m = tl.where(doc_m == doc_enter, scale_m, 0.0)
    acc = acc * scale_m[:, None]

    # intra-chunk: only key blocks at or before this query block
    cb_base = cb_ptr + ((pid_b * nchunks + pid_c) * G + pid_g) * CHUNK * CHUNK
    hi = tl.minimum((pid_m + 1) * BLOCK_M, CHUNK)
    for k0 in range(0, hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        t_k = pid_c * CHUNK + offs_k
        k_in = offs_k < CHUNK
        cb = tl.load(cb_base + offs_m[:, None] * CHUNK + offs_k[None, :],
                     mask=(offs_m < CHUNK)[:, None] & k_in[None, :], other=0.0)
        a_k = tl.load(a_ptr + dt_base + offs_k, mask=k_in, other=0.0)
        dt_k = tl.load(dt_ptr + dt_base + offs_k, mask=k_in, other=0.0)
        keep = offs_k[None, :] <= offs_m[:, None]
        if HAS_SEQ:
            keep = keep & (_doc(seq_base, s_seq_l, t_k, L)[None, :] == doc_m[:, None])
        w = tl.where(keep, cb * tl.exp(tl.minimum(a_m[:, None] - a_k[None, :], 0.0)) * dt_k[None, :], 0.0)
        xk = tl.load(x_base + t_k[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                     mask=(k_in & (t_k < L))[:, None] & p_ok[None, :], other=0.0)
        acc += tl.dot(w.to(xk.dtype), xk)

    x_m = tl.load(x_base + t_m[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=m_ok[:, None] & p_ok[None, :],
                  other=0.0)
    if HAS_D:
        acc += tl.load(D_ptr + pid_h).to(tl.float32) * x_m.to(tl.float32)
    tl.store(y_ptr + pid_b * s_y_b + t_m[:, None] * s_y_l + pid_h * s_y_h + offs_p[None, :] * s_y_p,
             acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & p_ok[None, :])


# ---------------------------------------------------------------------------------------------------
# backward 2: reverse state passing. In place: the local state grads become dCS_c, the gradient of the
# state chunk c adds (that is, of the state leaving chunk c). The decay's gradient, which needs dCS_c and
# the entering state together, is left to the dB/dC kernel: a reduction here would sit in the serial loop.
# ---------------------------------------------------------------------------------------------------
@autotune(configs=_STATE_PASS_CONFIGS, key=["PN", "nchunks", "HAS_SEQ"],
                 restore_value=["g_ptr"])  # in place: each timed config starts from the same local grads
@triton.jit
def _state_pass_bwd_kernel(g_ptr, dfinal_ptr, dinit_ptr, a_ptr, seq_ptr, L, H, nchunks, PN, s_seq_b, s_seq_l,
                           HAS_DFINAL: tl.constexpr, HAS_SEQ: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1)
    offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < PN
    if HAS_DFINAL:
        dstate = tl.load(dfinal_ptr + (pid_b * H + pid_h) * PN + offs, mask=ok, other=0.0).to(tl.float32)
    else:
        dstate = tl.zeros((BLOCK,), dtype=tl.float32)
    # pointers to the last chunk, moved back one chunk per iteration
    last = nchunks - 1
    chunk_step = H * PN
    g_ptrs = g_ptr + ((pid_b * nchunks + last) * H + pid_h) * PN + offs
    a_last_ptr = a_ptr + ((pid_b * H + pid_h) * nchunks + last) * CHUNK + CHUNK - 1
    # software pipelining as in the forward: chunk c-1's loads are issued before chunk c's arithmetic (safe
    # in place: chunk c-1's g is not the location overwritten at step c)
    next_g = tl.load(g_ptrs, mask=ok, other=0.0)
    next_a_last = tl.load(a_last_ptr)
    if HAS_SEQ:
        # the document entering chunk c is the one ending chunk c-1: one new document id per step
        seq_base = seq_ptr + pid_b * s_seq_b
        doc_end = _doc(seq_base, s_seq_l, last * CHUNK + CHUNK - 1, L)
        next_doc_enter = _doc(seq_base, s_seq_l, last * CHUNK - 1, L)
    for i in range(nchunks):
        c = last - i
        g = next_g
        a_last = next_a_last
        g_here = g_ptrs
        has_next = c > 0  # the last step (chunk 0) prefetches nothing
        g_ptrs -= chunk_step
        a_last_ptr -= CHUNK
        next_g = tl.load(g_ptrs, mask=offs < tl.where(has_next, PN, 0), other=0.0)
        next_a_last = tl.load(a_last_ptr, mask=has_next, other=0.0)
        if HAS_SEQ:
            doc_enter = next_doc_enter
            next_doc_enter = _doc(seq_base, s_seq_l, (c - 1) * CHUNK - 1, L)  # clamped: in bounds
        tl.store(g_here, dstate, mask=ok)
        scale = tl.exp(a_last)
        if HAS_SEQ:
            scale = tl.where(doc_end == doc_enter, scale, 0.0)
            doc_end = doc_enter
        dstate = dstate * scale + g
    tl.store(dinit_ptr + (pid_b * H + pid_h) * PN + offs, dstate, mask=ok)


# ---------------------------------------------------------------------------------------------------
# backward 3: dCB[l,s] = sum_h (dy_l . x_s) e^{a_l - a_s} dt_s, with two by-products per head:
#   ddt_intra partial (over this row block) = sum_l (dy_l . x_s) e^{a_l-a_s} CB[l,s]   (stored per row block)
#   da row term = sum_s (dy_l . x_s) e^{a_l-a_s} CB[l,s] dt_s
# BLOCK_M is chosen by the caller (it fixes the partial buffer's layout), so autotuning varies warps only.
# ---------------------------------------------------------------------------------------------------
@autotune(
    configs=_configs([({}, 4, 1), ({}, 8, 1), ({}, 4, 2), ({}, 8, 2)], {}),
    key=["CHUNK", "P", "BLOCK_M", "HPG"])
@triton.jit
def _dcb_bwd_kernel(dy_ptr, x_ptr, cb_ptr, dt_ptr, a_ptr, seq_ptr, dcb_ptr, ddt_part_ptr, darow_ptr,
                    L, H, G, P, nchunks,
                    s_dy_b, s_dy_l, s_dy_h, s_dy_p, s_x_b, s_x_l, s_x_h, s_x_p, s_seq_b, s_seq_l,
                    HPG: tl.constexpr, HAS_SEQ: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_P: tl.constexpr):
    pid_bc = tl.program_id(0)
    pid_b = (pid_bc // nchunks).to(tl.int64)
    pid_c = pid_bc % nchunks
    pid_g = tl.program_id(1)
    pid_m = tl.program_id(2)
    num_m = tl.num_programs(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_s = tl.arange(0, CHUNK)
    offs_p = tl.arange(0, BLOCK_P)
    t_m = pid_c * CHUNK + offs_m
    t_s = pid_c * CHUNK + offs_s
    m_ok = t_m < L
    s_ok = t_s < L
    p_ok = offs_p < P
    cb_base = cb_ptr + ((pid_b * nchunks + pid_c) * G + pid_g) * CHUNK * CHUNK
    keep = offs_s[None, :] <= offs_m[:, None]
    if HAS_SEQ:
        seq_base = seq_ptr + pid_b * s_seq_b
        keep = keep & (_doc(seq_base, s_seq_l, t_m, L)[:, None] == _doc(seq_base, s_seq_l, t_s, L)[None, :])
    cb = tl.load(cb_base + offs_m[:, None] * CHUNK + offs_s[None, :])
    cb = tl.where(keep, cb, 0.0)
    dcb = tl.zeros((BLOCK_M, CHUNK), dtype=tl.float32)
    for hh in range(HPG):
        h = pid_g * HPG + hh
        dt_base = ((pid_b * H + h) * nchunks + pid_c) * CHUNK
        a_m = tl.load(a_ptr + dt_base + offs_m)
        a_s = tl.load(a_ptr + dt_base + offs_s)
        dt_s = tl.load(dt_ptr + dt_base + offs_s)
        decay = tl.where(keep, tl.exp(tl.minimum(a_m[:, None] - a_s[None, :], 0.0)), 0.0)
        dy_m = tl.load(dy_ptr + pid_b * s_dy_b + t_m[:, None] * s_dy_l + h * s_dy_h + offs_p[None, :] * s_dy_p,
                       mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        xT = tl.load(x_ptr + pid_b * s_x_b + t_s[None, :] * s_x_l + h * s_x_h + offs_p[:, None] * s_x_p,
                     mask=s_ok[None, :] & p_ok[:, None], other=0.0)
        TL = tl.dot(dy_m, xT) * decay  # (dy_l . x_s) e^{a_l - a_s}, masked
        dcb += TL * dt_s[None, :]
        TLC = TL * cb
        tl.store(ddt_part_ptr + (dt_base * num_m) + pid_m * CHUNK + offs_s, tl.sum(TLC, axis=0))
        tl.store(darow_ptr + dt_base + offs_m, tl.sum(TLC * dt_s[None, :], axis=1))
    tl.store(dcb_ptr + ((pid_b * nchunks + pid_c) * G + pid_g) * CHUNK * CHUNK + offs_m[:, None] * CHUNK
             + offs_s[None, :], dcb)


# ---------------------------------------------------------------------------------------------------
# backward 4: dC, dB per group (rows of one chunk), and the per-head state terms of da:
#   dC_l = sum_s dCB[l,s] B_s + sum_h e^{a_l} dy_l S_h          da_inter_l = e^{a_l} dy_l . (S C_l)
#   dB_s = sum_l dCB[l,s] C_l + sum_h w_s x_s dCS_h             dw_s       = x_s . (dCS B_s)
# and (first row block only) the passing decay's term d a_last = e^{a_last} sum(dCS * S), zero where a
# document starts inside the chunk.
# ---------------------------------------------------------------------------------------------------
# Programs split the state's N columns too (BLOCK_N), so that the entering state and its gradient, [P, N]
# fp32 per head, need not sit whole in one program's registers: at falcon-h1-7b (N = 256, P = 128) whole
# ones spilled, 1.7 ms a layer at 2 x 4096 tokens on an H100. The row sums over N (the state terms of da and
# dw, and d a_last) are then partial, one slot per column block, summed by the caller. A state of up to
# WHOLE_STATE columns (falcon-h1-0.5b's 128) is held whole, by the first four candidates only: one slot,
# written where the caller reads it, and none of the zeroing and summing the split takes.
WHOLE_STATE = 16 if INTERPRET else 128


def _state_candidates(candidates: list, nargs: dict) -> list:
    """The candidates that hold the state whole where it is at most WHOLE_STATE columns (all of them where
    none does, rather than none); every candidate beyond."""
    whole = [config for config in candidates if config.kwargs["BLOCK_N"] >= nargs["N"]]
    return whole if nargs["N"] <= WHOLE_STATE and whole else candidates


@autotune(
    configs=_configs([(dict(BLOCK_M=64, BLOCK_K=32, BLOCK_N=128), 8, 2),
                      (dict(BLOCK_M=32, BLOCK_K=64, BLOCK_N=128), 4, 2),
                      (dict(BLOCK_M=64, BLOCK_K=64, BLOCK_N=128), 8, 1),
                      (dict(BLOCK_M=32, BLOCK_K=32, BLOCK_N=128), 4, 3),
                      (dict(BLOCK_M=64, BLOCK_K=64, BLOCK_N=64), 8, 1),
                      (dict(BLOCK_M=64, BLOCK_K=32, BLOCK_N=64), 4, 2),
                      (dict(BLOCK_M=32, BLOCK_K=32, BLOCK_N=64), 4, 3),
                      (dict(BLOCK_M=32, BLOCK_K=32, BLOCK_N=32), 4, 2)],
                     dict(BLOCK_M=16, BLOCK_K=16, BLOCK_N=16)),
    key=["CHUNK", "P", "N", "HPG"], keep=_state_candidates,
    # a candidate with fewer column blocks leaves slots alone: zeros before each timed one and the chosen one
    reset_to_zero=["dainter_ptr", "dw_ptr", "dalast_ptr"])
@triton.jit
def _dbc_bwd_kernel(dy_ptr, x_ptr, B_ptr, C_ptr, dcb_ptr, dt_ptr, a_ptr, enter_ptr, dcs_ptr, seq_ptr,
                    dB_ptr, dC_ptr, dainter_ptr, dw_ptr, dalast_ptr, L, H, G, P, N, nchunks,
                    s_dy_b, s_dy_l, s_dy_h, s_dy_p, s_x_b, s_x_l, s_x_h, s_x_p,
                    s_B_b, s_B_l, s_B_g, s_B_n, s_C_b, s_C_l, s_C_g, s_C_n, s_seq_b, s_seq_l,
                    s_dB_b, s_dB_l, s_dB_g, s_dB_n, s_dC_b, s_dC_l, s_dC_g, s_dC_n, s_part, s_part_last,
                    HPG: tl.constexpr, HAS_SEQ: tl.constexpr, CHUNK: tl.constexpr, BLOCK_P: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_bc = tl.program_id(0)
    pid_b = (pid_bc // nchunks).to(tl.int64)
    pid_c = pid_bc % nchunks
    pid_g = tl.program_id(1)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = tl.program_id(2) // num_n
    pid_n = tl.program_id(2) % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = tl.arange(0, BLOCK_P)
    t_m = pid_c * CHUNK + offs_m
    m_in = offs_m < CHUNK
    m_ok = m_in & (t_m < L)
    n_ok = offs_n < N
    p_ok = offs_p < P
    B_base = B_ptr + pid_b * s_B_b + pid_g * s_B_g
    C_base = C_ptr + pid_b * s_C_b + pid_g * s_C_g
    dcb_base = dcb_ptr + ((pid_b * nchunks + pid_c) * G + pid_g) * CHUNK * CHUNK

    dC = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.minimum((pid_m + 1) * BLOCK_M, CHUNK), BLOCK_K):  # s <= l
        offs_k = k0 + tl.arange(0, BLOCK_K)
        t_k = pid_c * CHUNK + offs_k
        k_in = offs_k < CHUNK
        g = tl.load(dcb_base + offs_m[:, None] * CHUNK + offs_k[None, :], mask=m_in[:, None] & k_in[None, :],
                    other=0.0)
        b = tl.load(B_base + t_k[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                    mask=(k_in & (t_k < L))[:, None] & n_ok[None, :], other=0.0)
        dC += tl.dot(g.to(b.dtype), b)
    dB = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range((pid_m * BLOCK_M // BLOCK_K) * BLOCK_K, CHUNK, BLOCK_K):  # l >= s
        offs_k = k0 + tl.arange(0, BLOCK_K)
        t_k = pid_c * CHUNK + offs_k
        k_in = offs_k < CHUNK
        gT = tl.load(dcb_base + offs_k[None, :] * CHUNK + offs_m[:, None], mask=m_in[:, None] & k_in[None, :],
                     other=0.0)
        c = tl.load(C_base + t_k[:, None] * s_C_l + offs_n[None, :] * s_C_n,
                    mask=(k_in & (t_k < L))[:, None] & n_ok[None, :], other=0.0)
        dB += tl.dot(gT.to(c.dtype), c)

    C_m = tl.load(C_base + t_m[:, None] * s_C_l + offs_n[None, :] * s_C_n, mask=m_ok[:, None] & n_ok[None, :],
                  other=0.0).to(tl.float32)
    B_m = tl.load(B_base + t_m[:, None] * s_B_l + offs_n[None, :] * s_B_n, mask=m_ok[:, None] & n_ok[None, :],
                  other=0.0).to(tl.float32)
    if HAS_SEQ:
        seq_base = seq_ptr + pid_b * s_seq_b
        doc_m = _doc(seq_base, s_seq_l, t_m, L)
        doc_enter = _doc(seq_base, s_seq_l, pid_c * CHUNK - 1, L)
        doc_last = _doc(seq_base, s_seq_l, pid_c * CHUNK + CHUNK - 1, L)
        enter_ok = doc_m == doc_enter
        last_ok = doc_m == doc_last
        passes = doc_last == doc_enter  # no document starts inside the chunk
    for hh in range(HPG):
        h = pid_g * HPG + hh
        dt_base = ((pid_b * H + h) * nchunks + pid_c) * CHUNK
        a_m = tl.load(a_ptr + dt_base + offs_m, mask=m_in, other=0.0)
        dt_m = tl.load(dt_ptr + dt_base + offs_m, mask=m_in, other=0.0)
        a_last = tl.load(a_ptr + dt_base + CHUNK - 1)
        state_base = ((pid_b * nchunks + pid_c) * H + h) * P * N + offs_p[:, None] * N + offs_n[None, :]
        pn_ok = p_ok[:, None] & n_ok[None, :]
        S = tl.load(enter_ptr + state_base, mask=pn_ok, other=0.0)
        dCS = tl.load(dcs_ptr + state_base, mask=pn_ok, other=0.0)
        dy_m = tl.load(dy_ptr + pid_b * s_dy_b + t_m[:, None] * s_dy_l + h * s_dy_h + offs_p[None, :] * s_dy_p,
                       mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        x_m = tl.load(x_ptr + pid_b * s_x_b + t_m[:, None] * s_x_l + h * s_x_h + offs_p[None, :] * s_x_p,
                      mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        scale_m = tl.exp(a_m)
        w_m = dt_m * tl.exp(tl.minimum(a_last - a_m, 0.0))
        if HAS_SEQ:
            scale_m = tl.where(enter_ok, scale_m, 0.0)
            w_m = tl.where(last_ok, w_m, 0.0)
        u = tl.dot(dy_m, S.to(dy_m.dtype))  # [M, N]: dy_l S
        dC += u * scale_m[:, None]
        tl.store(dainter_ptr + pid_n * s_part + dt_base + offs_m, tl.sum(u * C_m, axis=1) * scale_m, mask=m_in)
        v = tl.dot(x_m, dCS.to(x_m.dtype))  # [M, N]: x_s dCS
        dB += v * w_m[:, None]
        tl.store(dw_ptr + pid_n * s_part + dt_base + offs_m, tl.sum(v * B_m, axis=1), mask=m_in)
        if pid_m == 0:
            da_last = tl.exp(a_last) * tl.sum(tl.sum(dCS * S, axis=1), axis=0)
            if HAS_SEQ:
                da_last = tl.where(passes, da_last, 0.0)
            tl.store(dalast_ptr + pid_n * s_part_last + (pid_b * H + h) * nchunks + pid_c, da_last)
    out_mask = m_ok[:, None] & n_ok[None, :]
    tl.store(dC_ptr + pid_b * s_dC_b + t_m[:, None] * s_dC_l + pid_g * s_dC_g + offs_n[None, :] * s_dC_n,
             dC.to(dC_ptr.dtype.element_ty), mask=out_mask)
    tl.store(dB_ptr + pid_b * s_dB_b + t_m[:, None] * s_dB_l + pid_g * s_dB_g + offs_n[None, :] * s_dB_n,
             dB.to(dB_ptr.dtype.element_ty), mask=out_mask)


# ---------------------------------------------------------------------------------------------------
# backward 5: dx_s = sum_{l>=s} CB[l,s] e^{a_l - a_s} dt_s dy_l + w_s B_s dCS^T + D dy_s, and partials of
# dD = sum dy . x (the tile of dy is already loaded here)
# ---------------------------------------------------------------------------------------------------
@autotune(
    configs=_configs([(dict(BLOCK_M=64, BLOCK_P=64, BLOCK_K=64, BLOCK_KN=64), 4, 3),
                      (dict(BLOCK_M=128, BLOCK_P=64, BLOCK_K=64, BLOCK_KN=64), 8, 3),
                      (dict(BLOCK_M=64, BLOCK_P=64, BLOCK_K=32, BLOCK_KN=128), 4, 2),
                      (dict(BLOCK_M=64, BLOCK_P=128, BLOCK_K=64, BLOCK_KN=64), 8, 3)],
                     dict(BLOCK_M=16, BLOCK_P=16, BLOCK_K=16, BLOCK_KN=16)),
    key=["CHUNK", "P", "N"],
    reset_to_zero=["dD_part_ptr"])  # as _dbc_bwd_kernel's partial sums: a slot per program of any candidate
@triton.jit
def _dx_bwd_kernel(dy_ptr, B_ptr, cb_ptr, dt_ptr, a_ptr, dcs_ptr, D_ptr, seq_ptr, dx_ptr, x_ptr, dD_part_ptr,
                   L, H, G, P, N, nchunks,
                   s_dy_b, s_dy_l, s_dy_h, s_dy_p, s_B_b, s_B_l, s_B_g, s_B_n, s_seq_b, s_seq_l,
                   s_dx_b, s_dx_l, s_dx_h, s_dx_p, s_x_b, s_x_l, s_x_h, s_x_p, dD_slots,
                   HAS_D: tl.constexpr, HAS_SEQ: tl.constexpr, CHUNK: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_KN: tl.constexpr):
    pid_bc = tl.program_id(0)
    pid_b = (pid_bc // nchunks).to(tl.int64)
    pid_c = pid_bc % nchunks
    pid_h = tl.program_id(1)
    pid_g = pid_h // (H // G)
    num_p = tl.cdiv(P, BLOCK_P)
    pid_m = tl.program_id(2) // num_p
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = (tl.program_id(2) % num_p) * BLOCK_P + tl.arange(0, BLOCK_P)
    t_m = pid_c * CHUNK + offs_m
    m_in = offs_m < CHUNK
    m_ok = m_in & (t_m < L)
    p_ok = offs_p < P
    dt_base = ((pid_b * H + pid_h) * nchunks + pid_c) * CHUNK
    a_m = tl.load(a_ptr + dt_base + offs_m, mask=m_in, other=0.0)
    dt_m = tl.load(dt_ptr + dt_base + offs_m, mask=m_in, other=0.0)
    a_last = tl.load(a_ptr + dt_base + CHUNK - 1)
    dy_base = dy_ptr + pid_b * s_dy_b + pid_h * s_dy_h
    B_base = B_ptr + pid_b * s_B_b + pid_g * s_B_g

    # the chunk-state term: w_s B_s dCS^T
    dcs_base = dcs_ptr + ((pid_b * nchunks + pid_c) * H + pid_h) * P * N
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_KN):
        offs_n = n0 + tl.arange(0, BLOCK_KN)
        n_ok = offs_n < N
        b = tl.load(B_base + t_m[:, None] * s_B_l + offs_n[None, :] * s_B_n, mask=m_ok[:, None] & n_ok[None, :],
                    other=0.0)
        gT = tl.load(dcs_base + offs_p[None, :] * N + offs_n[:, None], mask=p_ok[None, :] & n_ok[:, None], other=0.0)
        acc += tl.dot(b, gT.to(b.dtype))
    w_m = dt_m * tl.exp(tl.minimum(a_last - a_m, 0.0))
    if HAS_SEQ:
        seq_base = seq_ptr + pid_b * s_seq_b
        doc_m = _doc(seq_base, s_seq_l, t_m, L)
        w_m = tl.where(doc_m == _doc(seq_base, s_seq_l, pid_c * CHUNK + CHUNK - 1, L), w_m, 0.0)
    acc = acc * w_m[:, None]

    # intra-chunk: query blocks at or after this key block
    cb_base = cb_ptr + ((pid_b * nchunks + pid_c) * G + pid_g) * CHUNK * CHUNK
    for k0 in range((pid_m * BLOCK_M // BLOCK_K) * BLOCK_K, CHUNK, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        t_k = pid_c * CHUNK + offs_k
        k_in = offs_k < CHUNK
        cbT = tl.load(cb_base + offs_k[None, :] * CHUNK + offs_m[:, None], mask=m_in[:, None] & k_in[None, :],
                      other=0.0)
        a_k = tl.load(a_ptr + dt_base + offs_k, mask=k_in, other=0.0)
        keep = offs_k[None, :] >= offs_m[:, None]
        if HAS_SEQ:
            keep = keep & (_doc(seq_base, s_seq_l, t_k, L)[None, :] == doc_m[:, None])
        wT = tl.where(keep, cbT * tl.exp(tl.minimum(a_k[None, :] - a_m[:, None], 0.0)), 0.0) * dt_m[:, None]
        dyk = tl.load(dy_base + t_k[:, None] * s_dy_l + offs_p[None, :] * s_dy_p,
                      mask=(k_in & (t_k < L))[:, None] & p_ok[None, :], other=0.0)
        acc += tl.dot(wT.to(dyk.dtype), dyk)
    if HAS_D:
        dy_m = tl.load(dy_base + t_m[:, None] * s_dy_l + offs_p[None, :] * s_dy_p, mask=m_ok[:, None] & p_ok[None, :],
                       other=0.0)
        acc += tl.load(D_ptr + pid_h).to(tl.float32) * dy_m.to(tl.float32)
        # dD_h = sum dy . x: one partial per program, summed by the caller (no atomics: reproducible)
        x_m = tl.load(x_ptr + pid_b * s_x_b + t_m[:, None] * s_x_l + pid_h * s_x_h + offs_p[None, :] * s_x_p,
                      mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        tl.store(dD_part_ptr + (pid_bc * H + pid_h) * dD_slots + tl.program_id(2),
                 tl.sum(tl.sum(dy_m.to(tl.float32) * x_m.to(tl.float32), axis=1), axis=0))
    tl.store(dx_ptr + pid_b * s_dx_b + t_m[:, None] * s_dx_l + pid_h * s_dx_h + offs_p[None, :] * s_dx_p,
             acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & p_ok[None, :])


# ---------------------------------------------------------------------------------------------------
# backward 6: gather da per position, reverse cumsum to d(dt*A), then ddt, dA, softplus/clamp and dt_bias
#   da_l = row_l - ddt_intra_l dt_l + da_inter_l - dw_l w_l  (+ at the chunk end: sum_s dw_s w_s + passing term)
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _dt_bwd_kernel(dt_raw_ptr, bias_ptr, A_ptr, dt_ptr, a_ptr, seq_ptr, darow_ptr, ddt_part_ptr, dainter_ptr,
                   dw_ptr, dalast_ptr, ddt_raw_ptr, dA_part_ptr, dbias_part_ptr,
                   L, H, nchunks, NUM_M, s_dt_b, s_dt_l, s_dt_h, s_seq_b, s_seq_l, s_g_b, s_g_l, s_g_h,
                   dt_min, dt_max,
                   HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr, HAS_SEQ: tl.constexpr,
                   CHUNK: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    offs_l = tl.arange(0, CHUNK)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = offs_h < H
    hmask = h_ok[None, :]
    head_base = (pid_b * H + offs_h) * nchunks + pid_c  # [BLOCK_H]
    idx = head_base[None, :] * CHUNK + offs_l[:, None]  # [CHUNK, BLOCK_H]
    dt = tl.load(dt_ptr + idx, mask=hmask, other=0.0)
    a = tl.load(a_ptr + idx, mask=hmask, other=0.0)
    a_last = tl.load(a_ptr + head_base * CHUNK + CHUNK - 1, mask=h_ok, other=0.0)
    ddt_intra = tl.zeros((CHUNK, BLOCK_H), dtype=tl.float32)
    for j in range(NUM_M):
        ddt_intra += tl.load(ddt_part_ptr + (head_base[None, :] * NUM_M + j) * CHUNK + offs_l[:, None], mask=hmask,
                             other=0.0)
    row = tl.load(darow_ptr + idx, mask=hmask, other=0.0)
    dainter = tl.load(dainter_ptr + idx, mask=hmask, other=0.0)
    dw = tl.load(dw_ptr + idx, mask=hmask, other=0.0)
    decay_last = tl.exp(tl.minimum(a_last[None, :] - a, 0.0))
    t = pid_c * CHUNK + offs_l
    if HAS_SEQ:
        seq_base = seq_ptr + pid_b * s_seq_b
        same = _doc(seq_base, s_seq_l, t, L) == _doc(seq_base, s_seq_l, pid_c * CHUNK + CHUNK - 1, L)
        decay_last = tl.where(same[:, None], decay_last, 0.0)
    w = dt * decay_last
    da = row - ddt_intra * dt + dainter - dw * w
    extra = tl.sum(dw * w, axis=0) + tl.load(dalast_ptr + head_base, mask=h_ok, other=0.0)
    da += tl.where(offs_l[:, None] == CHUNK - 1, extra[None, :], 0.0)
    du = tl.sum(da, axis=0)[None, :] - tl.cumsum(da, axis=0) + da  # sum_{l >= j} da_l
    A = tl.load(A_ptr + offs_h, mask=h_ok, other=0.0).to(tl.float32)
    ddt = ddt_intra + dw * decay_last + du * A[None, :]
    tl.store(dA_part_ptr + head_base, tl.sum(du * dt, axis=0), mask=h_ok)

    valid = (t < L)[:, None] & hmask
    raw = tl.load(dt_raw_ptr + pid_b * s_dt_b + t[:, None] * s_dt_l + offs_h[None, :] * s_dt_h, mask=valid,
                  other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + offs_h, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_LIMIT:
        value = raw
        if SOFTPLUS:
            value = _softplus(raw)
        ddt = tl.where((value >= dt_min) & (value <= dt_max), ddt, 0.0)
    if SOFTPLUS:
        ddt = ddt * tl.sigmoid(raw)
    ddt = tl.where(valid, ddt, 0.0)
    tl.store(dbias_part_ptr + head_base, tl.sum(ddt, axis=0), mask=h_ok)
    tl.store(ddt_raw_ptr + pid_b * s_g_b + t[:, None] * s_g_l + offs_h[None, :] * s_g_h,
             ddt.to(ddt_raw_ptr.dtype.element_ty), mask=valid)


# ===================================================================================================
# Python drivers
# ===================================================================================================
def _seq_args(seq_idx: torch.Tensor | None, like: torch.Tensor):
    if seq_idx is None:
        return like, 0, 0  # any pointer; never read
    return seq_idx, seq_idx.stride(0), seq_idx.stride(1)


def _dot_block(n: int) -> int:
    """Smallest power of two >= n that tl.dot accepts (16)."""
    return max(16, triton.next_power_of_2(n))


def _limit(dt_min: float, dt_max: float) -> bool:
    return not (dt_min == 0.0 and dt_max == math.inf)


def ssd_forward(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False, dt_min=0.0,
                dt_max=math.inf, initial_state=None, seq_idx=None):
    """Returns y [B, L, H, P] (x's dtype), final state [B, H, P, N] fp32, and what the backward needs:
    dt [B, H, c, Q], a [B, H, c, Q], CB [B, c, G, Q, Q], entering states [B, c, H, P, N] (all fp32)."""
    batch, length, heads, head_dim = x.shape
    groups, state = B.shape[2], B.shape[3]
    Q = chunk_size
    nchunks = triton.cdiv(length, Q)
    f32 = dict(device=x.device, dtype=torch.float32)
    seq, s_seq_b, s_seq_l = _seq_args(seq_idx, x)

    dt_out = torch.empty(batch, heads, nchunks, Q, **f32)
    a_out = torch.empty(batch, heads, nchunks, Q, **f32)
    block_h = 16
    _dt_fwd_kernel[(batch, nchunks, triton.cdiv(heads, block_h))](
        dt, dt_bias if dt_bias is not None else dt, A, dt_out, a_out, length, heads, nchunks,
        dt.stride(0), dt.stride(1), dt.stride(2), float(dt_min), float(dt_max),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_LIMIT=_limit(dt_min, dt_max),
        CHUNK=Q, BLOCK_H=block_h)

    cb = torch.empty(batch, nchunks, groups, Q, Q, **f32)
    _cb_fwd_kernel[lambda m: (batch * nchunks, groups, triton.cdiv(Q, m["BLOCK_M"]) * triton.cdiv(Q, m["BLOCK_S"]))](
        C, B, cb, length, nchunks, groups, state, *C.stride(), *B.stride(), CHUNK=Q)

    local = torch.empty(batch, nchunks, heads, head_dim, state, **f32)
    _chunk_state_kernel[lambda m: (batch * nchunks, heads,
                                   triton.cdiv(head_dim, m["BLOCK_P"]) * triton.cdiv(state, m["BLOCK_N"]))](
        x, B, dt_out, a_out, seq, local, length, heads, groups, head_dim, state, nchunks,
        *x.stride(), *B.stride(), s_seq_b, s_seq_l, MODE=0, HAS_SEQ=seq_idx is not None, CHUNK=Q)

    enter = torch.empty_like(local)
    final = torch.empty(batch, heads, head_dim, state, **f32)
    pn = head_dim * state
    init = initial_state.contiguous() if initial_state is not None else None
    _state_pass_fwd_kernel[lambda m: (batch, heads, triton.cdiv(pn, m["BLOCK"]))](
        local, enter, final, init if init is not None else final, a_out, seq, length, heads, nchunks, pn,
        s_seq_b, s_seq_l, HAS_INIT=init is not None, HAS_SEQ=seq_idx is not None, CHUNK=Q)
    del local

    y = torch.empty(batch, length, heads, head_dim, device=x.device, dtype=x.dtype)
    _chunk_scan_fwd_kernel[lambda m: (batch * nchunks, heads,
                                      triton.cdiv(Q, m["BLOCK_M"]) * triton.cdiv(head_dim, m["BLOCK_P"]))](
        x, C, cb, dt_out, a_out, enter, D if D is not None else x, seq, y, length, heads, groups, head_dim, state,
        nchunks, *x.stride(), *C.stride(), s_seq_b, s_seq_l, *y.stride(),
        HAS_D=D is not None, HAS_SEQ=seq_idx is not None, CHUNK=Q)
    return y, final, dt_out, a_out, cb, enter


def ssd_backward(dy, dfinal, x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_min, dt_max, seq_idx,
                 dt_out, a_out, cb, enter):
    """Gradients (dx, ddt, dA, dB, dC, dD or None, ddt_bias or None, d initial_state)."""
    batch, length, heads, head_dim = x.shape
    groups, state = B.shape[2], B.shape[3]
    Q = chunk_size
    nchunks = triton.cdiv(length, Q)
    hpg = heads // groups
    f32 = dict(device=x.device, dtype=torch.float32)
    seq, s_seq_b, s_seq_l = _seq_args(seq_idx, x)
    has_seq = seq_idx is not None

    # 1-2: gradient of each chunk's entering state, then reverse passing (in place -> dCS)
    dcs = torch.empty(batch, nchunks, heads, head_dim, state, **f32)
    _chunk_state_kernel[lambda m: (batch * nchunks, heads,
                                   triton.cdiv(head_dim, m["BLOCK_P"]) * triton.cdiv(state, m["BLOCK_N"]))](
        dy, C, dt_out, a_out, seq, dcs, length, heads, groups, head_dim, state, nchunks,
        *dy.stride(), *C.stride(), s_seq_b, s_seq_l, MODE=1, HAS_SEQ=has_seq, CHUNK=Q)
    pn = head_dim * state
    dinit = torch.empty(batch, heads, head_dim, state, **f32)
    dfinal_c = dfinal.contiguous() if dfinal is not None else None
    _state_pass_bwd_kernel[lambda m: (batch, heads, triton.cdiv(pn, m["BLOCK"]))](
        dcs, dfinal_c if dfinal_c is not None else dinit, dinit, a_out, seq, length, heads, nchunks, pn,
        s_seq_b, s_seq_l, HAS_DFINAL=dfinal_c is not None, HAS_SEQ=has_seq, CHUNK=Q)

    # 3: dCB and the intra-chunk dt / da terms
    block_m = 16 if INTERPRET else (min(Q, 32) if Q <= 128 else 16)  # _dcb_bwd_kernel: BLOCK_M <= CHUNK
    num_m = triton.cdiv(Q, block_m)
    block_p = _dot_block(head_dim)
    dcb = torch.empty(batch, nchunks, groups, Q, Q, **f32)
    ddt_part = torch.empty(batch, heads, nchunks, num_m, Q, **f32)
    darow = torch.empty(batch, heads, nchunks, Q, **f32)
    _dcb_bwd_kernel[(batch * nchunks, groups, num_m)](
        dy, x, cb, dt_out, a_out, seq, dcb, ddt_part, darow, length, heads, groups, head_dim, nchunks,
        *dy.stride(), *x.stride(), s_seq_b, s_seq_l, HPG=hpg, HAS_SEQ=has_seq, CHUNK=Q, BLOCK_M=block_m,
        BLOCK_P=block_p)

    # 4: dB, dC and the state terms of da
    dB = torch.empty(B.shape, device=B.device, dtype=B.dtype)
    dC = torch.empty(C.shape, device=C.device, dtype=C.dtype)
    # one slot per block of state columns, for the most blocks any candidate launches (zeros where it launches
    # fewer); a state held whole writes its one slot in full
    candidates = _state_candidates(_dbc_bwd_kernel.configs, dict(N=state))
    n_slots = triton.cdiv(state, min(config.kwargs["BLOCK_N"] for config in candidates))
    partial = torch.zeros if n_slots > 1 else torch.empty
    dainter_part = partial(n_slots, batch, heads, nchunks, Q, **f32)
    dw_part = partial(n_slots, batch, heads, nchunks, Q, **f32)
    da_last_part = partial(n_slots, batch, heads, nchunks, **f32)
    _dbc_bwd_kernel[lambda m: (batch * nchunks, groups,
                               triton.cdiv(Q, m["BLOCK_M"]) * triton.cdiv(state, m["BLOCK_N"]))](
        dy, x, B, C, dcb, dt_out, a_out, enter, dcs, seq, dB, dC, dainter_part, dw_part, da_last_part, length, heads,
        groups, head_dim, state, nchunks, *dy.stride(), *x.stride(), *B.stride(), *C.stride(), s_seq_b, s_seq_l,
        *dB.stride(), *dC.stride(), dainter_part.stride(0), da_last_part.stride(0), HPG=hpg, HAS_SEQ=has_seq,
        CHUNK=Q, BLOCK_P=block_p)
    dainter, dw, da_last = (part.sum(0) if n_slots > 1 else part[0] for part in (dainter_part, dw_part, da_last_part))

    # 5: dx
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    # the grid's last axis depends on the autotuned blocks: room for the most programs any config launches
    dD_slots = triton.cdiv(Q, 16) * triton.cdiv(head_dim, 16)
    dD_part = torch.zeros(batch * nchunks, heads, dD_slots, **f32) if D is not None else dx
    _dx_bwd_kernel[lambda m: (batch * nchunks, heads,
                              triton.cdiv(Q, m["BLOCK_M"]) * triton.cdiv(head_dim, m["BLOCK_P"]))](
        dy, B, cb, dt_out, a_out, dcs, D if D is not None else x, seq, dx, x, dD_part, length, heads, groups,
        head_dim, state, nchunks, *dy.stride(), *B.stride(), s_seq_b, s_seq_l, *dx.stride(), *x.stride(), dD_slots,
        HAS_D=D is not None, HAS_SEQ=has_seq, CHUNK=Q)

    # 6: dt, A, dt_bias
    ddt = torch.empty(dt.shape, device=dt.device, dtype=dt.dtype)
    dA_part = torch.empty(batch, heads, nchunks, **f32)
    dbias_part = torch.empty(batch, heads, nchunks, **f32)
    block_h = 8
    _dt_bwd_kernel[(batch, nchunks, triton.cdiv(heads, block_h))](
        dt, dt_bias if dt_bias is not None else dt, A, dt_out, a_out, seq, darow, ddt_part, dainter, dw, da_last,
        ddt, dA_part, dbias_part, length, heads, nchunks, num_m, *dt.stride(), s_seq_b, s_seq_l, *ddt.stride(),
        float(dt_min), float(dt_max), HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        HAS_LIMIT=_limit(dt_min, dt_max), HAS_SEQ=has_seq, CHUNK=Q, BLOCK_H=block_h, num_warps=4)

    dA = dA_part.sum((0, 2))
    dbias = dbias_part.sum((0, 2)) if dt_bias is not None else None
    dD = dD_part.sum((0, 2)) if D is not None else None
    return dx, ddt, dA, dB, dC, dD, dbias, dinit
