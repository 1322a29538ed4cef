"""Context parallelism: the sequence split over the cp ranks, exact for attention and Mamba-2.

`ContextParallel` is the model's context strategy (model/parallelism.py) under this layout.

Load balance. The sequence is cut into 2 x cp equal chunks and rank r holds chunks r and 2cp-1-r
("zigzag"), so every rank has the same share of causal attention work. Model inputs (ids, targets,
seq_idx, positions) are sharded with `shard_sequence`; positions are those of the full sequence
(`global_positions`, computed before sharding and passed with the batch).

Attention. Keys and values are all-gathered over cp (their gradients reduce-scattered back); each
rank attends with its own queries under a mask built from global token slots and document ids, so
packed documents stay separate across rank borders.

Mamba-2 (state passing, exact). For each chunk, `chunk_final_state` gives its final state S_c from a
zero state and how much of a state entering it survives to its end (exp of the summed dt*A; zero when
a document starts inside it), as weighted sums without a scan. These are all-gathered, every rank runs
the short recurrence
    E_0 = 0,   E_{c+1} = (S_c + decay_c * E_c) * [chunk c+1 starts in the document chunk c ends in]
and then scans its chunks from their true entering states E_c. The causal conv receives the last
d_conv-1 inputs of the previous chunk the same way, with inputs of another document zeroed. Every
fused scan kernel stays usable unchanged.

Why state passing and not Megatron's all-to-all (head split around the scan): communication per Mamba
layer and rank, forward + backward, L tokens over cp ranks, H heads of P channels, state N, G groups.
  all-to-all:     2 x (L/cp) x (cp-1)/cp x (H*P + 2*G*N + H  [xBC, dt in]  +  H*P  [y out]) elements
  state passing:  2 x (2cp-2) x H*P*N fp32 (chunk states) + conv tails of (d_conv-1) tokens, whatever L is
For falcon-h1-0.5b (H=24, P=64, N=128, G=1) at L=32K, cp=2: about 55M bf16 elements (110 MB) against
0.4M fp32 (1.6 MB). This is arithmetic, not a measurement: the all-to-all variant was not built.
Attention's K/V all-gather adds 2 x kv_heads x head_dim x L x (cp-1)/cp elements per layer.

Memory: without packed documents, attention runs one call per local chunk with a lower-right causal
bias (no mask tensor on CUDA's fused kernels; the CPU fallback materialises it). With packed documents
a [L/cp, L] boolean document mask is used while small; above model.attention.DOCUMENT_MASK_LIMIT
elements, one call per document run of each chunk instead (`attend_by_document`), without a mask.
benchmarks/cp_activation_memory.py counts the bytes saved for backward per rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh

from ..model.attention import (attend_by_document, document_causal_mask, document_mask_is_large,
                               lower_right_causal_attention)
from ..model.model import positions_from_seq_idx
from ..ops import causal_conv1d, ssd
from ..ops.ssd import prepare_dt
from . import collectives


def chunk_ids(rank: int, cp: int) -> tuple[int, int]:
    """The two global chunks rank `rank` holds."""
    return rank, 2 * cp - 1 - rank


def shard_sequence(tensor: torch.Tensor, mesh: DeviceMesh, dim: int = 1) -> torch.Tensor:
    """This cp rank's part of a full-sequence tensor: chunks r and 2cp-1-r of 2cp, concatenated.
    `mesh`: the full mesh from build_mesh, or its 1-D cp mesh."""
    cp_mesh = mesh if mesh.ndim == 1 else mesh["cp"]
    return zigzag(tensor, cp_mesh.get_local_rank(), cp_mesh.size(), dim)


def zigzag(tensor: torch.Tensor, rank: int, cp: int, dim: int = 1) -> torch.Tensor:
    if cp == 1:
        return tensor
    if tensor.shape[dim] % (2 * cp):
        raise ValueError(f"sequence length {tensor.shape[dim]} must be divisible by 2 x ParallelConfig.cp "
                         f"({2 * cp}) for context parallelism")
    chunks = tensor.chunk(2 * cp, dim=dim)
    return torch.cat([chunks[i] for i in chunk_ids(rank, cp)], dim=dim)


def token_slots(rank: int, cp: int, local_length: int, device) -> torch.Tensor:
    """Global positions in the sequence of this rank's tokens."""
    size = local_length // 2
    return torch.cat([torch.arange(c * size, (c + 1) * size, device=device) for c in chunk_ids(rank, cp)])


def gather_chunks(local: torch.Tensor, mesh: DeviceMesh, dim: int) -> torch.Tensor:
    """All-gather this rank's two chunks (concatenated along `dim`) into the full tensor in sequence
    order. Differentiable: the backward reduce-scatters each rank's gradient back to the owners."""
    cp = mesh.size()
    pieces = collectives.gather_along(local, dim, mesh.get_group()).chunk(2 * cp, dim=dim)  # rank order
    position = {}
    for rank in range(cp):
        for k, chunk in enumerate(chunk_ids(rank, cp)):
            position[chunk] = 2 * rank + k
    return torch.cat([pieces[position[c]] for c in range(2 * cp)], dim=dim)


class ContextParallel:
    """The context strategy of model/parallelism.py when this rank holds chunks r and 2cp-1-r of the
    sequence (module docstring). `mesh`: the 1-D cp mesh."""

    def __init__(self, mesh: DeviceMesh):
        self.mesh = mesh
        self.size, self.rank = mesh.size(), mesh.get_local_rank()

    def document_mask(self, seq_idx, hold=None):
        """No FlexAttention block mask: the chunks attend through the paths below."""
        return None

    def attend(self, q, k, v, seq_idx, document_mask=None):
        length = q.shape[2]
        keys, values = gather_chunks(k, self.mesh, dim=2), gather_chunks(v, self.mesh, dim=2)
        gqa = q.shape[1] != k.shape[1]
        chunks = chunk_ids(self.rank, self.size)
        if seq_idx is None:
            # One call per local chunk over the keys up to its end, causal aligned to the lower right:
            # the fused kernels apply that without a mask tensor, which would grow as L^2 / cp.
            outputs = []
            for queries, chunk in zip(q.chunk(2, dim=2), chunks):
                end = (chunk + 1) * queries.shape[2]
                outputs.append(lower_right_causal_attention(queries, keys[:, :, :end], values[:, :, :end], gqa))
            return torch.cat(outputs, dim=2)
        key_docs = gather_chunks(seq_idx, self.mesh, dim=1)
        if document_mask_is_large(q.shape[0], length, keys.shape[2]):  # long: document by document
            size = length // 2
            return torch.cat([attend_by_document(queries, keys, values, docs, key_docs, chunk * size, gqa)
                              for queries, docs, chunk in zip(q.chunk(2, dim=2), seq_idx.chunk(2, dim=1), chunks)],
                             dim=2)
        # Packed documents: a mask on global slots and document ids ([B, 1, L / cp, L] booleans).
        query_slots = token_slots(self.rank, self.size, length, q.device)
        key_slots = torch.arange(keys.shape[2], device=q.device)
        mask = document_causal_mask(seq_idx, key_docs, query_slots, key_slots)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)

    def conv(self, xBC, weight, bias, seq_idx):
        history = weight.shape[1] - 1
        if xBC.shape[1] // 2 < history:
            raise ValueError(f"context-parallel chunks of {xBC.shape[1] // 2} tokens are shorter than "
                             f"mamba_d_conv - 1 = {history}")
        chunks = xBC.chunk(2, dim=1)
        docs = seq_idx.chunk(2, dim=1) if seq_idx is not None else (None, None)
        if history == 0:
            return torch.cat([causal_conv1d(c, weight, bias, seq_idx=d)[0] for c, d in zip(chunks, docs)], 1)
        tails = gather_chunks(torch.cat([c[:, -history:] for c in chunks], dim=1), self.mesh, dim=1)
        tails = tails.unflatten(1, (2 * self.size, history))  # [B, chunk, history, channels]
        if seq_idx is not None:
            tail_docs = gather_chunks(torch.cat([d[:, -history:] for d in docs], dim=1), self.mesh, dim=1)
            tail_docs = tail_docs.unflatten(1, (2 * self.size, history))
        outputs = []
        for chunk, doc, index in zip(chunks, docs, chunk_ids(self.rank, self.size)):
            state = None
            if index > 0:
                before = tails[:, index - 1]
                if seq_idx is not None:  # inputs of an earlier document must not leak in
                    before = before * (tail_docs[:, index - 1] == doc[:, :1]).unsqueeze(-1).to(before.dtype)
                state = before.transpose(1, 2)
            outputs.append(causal_conv1d(chunk, weight, bias, seq_idx=doc, initial_state=state)[0])
        return torch.cat(outputs, dim=1)

    def scan(self, x, dt, A, B, C, seq_idx, *, chunk_size, D, dt_bias, dt_softplus, dt_limit):
        options = dict(chunk_size=chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
        docs = seq_idx.chunk(2, dim=1) if seq_idx is not None else (None, None)
        pieces = list(zip(x.chunk(2, 1), dt.chunk(2, 1), B.chunk(2, 1), C.chunk(2, 1), docs))

        finals, decays = [], []  # per local chunk, from a zero state
        for x_c, dt_c, B_c, _, doc in pieces:
            final, decay = chunk_final_state(x_c, prepare_dt(dt_c, dt_bias, dt_softplus, dt_limit), A, B_c, doc)
            finals.append(final)
            decays.append(decay)
        finals = gather_chunks(torch.stack(finals, dim=1), self.mesh, dim=1)  # [B, chunk, H, P, N]
        decays = gather_chunks(torch.stack(decays, dim=1), self.mesh, dim=1)  # [B, chunk, H]
        if seq_idx is not None:  # [B, chunk, (first document, last document)]
            ends = gather_chunks(torch.stack([torch.stack([d[:, 0], d[:, -1]], dim=-1) for d in docs], dim=1),
                                 self.mesh, dim=1)

        entering = [torch.zeros_like(finals[:, 0])]
        for c in range(finals.shape[1] - 1):
            state = finals[:, c] + decays[:, c, :, None, None] * entering[c]  # state at the end of chunk c
            if seq_idx is not None:
                state = state * (ends[:, c, 1] == ends[:, c + 1, 0]).to(state.dtype)[:, None, None, None]
            entering.append(state)

        outputs = []
        for (x_c, dt_c, B_c, C_c, doc), index in zip(pieces, chunk_ids(self.rank, self.size)):
            outputs.append(ssd(x_c, dt_c, A, B_c, C_c, seq_idx=doc, initial_state=entering[index], **options)[0])
        return torch.cat(outputs, dim=1)


def chunk_final_state(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      seq_idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk's final SSM state from a zero state, without its outputs, and the share of an entering
    state that survives the chunk: (sum_t exp(sum_{s>t} dt_s A) dt_t x_t B_t^T  [B, H, P, N] fp32,
    exp(sum_t dt_t A) [B, H], zero where a document starts inside). Tokens of a document that ends
    before the chunk does contribute nothing. x [B, L, H, P], dt (prepared) [B, L, H], B [B, L, G, N].
    Cheaper than a scan, and keeps only O(L) tensors for backward."""
    a = dt * A  # [B, L, H], log-decay per token
    # sum over s > t, accumulated from the end (no difference of large cumulative sums)
    after = torch.flip(torch.cumsum(torch.flip(a, [1]), 1), [1])
    after = torch.cat([after[:, 1:], torch.zeros_like(after[:, :1])], dim=1)
    weight = torch.exp(after) * dt
    decay = torch.exp(a.sum(1))
    if seq_idx is not None:
        in_last_document = seq_idx == seq_idx[:, -1:]
        weight = weight * in_last_document[..., None].to(weight.dtype)
        decay = decay * in_last_document[:, :1].to(decay.dtype)
    batch, length, heads, head_dim = x.shape
    groups = B.shape[2]
    weighted = (x.to(weight.dtype) * weight[..., None]).view(batch, length, groups, heads // groups, head_dim)
    state = torch.einsum("blgkp,blgn->bgkpn", weighted, B.to(weight.dtype))
    return state.reshape(batch, heads, head_dim, -1), decay


def global_positions(seq_idx: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Positions [B, L] of the whole sequence (restarting at each document), before it is sharded."""
    if seq_idx is not None:
        return positions_from_seq_idx(seq_idx)
    return torch.arange(length, device=device).expand(batch, -1)
