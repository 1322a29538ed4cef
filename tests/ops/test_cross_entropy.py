import pytest
import torch
import torch.nn.functional as F

from hybridcore.ops import chunked_cross_entropy


@pytest.mark.parametrize("chunk", [1, 5, 26, 1000])
def test_chunked_cross_entropy_equals_plain_loss(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 13, 16, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (2, 13), generator=g)
    labels[0, 3] = labels[1, 0] = -100  # ignored tokens
    loss = chunked_cross_entropy(hidden, weight, labels, multiplier=0.3, chunk_size=chunk)
    ref = F.cross_entropy((hidden @ weight.t() * 0.3).flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(2.5 * loss, [hidden, weight])
    grads_ref = torch.autograd.grad(2.5 * ref, [hidden, weight])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_cross_entropy_without_grad_and_bad_chunk():
    hidden, weight = torch.randn(4, 8), torch.randn(11, 8)
    labels = torch.randint(0, 11, (4,))
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, weight, labels, chunk_size=3)
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.t(), labels))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_cross_entropy(hidden, weight, labels, chunk_size=0)
