import pytest
import torch
import torch.nn.functional as F

from hybridcore.ops import chunked_cross_entropy


@pytest.mark.parametrize("chunk", [1, 5, 26, 1000])
@pytest.mark.parametrize("vocab", [50, 128])  # padded to VOCAB_ALIGN (128) inside, and already aligned
def test_chunked_cross_entropy_equals_plain_loss(chunk, vocab):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 13, 16, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(vocab, 16, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (2, 13), generator=g)
    labels[0, 3] = labels[1, 0] = -100  # ignored tokens
    loss = chunked_cross_entropy(hidden, weight, labels, multiplier=0.3, chunk_size=chunk)
    ref = F.cross_entropy((hidden @ weight.t() * 0.3).flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(2.5 * loss, [hidden, weight])
    grads_ref = torch.autograd.grad(2.5 * ref, [hidden, weight])
    for a, b in zip(grads, grads_ref):
        assert a.shape == b.shape and a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_cross_entropy_without_grad_and_bad_chunk():
    hidden, weight = torch.randn(4, 8), torch.randn(11, 8)
    labels = torch.randint(0, 11, (4,))
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, weight, labels, chunk_size=3)
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.t(), labels))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_cross_entropy(hidden, weight, labels, chunk_size=0)


def test_chunk_function_compiles_whole_and_matches_autograd():
    """The per-chunk loss + gradient is compiled on CUDA: it must trace as one graph (no breaks) and
    agree with autograd through F.cross_entropy, ignored labels included; the padding columns (from
    `vocab` on) take no probability and get no gradient."""
    from hybridcore.ops.cross_entropy import _chunk_loss_and_grad

    g = torch.Generator().manual_seed(1)
    products = torch.randn(7, 30, dtype=torch.float64, generator=g, requires_grad=True)
    padding = torch.full((7, 2), 50.0, dtype=torch.float64)  # large: any leak into the softmax shows
    labels = torch.randint(0, 30, (7,), generator=g)
    labels[2] = -100
    scale = torch.tensor(1 / 6, dtype=torch.float64)
    compiled = torch.compile(_chunk_loss_and_grad, fullgraph=True, backend="aot_eager")
    loss, grad = compiled(torch.cat([products.detach(), padding], 1), labels, 0.7, scale, torch.float64, 30)
    ref = F.cross_entropy(products * 0.7, labels, ignore_index=-100, reduction="sum")
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad[:, :30], torch.autograd.grad(ref * scale, products)[0], rtol=1e-10, atol=1e-12)
    assert torch.equal(grad[:, 30:], torch.zeros(7, 2, dtype=torch.float64))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # CUDA: cuBLAS's fp32-output matmul


@pytest.mark.parametrize("device", DEVICES)
def test_head_weight_gradient_adds_up_in_fp32(device):
    """bf16 products summed over chunks into fp32: within fp32 rounding of the exact sum, where rounding
    each chunk's product to bf16 (a plain autocast matmul) is off by bf16's ~3 significant digits."""
    from hybridcore.ops.cross_entropy import accumulate_product

    g = torch.Generator().manual_seed(2)
    pieces = [(torch.randn(40, 24, generator=g).bfloat16(), torch.randn(24, 8, generator=g).bfloat16())
              for _ in range(3)]
    exact = sum(a.double() @ b.double() for a, b in pieces)
    out = torch.full((40, 8), float("nan"), device=device)  # the first chunk overwrites, whatever was there
    for index, (a, b) in enumerate(pieces):
        accumulate_product(out, a.to(device), b.to(device), first=index == 0)
    rounded = sum((a @ b).float() for a, b in pieces)
    error = ((out.cpu().double() - exact).abs().max() / exact.abs().max()).item()
    rounded_error = ((rounded.double() - exact).abs().max() / exact.abs().max()).item()
    assert out.dtype == torch.float32 and error < 1e-6 and rounded_error > 1e-4, (error, rounded_error)
