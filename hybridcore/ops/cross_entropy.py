"""Linear + cross-entropy in chunks of tokens, so a 130K-261K vocabulary never holds full logits.

`chunked_cross_entropy(hidden, weight, labels, multiplier, chunk_size)` equals
`F.cross_entropy((hidden @ weight.T * multiplier).float(), labels, ignore_index=-100)` (mean over the
labelled tokens). Each chunk's logits [chunk, V] live only inside the loop: when a gradient is needed the
forward computes it there too (softmax - one-hot is all the backward needs), so nothing is recomputed
and the backward is a scaling of the stored gradients. Pure PyTorch; any device; under autocast the
products run in the autocast dtype and the softmax in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _chunk_logits(h, weight, multiplier):
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32  # softmax in fp32 (float64 kept)
    return (h @ weight.t()).to(acc) * multiplier


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, multiplier, chunk_size, compute_dtype):
        h_all = hidden.reshape(-1, hidden.shape[-1]).to(compute_dtype)
        labels = labels.reshape(-1)
        count = (labels != IGNORE_INDEX).sum().clamp_min(1)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        loss = torch.zeros((), device=hidden.device, dtype=torch.float64 if compute_dtype == torch.float64
                           else torch.float32)
        dh = torch.empty_like(h_all) if ctx.needs_input_grad[0] else None
        dw = (torch.zeros(weight.shape, device=weight.device, dtype=loss.dtype) if ctx.needs_input_grad[1]
              else None)
        for start in range(0, h_all.shape[0], chunk_size):
            h = h_all[start:start + chunk_size]
            y = labels[start:start + chunk_size]
            logits = _chunk_logits(h, w, multiplier)
            loss += F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum")
            if need_grad:
                grad = torch.softmax(logits, dim=-1)  # d loss_sum / d logits = softmax - onehot
                valid = y != IGNORE_INDEX
                grad[valid, y[valid]] -= 1.0
                grad[~valid] = 0.0
                grad = (grad * (multiplier / count.to(grad.dtype))).to(compute_dtype)
                if dh is not None:
                    dh[start:start + chunk_size] = grad @ w
                if dw is not None:
                    dw += (grad.t() @ h).to(dw.dtype)
        ctx.save_for_backward(dh, dw)
        ctx.hidden_meta = (hidden.shape, hidden.dtype)
        ctx.weight_dtype = weight.dtype
        return loss / count.to(loss.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        shape, dtype = ctx.hidden_meta
        grad_hidden = (dh * grad_loss).to(dtype).reshape(shape) if dh is not None else None
        grad_weight = (dw * grad_loss).to(ctx.weight_dtype) if dw is not None else None
        return grad_hidden, grad_weight, None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          multiplier: float = 1.0, chunk_size: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T * multiplier` against `labels` (-100 ignored).

    hidden [..., d], weight [V, d] (the LM head), labels [...] (already shifted for next-token loss).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    compute_dtype = hidden.dtype
    if torch.is_autocast_enabled(hidden.device.type):
        compute_dtype = torch.get_autocast_dtype(hidden.device.type)
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedCrossEntropy.apply(hidden, weight, labels, float(multiplier), int(chunk_size), compute_dtype)
