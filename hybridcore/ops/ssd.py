"""Mamba-2's state-space dual (SSD) scan in plain PyTorch: the reference twin of every fast kernel.

The recurrence, per head h with state N and head dim P:

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        (state [P, N])
    y_t = h_t C_t + D * x_t

`ssd_chunked` computes it in the four steps of the SSD algorithm (intra-chunk output, chunk states,
state passing between chunks, inter-chunk output). `ssd_recurrent` is the token-by-token loop the
tests compare it with. Both share one signature:

    x [B, L, H, P], dt [B, L, H] (raw: bias and softplus are applied here when asked), A [H],
    B, C [B, L, G, N] with H % G == 0 (head h reads group h // (H // G)),
    D [H] or None, initial_state [B, H, P, N] or None,
    seq_idx [B, L] non-decreasing document index or None: the state is reset where it changes.
    The initial state belongs to the document of the first token.

Arithmetic is fp32 (float64 stays float64); y comes back in x's dtype, the final state in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def prepare_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool,
               dt_limit: tuple[float, float]) -> torch.Tensor:
    dt = dt.float() if dt.dtype != torch.float64 else dt
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit != (0.0, math.inf):
        dt = dt.clamp(dt_limit[0], dt_limit[1])
    return dt


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _heads_per_group(x: torch.Tensor, B: torch.Tensor) -> int:
    heads, groups = x.shape[2], B.shape[2]
    assert heads % groups == 0, f"{heads} heads are not a multiple of {groups} groups"
    return heads // groups


def ssd_recurrent(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
                  initial_state=None, seq_idx=None, return_final_state=False):
    """Token-by-token recurrence; slow, obviously right. Same signature as ssd_chunked (no chunk_size)."""
    dtype = _compute_dtype(x)
    batch, length, heads, head_dim = x.shape
    rep = _heads_per_group(x, B)
    dt = prepare_dt(dt, dt_bias, dt_softplus, dt_limit).to(dtype)
    A = A.to(dtype)
    B = B.to(dtype).repeat_interleave(rep, dim=2)
    C = C.to(dtype).repeat_interleave(rep, dim=2)
    x_c = x.to(dtype)
    state = (torch.zeros(batch, heads, head_dim, B.shape[-1], dtype=dtype, device=x.device)
             if initial_state is None else initial_state.to(dtype).clone())
    ys = []
    for t in range(length):
        if seq_idx is not None and t > 0:
            same_doc = (seq_idx[:, t] == seq_idx[:, t - 1]).to(dtype)
            state = state * same_doc[:, None, None, None]
        decay = torch.exp(dt[:, t] * A)  # [B, H]
        state = state * decay[..., None, None] + (dt[:, t, :, None, None] * x_c[:, t, :, :, None]
                                                  * B[:, t, :, None, :])
        y = torch.einsum("bhpn,bhn->bhp", state, C[:, t])
        if D is not None:
            y = y + D.to(dtype)[:, None] * x_c[:, t]
        ys.append(y)
    y = torch.stack(ys, dim=1).to(x.dtype)
    return (y, state.float() if dtype != torch.float64 else state) if return_final_state else y


def ssd_step_ref(x, dt, A, B, C, state, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf)):
    """One decoding token: `ssd_recurrent` from `state` [b, H, P, N] (fp32), which is updated in place;
    returns y [b, 1, H, P]. The same arithmetic as ssd_recurrent's one step, bit for bit, in fewer ops
    (decoding is bound by op launches): no copies or casts that change nothing, B's groups broadcast."""
    dtype = _compute_dtype(x)
    batch, _, heads, head_dim = x.shape
    groups, rep = B.shape[2], _heads_per_group(x, B)
    dt = _as(prepare_dt(dt, dt_bias, dt_softplus, dt_limit), dtype)[:, 0]  # [b, H]
    x_c = _as(x, dtype)[:, 0]  # [b, H, P]
    decay = torch.exp(dt * _as(A, dtype))
    # dt * x B^T per head, with head h reading group h // rep: [b, G, rep, P, N]
    update = ((dt[:, :, None] * x_c).view(batch, groups, rep, head_dim, 1)
              * _as(B, dtype)[:, 0, :, None, None, :]).view(batch, heads, head_dim, -1)
    new_state = _as(state, dtype) * decay[..., None, None] + update
    y = torch.einsum("bhpn,bhn->bhp", new_state, _as(C, dtype)[:, 0].repeat_interleave(rep, dim=1))
    if D is not None:
        y = y + _as(D, dtype)[:, None] * x_c
    state.copy_(new_state)
    return _as(y, x.dtype)[:, None]


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype, without an op when it already is."""
    return t if t.dtype == dtype else t.to(dtype)


def _segment_sum(a: torch.Tensor) -> torch.Tensor:
    """a [..., T] -> S [..., T, T] with S[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the diagonal.

    Built by masked cumulative sums rather than differences of one cumsum, which would lose precision.
    """
    length = a.shape[-1]
    expanded = a[..., None].expand(*a.shape, length)  # [..., i, j] = a[i]
    strictly_lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(expanded.masked_fill(~strictly_lower, 0), dim=-2)
    lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~lower, -math.inf)


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False,
                dt_limit=(0.0, math.inf), initial_state=None, seq_idx=None, return_final_state=False):
    """Chunked SSD (see module docstring). Lengths that are not a multiple of chunk_size are padded
    with dt = 0, which leaves the state untouched."""
    dtype = _compute_dtype(x)
    batch, length, heads, head_dim = x.shape
    rep = _heads_per_group(x, B)
    dt = prepare_dt(dt, dt_bias, dt_softplus, dt_limit).to(dtype)

    pad = (-length) % chunk_size
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(batch, pad)], dim=1)
    chunks = x.shape[1] // chunk_size

    def to_chunks(t):  # [B, L, ...] -> [B, c, l, ...]
        return t.reshape(batch, chunks, chunk_size, *t.shape[2:])

    x_c = to_chunks(x.to(dtype))
    dt_c = to_chunks(dt).permute(0, 3, 1, 2)  # [B, H, c, l]
    B_c = to_chunks(B.to(dtype)).repeat_interleave(rep, dim=3)  # [B, c, l, H, N]
    C_c = to_chunks(C.to(dtype)).repeat_interleave(rep, dim=3)
    A_dt = dt_c * A.to(dtype)[None, :, None, None]
    A_cumsum = torch.cumsum(A_dt, dim=-1)  # [B, H, c, l]
    x_dt = x_c * dt_c.permute(0, 2, 3, 1)[..., None]  # dt_t * x_t

    if seq_idx is not None:
        doc = to_chunks(seq_idx)  # [B, c, l]
        doc_end = doc[:, :, -1]  # document at the end of each chunk
        # Document whose state enters chunk c: that of the previous chunk's last token (or token 0).
        doc_enter = torch.cat([seq_idx[:, :1], doc_end[:, :-1]], dim=1)  # [B, c]

    # 1. intra-chunk (diagonal blocks): y_i += sum_{j<=i} C_i.B_j exp(A_cum_i - A_cum_j) dt_j x_j
    decay_within = torch.exp(_segment_sum(A_dt))  # [B, H, c, l, l]
    if seq_idx is not None:
        same = doc[:, :, :, None] == doc[:, :, None, :]  # [B, c, l, l]
        decay_within = decay_within * same[:, None].to(dtype)
    y = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C_c, B_c, decay_within, x_dt)

    # 2. the state each chunk builds from its own tokens, at its end
    decay_to_end = torch.exp(A_cumsum[..., -1:] - A_cumsum)  # [B, H, c, l]
    if seq_idx is not None:
        decay_to_end = decay_to_end * (doc == doc_end[..., None])[:, None].to(dtype)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B_c, decay_to_end, x_dt)

    # 3. pass states across chunk boundaries (a short sequential loop over chunks)
    state = (torch.zeros(batch, heads, head_dim, B.shape[-1], dtype=dtype, device=x.device)
             if initial_state is None else initial_state.to(dtype))
    chunk_decay = torch.exp(A_cumsum[..., -1])  # [B, H, c]
    if seq_idx is not None:
        carries = (doc_end == doc_enter).to(dtype)  # does the entering state survive to the chunk end?
    entering = []
    for c in range(chunks):
        entering.append(state)
        keep = chunk_decay[:, :, c]
        if seq_idx is not None:
            keep = keep * carries[:, c, None]
        state = state * keep[..., None, None] + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # [B, c, H, P, N]

    # 4. inter-chunk output: what the entering state contributes to each token of the chunk
    decay_from_start = torch.exp(A_cumsum)  # [B, H, c, l]
    if seq_idx is not None:
        decay_from_start = decay_from_start * (doc == doc_enter[..., None])[:, None].to(dtype)
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", C_c, entering, decay_from_start)

    if D is not None:
        y = y + x_c * D.to(dtype)[:, None]
    y = y.reshape(batch, chunks * chunk_size, heads, head_dim)[:, :length].to(x.dtype)
    if not return_final_state:
        return y
    return y, (state.float() if dtype != torch.float64 else state)
