"""The pure-PyTorch references: the chunked SSD against the token loop, in float64, and the
causal conv with document resets against running each document alone."""

import pytest
import torch

from hybridcore.ops import causal_conv1d_ref, ssd_chunked, ssd_recurrent


def inputs(batch=2, length=37, heads=4, head_dim=5, groups=2, state=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    return dict(
        x=torch.randn(batch, length, heads, head_dim, **f64),
        dt=torch.randn(batch, length, heads, **f64),
        A=-torch.rand(heads, **f64) - 0.2,
        B=torch.randn(batch, length, groups, state, **f64),
        C=torch.randn(batch, length, groups, state, **f64),
        D=torch.randn(heads, **f64),
        dt_bias=torch.randn(heads, **f64) * 0.5,
    )


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 4, 8, 16, 64])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_chunked_equals_recurrent(chunk, groups):
    t = inputs(groups=groups)  # length 37: not a multiple of any chunk > 1
    kw = dict(D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True)
    close(ssd_chunked(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, **kw),
          ssd_recurrent(t["x"], t["dt"], t["A"], t["B"], t["C"], **kw))


def test_dt_limit_and_no_softplus():
    t = inputs()
    dt = t["dt"].abs()
    kw = dict(dt_limit=(0.1, 0.8))
    close(ssd_chunked(t["x"], dt, t["A"], t["B"], t["C"], 8, **kw),
          ssd_recurrent(t["x"], dt, t["A"], t["B"], t["C"], **kw))


@pytest.mark.parametrize("chunk", [4, 16])
def test_initial_and_final_states(chunk):
    t = inputs()
    h0 = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    kw = dict(D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True, initial_state=h0, return_final_state=True)
    y, final = ssd_chunked(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, **kw)
    y_ref, final_ref = ssd_recurrent(t["x"], t["dt"], t["A"], t["B"], t["C"], **kw)
    close(y, y_ref)
    close(final, final_ref)


@pytest.mark.parametrize("chunk", [4, 16])
def test_final_state_continues_the_sequence(chunk):
    """Running [0, 20) then [20, 37) from the first part's final state equals one run."""
    t = inputs()
    kw = dict(D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True)
    whole, whole_final = ssd_chunked(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, return_final_state=True, **kw)
    part = {k: t[k][:, :20] for k in ("x", "dt", "B", "C")}
    rest = {k: t[k][:, 20:] for k in ("x", "dt", "B", "C")}
    y1, h1 = ssd_chunked(part["x"], part["dt"], t["A"], part["B"], part["C"], chunk, return_final_state=True, **kw)
    y2, h2 = ssd_chunked(rest["x"], rest["dt"], t["A"], rest["B"], rest["C"], chunk, initial_state=h1,
                         return_final_state=True, **kw)
    close(torch.cat([y1, y2], dim=1), whole)
    close(h2, whole_final)


def split_docs(lengths):
    return torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]


@pytest.mark.parametrize("chunk", [4, 8, 32])
def test_document_resets_equal_separate_runs(chunk):
    lengths = [5, 11, 1, 13, 7]  # borders inside chunks, on chunk edges, a one-token document
    t = inputs(batch=1, length=sum(lengths))
    seq_idx = split_docs(lengths)
    kw = dict(D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True)
    h0 = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    y, final = ssd_chunked(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, seq_idx=seq_idx, initial_state=h0,
                           return_final_state=True, **kw)
    ys, start, state = [], 0, None
    for i, n in enumerate(lengths):
        s = slice(start, start + n)
        yi, state = ssd_chunked(t["x"][:, s], t["dt"][:, s], t["A"], t["B"][:, s], t["C"][:, s], chunk,
                                initial_state=h0 if i == 0 else None, return_final_state=True, **kw)
        ys.append(yi)
        start += n
    close(y, torch.cat(ys, dim=1))
    close(final, state)  # the final state is the last document's own
    y_rec = ssd_recurrent(t["x"], t["dt"], t["A"], t["B"], t["C"], seq_idx=seq_idx, initial_state=h0, **kw)
    close(y, y_rec)


def conv_inputs(batch=2, length=29, channels=6, width=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, length, channels, dtype=torch.float64, generator=g),
            torch.randn(channels, width, dtype=torch.float64, generator=g),
            torch.randn(channels, dtype=torch.float64, generator=g))


def test_conv_resets_equal_separate_runs():
    lengths = [4, 1, 9, 2, 13]
    x, w, b = conv_inputs(batch=1, length=sum(lengths))
    y, final = causal_conv1d_ref(x, w, b, seq_idx=split_docs(lengths), return_final_state=True)
    parts, start = [], 0
    for n in lengths:
        yi, last_final = causal_conv1d_ref(x[:, start:start + n], w, b, return_final_state=True)
        parts.append(yi)
        start += n
    close(y, torch.cat(parts, dim=1))
    close(final, last_final)  # final state holds only the last document's inputs


def test_conv_final_state_feeds_a_continuation():
    x, w, b = conv_inputs()
    whole, whole_final = causal_conv1d_ref(x, w, b, return_final_state=True)
    for cut in (1, 2, 10):  # cuts shorter than the window too
        y1, h1 = causal_conv1d_ref(x[:, :cut], w, b, return_final_state=True)
        y2, h2 = causal_conv1d_ref(x[:, cut:], w, b, initial_state=h1, return_final_state=True)
        close(torch.cat([y1, y2], dim=1), whole)
        close(h2, whole_final)
