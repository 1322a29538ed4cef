"""Linear + cross-entropy in chunks of tokens, so a 130K-261K vocabulary never holds full logits.

`chunked_cross_entropy(hidden, weight, labels, multiplier, chunk_size)` equals
`F.cross_entropy((hidden @ weight.T * multiplier).float(), labels, ignore_index=-100)` (mean over the
labelled tokens). Each chunk's logits [chunk, V] live only inside the loop: when a gradient is needed the
forward computes it there too (softmax - one-hot is all the backward needs), so nothing is recomputed
and the backward is a scaling of the stored gradients. The head's weight gradient is summed over the
chunks in fp32 (`accumulate_product`). Pure PyTorch; any device (on CUDA the per-chunk
softmax and gradient are one torch.compile'd function); under autocast the products run in the autocast
dtype and the softmax in fp32. An odd vocabulary (Falcon-H1-7B's 130,049) is padded with zero rows to a
multiple of VOCAB_ALIGN, masked out of the softmax: with an unaligned dimension cuBLAS falls back to its
slow align-1 kernels.
Vocabulary-parallel (tensor parallelism): each rank holds the head rows `vocab_start ..` of the vocabulary
and passes `all_reduce(tensor, op)` ("max" or "sum" over the ranks that share the vocabulary). Per chunk,
three small row statistics cross the ranks (the maximum, the sum of exponentials, the target's logit);
the logits never leave their rank. The gradient for `hidden` is then this rank's partial sum, which the
caller's autograd reduces over the ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
VOCAB_ALIGN = 128


def _chunk_logits(h, weight, multiplier):
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32  # softmax in fp32 (float64 kept)
    return (h @ weight.t()).to(acc) * multiplier


def _chunk_loss_and_grad(products, labels, multiplier: float, grad_scale, grad_dtype, vocab: int):
    """Summed loss of one chunk and d(loss * grad_scale)/d(products), from the raw products h @ w.T;
    columns from `vocab` on are padding (no probability, zero gradient).

    Written as a few whole-tensor expressions with no data-dependent indexing, so that on CUDA
    torch.compile turns it into two passes over the chunk (a row reduction, then the gradient)."""
    acc = torch.float64 if products.dtype == torch.float64 else torch.float32
    columns = torch.arange(products.shape[1], device=products.device)[None, :]
    logits = torch.where(columns < vocab, products.to(acc) * multiplier, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    valid = labels != IGNORE_INDEX
    target = torch.where(valid, labels, 0)
    picked = logits.gather(1, target[:, None]).squeeze(1)
    loss = torch.where(valid, lse - picked, 0.0).sum()
    is_target = columns == target[:, None]
    row_scale = torch.where(valid, grad_scale * multiplier, 0.0)  # d logits / d products = multiplier
    grad = (torch.exp(logits - lse[:, None]) - is_target.to(acc)) * row_scale[:, None]
    return loss, grad.to(grad_dtype)


def _chunk_loss_and_grad_shared(products, labels, multiplier: float, grad_scale, grad_dtype, vocab: int,
                                vocab_start: int, all_reduce):
    """`_chunk_loss_and_grad` for one rank's slice of the vocabulary (columns vocab_start ..): the row
    maximum, the sum of exponentials and the target's logit are reduced over the ranks."""
    acc = torch.float64 if products.dtype == torch.float64 else torch.float32
    columns = torch.arange(products.shape[1], device=products.device)[None, :]
    logits = torch.where(columns < vocab, products.to(acc) * multiplier, float("-inf"))
    row_max = all_reduce(logits.max(dim=-1).values, "max")
    lse = row_max + torch.log(all_reduce(torch.exp(logits - row_max[:, None]).sum(-1), "sum"))
    valid = labels != IGNORE_INDEX
    local_target = labels - vocab_start
    here = valid & (local_target >= 0) & (local_target < vocab)
    target = torch.where(here, local_target, 0)
    picked = all_reduce(torch.where(here, logits.gather(1, target[:, None]).squeeze(1), 0.0), "sum")
    loss = torch.where(valid, lse - picked, 0.0).sum()
    is_target = (columns == target[:, None]) & here[:, None]
    row_scale = torch.where(valid, grad_scale * multiplier, 0.0)
    grad = (torch.exp(logits - lse[:, None]) - is_target.to(acc)) * row_scale[:, None]
    return loss, grad.to(grad_dtype)


_compiled_loss_and_grad = None


def _loss_and_grad_fn(device: torch.device):
    """The compiled chunk function on CUDA (built once), the plain one elsewhere or inside a compile."""
    global _compiled_loss_and_grad
    if device.type != "cuda" or torch.compiler.is_compiling():
        return _chunk_loss_and_grad
    if _compiled_loss_and_grad is None:
        _compiled_loss_and_grad = torch.compile(_chunk_loss_and_grad, dynamic=False)
    return _compiled_loss_and_grad


def _padded(weight, dtype):
    """`weight` in `dtype`, with zero rows appended up to a multiple of VOCAB_ALIGN (one copy either way
    under autocast; none when aligned and already in dtype)."""
    vocab = weight.shape[0]
    padded_vocab = -(-vocab // VOCAB_ALIGN) * VOCAB_ALIGN
    if padded_vocab == vocab:
        return weight.to(dtype)
    w = weight.new_empty((padded_vocab, weight.shape[1]), dtype=dtype)
    w[:vocab].copy_(weight)
    w[vocab:].zero_()
    return w


_MATMUL_OUT_DTYPE = "dtype_out" in torch.ops.aten.addmm.overloads()  # absent from older torch


def accumulate_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """out = a @ b (first) or out += a @ b, summed in out's dtype: the head's weight gradient adds up
    in fp32 over the chunks, never rounded to bf16 on the way. On CUDA one matmul writes it (cuBLAS
    takes bf16 inputs and an fp32 output, and adds into it); elsewhere the inputs are widened first."""
    if a.dtype != out.dtype and out.device.type == "cuda" and _MATMUL_OUT_DTYPE:
        if first:
            torch.mm(a, b, out_dtype=out.dtype, out=out)
        else:
            torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
        return
    a, b = a.to(out.dtype), b.to(out.dtype)
    if first:
        torch.mm(a, b, out=out)
    else:
        out.addmm_(a, b)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, multiplier, chunk_size, compute_dtype, vocab_start, all_reduce):
        h_all = hidden.reshape(-1, hidden.shape[-1]).to(compute_dtype)
        labels = labels.reshape(-1)
        count = (labels != IGNORE_INDEX).sum().clamp_min(1)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = _padded(weight, compute_dtype)
        vocab = weight.shape[0]
        loss = torch.zeros((), device=hidden.device, dtype=torch.float64 if compute_dtype == torch.float64
                           else torch.float32)
        dh = torch.empty_like(h_all) if ctx.needs_input_grad[0] else None
        dw = torch.empty(w.shape, device=weight.device, dtype=loss.dtype) if ctx.needs_input_grad[1] else None
        if all_reduce is None:
            loss_and_grad = _loss_and_grad_fn(hidden.device)
        else:
            def loss_and_grad(*args):
                return _chunk_loss_and_grad_shared(*args, vocab_start, all_reduce)
        grad_scale = 1.0 / count.to(loss.dtype)
        for start in range(0, h_all.shape[0], chunk_size):
            h = h_all[start:start + chunk_size]
            y = labels[start:start + chunk_size]
            if not need_grad and all_reduce is None:
                loss += F.cross_entropy(_chunk_logits(h, w, multiplier)[:, :vocab], y, ignore_index=IGNORE_INDEX,
                                        reduction="sum")
                continue
            chunk_loss, grad = loss_and_grad(h @ w.t(), y, multiplier, grad_scale, compute_dtype, vocab)
            loss += chunk_loss
            if not need_grad:  # evaluation of a shared head: the statistics still cross the ranks
                continue
            if dh is not None:
                dh[start:start + chunk_size] = grad @ w
            if dw is not None:
                accumulate_product(dw, grad.t(), h, first=start == 0)
        ctx.save_for_backward(dh, dw[:vocab] if dw is not None else None)  # leading rows: still contiguous
        ctx.hidden_meta = (hidden.shape, hidden.dtype)
        ctx.weight_dtype = weight.dtype
        return loss / count.to(loss.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        shape, dtype = ctx.hidden_meta
        grad_hidden = (dh * grad_loss).to(dtype).reshape(shape) if dh is not None else None
        grad_weight = (dw * grad_loss).to(ctx.weight_dtype) if dw is not None else None
        return grad_hidden, grad_weight, None, None, None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          multiplier: float = 1.0, chunk_size: int = 4096, vocab_start: int = 0,
                          all_reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T * multiplier` against `labels` (-100 ignored).

    hidden [..., d], weight [V, d] (the LM head), labels [...] (already shifted for next-token loss).
    With `all_reduce`, `weight` holds the vocabulary rows from `vocab_start` of a head split over ranks
    (see the module docstring).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    compute_dtype = hidden.dtype
    if torch.is_autocast_enabled(hidden.device.type):
        compute_dtype = torch.get_autocast_dtype(hidden.device.type)
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedCrossEntropy.apply(hidden, weight, labels, float(multiplier), int(chunk_size), compute_dtype,
                                          int(vocab_start), all_reduce)
