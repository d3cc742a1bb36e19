"""The fused linear head equals cross_entropy(x @ W.T + b, ...) for every option, in chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import softmaxce
from option_cases import FRONT_END_OPTIONS

RNG = np.random.default_rng(1234)
OPTION_CASES = FRONT_END_OPTIONS


def _problem(P=29, D=7, V=23, probability=False, ignored=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((P, D)) * 2
    W = rng.standard_normal((V, D))
    b = rng.standard_normal(V)
    if probability:
        t = rng.random((P, V))
        t /= t.sum(axis=1, keepdims=True)
    else:
        t = rng.integers(0, V, P)
        if ignored and P > 3:
            t[[1, P - 2]] = -100
    return x, W, b, t


def _opts(case, V):
    kw = dict(OPTION_CASES[case])
    if kw.get("weight") == "w":
        kw["weight"] = np.linspace(0.5, 2.0, V)
    return kw


@pytest.mark.parametrize("chunk_size", [1, 4, 29, 1000, None], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probability", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_fused_equals_unfused(case, probability, reduction, chunk_size):
    x, W, b, t = _problem(probability=probability)
    kw = _opts(case, W.shape[0])
    go = np.random.default_rng(5).random(x.shape[0]) if reduction == "none" else 0.7
    loss, gx, gw, gb = softmaxce.linear_cross_entropy_and_grad(
        x, W, t, bias=b, reduction=reduction, chunk_size=chunk_size, grad_output=go, **kw
    )
    z = x @ W.T + b
    ref_loss, gz = softmaxce.cross_entropy_and_grad(z, t, reduction=reduction, grad_output=go, **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, gz @ W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gw, gz.T @ x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gb, gz.sum(axis=0), rtol=1e-10, atol=1e-12)
    only = softmaxce.linear_cross_entropy(x, W, t, bias=b, reduction=reduction, chunk_size=chunk_size, **kw)
    np.testing.assert_allclose(only, loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probability", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("case", ["plain", "weight", "smooth", "weight-smooth"])
def test_against_torch(case, probability, reduction):
    x, W, b, t = _problem(probability=probability, seed=3)
    kw = _opts(case, W.shape[0])
    xt = torch.tensor(x, requires_grad=True)
    Wt = torch.tensor(W, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    tt = torch.tensor(t)
    wt = None if "weight" not in kw else torch.tensor(kw["weight"])
    ref = F.cross_entropy(
        F.linear(xt, Wt, bt), tt, weight=wt, reduction=reduction, label_smoothing=kw.get("label_smoothing", 0.0)
    )
    go = np.random.default_rng(7).random(x.shape[0]) if reduction == "none" else 1.0
    ref.backward(torch.tensor(go) if reduction == "none" else None)
    loss, gx, gw, gb = softmaxce.linear_cross_entropy_and_grad(
        x, W, t, bias=b, reduction=reduction, chunk_size=8, grad_output=go, **kw
    )
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gw, Wt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gb, bt.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_no_bias_gives_none_and_leading_dims_are_positions():
    x, W, _, t = _problem(P=24)
    x3, t3 = x.reshape(2, 3, 4, -1), t.reshape(2, 3, 4)
    loss, gx, gw, gb = softmaxce.linear_cross_entropy_and_grad(x3, W, t3, reduction="none", chunk_size=5)
    assert gb is None and gx.shape == x3.shape and loss.shape == (2, 3, 4)
    ref, gz = softmaxce.cross_entropy_and_grad(x @ W.T, t, reduction="none")
    np.testing.assert_allclose(loss.reshape(-1), ref, rtol=1e-12)
    np.testing.assert_allclose(gx.reshape(x.shape), gz @ W, rtol=1e-10, atol=1e-13)


def test_single_position_vector_input():
    x, W, b, _ = _problem(P=1)
    loss = softmaxce.linear_cross_entropy(x[0], W, 3, bias=b)
    np.testing.assert_allclose(loss, softmaxce.cross_entropy(x[0] @ W.T + b, 3), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_and_empty(reduction):
    x, W, b, t = _problem(P=6)
    t[:] = -100
    loss, gx, gw, gb = softmaxce.linear_cross_entropy_and_grad(x, W, t, bias=b, reduction=reduction, chunk_size=4)
    if reduction == "mean":
        assert np.isnan(loss)
    else:
        assert np.all(loss == 0)
    assert not gx.any() and not gw.any() and not gb.any()
    empty = softmaxce.linear_cross_entropy_and_grad(
        np.zeros((0, 7)), W, np.zeros(0, dtype=np.int64), bias=b, reduction=reduction
    )
    if reduction == "mean":
        assert np.isnan(empty[0])
    else:
        assert np.size(empty[0]) == 0 or empty[0] == 0
    assert empty[1].shape == (0, 7) and not empty[2].any() and not empty[3].any()


def test_stats_match_explicit_logits():
    x, W, b, t = _problem(P=17)
    r = softmaxce.linear_cross_entropy_with_stats(x, W, t, bias=b, chunk_size=3, softcap=5.0, compute_grad=True)
    ref = softmaxce.cross_entropy_with_stats(x @ W.T + b, t, softcap=5.0, compute_grad=True)
    np.testing.assert_allclose(r.lse, ref.lse, rtol=1e-12)
    np.testing.assert_array_equal(r.predicted, ref.predicted)
    np.testing.assert_allclose(r.entropy, ref.entropy, rtol=1e-10)
    np.testing.assert_allclose(r.loss, ref.loss, rtol=1e-12)
    np.testing.assert_allclose(r.grad_weight, ref.grad_logits.T @ x, rtol=1e-10, atol=1e-13)


def test_float32_accuracy_and_determinism():
    rng = np.random.default_rng(0)
    P, D, V = 300, 64, 5000
    x = rng.standard_normal((P, D), dtype=np.float32)
    W = (rng.standard_normal((V, D), dtype=np.float32) * 0.2).astype(np.float32)
    t = rng.integers(0, V, P)
    loss, gx, gw, _ = softmaxce.linear_cross_entropy_and_grad(x, W, t, chunk_size=64)
    assert gx.dtype == np.float32 and gw.dtype == np.float32
    ref_loss, gz = softmaxce.cross_entropy_and_grad(x.astype(np.float64) @ W.astype(np.float64).T, t)
    rel = lambda a, r: np.linalg.norm(a - r) / np.linalg.norm(r)  # noqa: E731
    assert abs(float(loss) - float(ref_loss)) <= 1e-6 * abs(float(ref_loss))
    assert rel(gx, gz @ W.astype(np.float64)) < 1e-5
    assert rel(gw, gz.T @ x.astype(np.float64)) < 1e-5
    again = softmaxce.linear_cross_entropy_and_grad(x, W, t, chunk_size=64)
    np.testing.assert_array_equal(again[1], gx)
    np.testing.assert_array_equal(again[2], gw)


def test_inputs_not_modified():
    x, W, b, t = _problem()
    copies = [a.copy() for a in (x, W, b, t)]
    softmaxce.linear_cross_entropy_and_grad(x, W, t, bias=b, chunk_size=3, label_smoothing=0.1, softcap=2.0)
    for a, c in zip((x, W, b, t), copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_bad_input_messages():
    x, W, b, t = _problem()
    with pytest.raises(ValueError, match=r"linear_weight must have shape \(V, 5\).*got \(23, 7\)"):
        softmaxce.linear_cross_entropy(x[:, :5], W, t)
    with pytest.raises(ValueError, match=r"bias must have shape \(23,\), got \(22,\)"):
        softmaxce.linear_cross_entropy(x, W, t, bias=b[:-1])
    with pytest.raises(RuntimeError, match=r"Expected target size \[29\].*got \[28\]"):
        softmaxce.linear_cross_entropy(x, W, t[:-1])
    with pytest.raises(IndexError, match="Target 23 is out of bounds"):
        softmaxce.linear_cross_entropy(x, W, np.full(29, 23))
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        softmaxce.linear_cross_entropy(x, W, t, chunk_size=0)
    with pytest.raises(NotImplementedError):
        softmaxce.linear_cross_entropy(x.astype(np.int64), W, t)


@pytest.mark.parametrize("softcap", [None, 5.0], ids=["plain", "softcap"])
def test_stats_with_gradient_in_the_same_buffer(softcap):
    # Regression: the fused head computes the gradient in the logits buffer; the entropy must be
    # taken from the logits, not from the exp values that overwrite them.
    x, W, b, t = _problem(P=11)
    r = softmaxce.linear_cross_entropy_with_stats(x, W, t, bias=b, softcap=softcap, compute_grad=True, chunk_size=4)
    ref = softmaxce.cross_entropy_with_stats(x @ W.T + b, t, softcap=softcap)
    np.testing.assert_allclose(r.entropy, ref.entropy, rtol=1e-10)
    np.testing.assert_allclose(r.lse, ref.lse, rtol=1e-12)
    np.testing.assert_array_equal(r.predicted, ref.predicted)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ignored_positions_cost_no_products(reduction):
    """Positions whose target is ignore_index take no part in the three products (the chunks run over
    the kept rows only), and every result is what the unfused loss gives them: loss 0, gradient 0."""
    from softmaxce import _fused
    from softmaxce._options import CEOptions

    x, W, b, t = _problem(P=40, seed=3)
    t[::3] = -100  # 14 of 40 ignored
    seen = []

    class Counting(_fused.ScipyProducts):
        def logits(self, xc, W, out):
            seen.append(xc.shape[0])
            super().logits(xc, W, out)

    up = np.linspace(0.5, 1.5, 40) if reduction == "none" else None
    options = CEOptions(reduction=reduction, label_smoothing=0.1, z_loss=1e-3)
    r = _fused.forward_linear(
        x, W, t, b, None, options, 8, want_grad=True, want_stats=False, grad_output=up, products=Counting(np.float64)
    )
    assert sum(seen) == np.count_nonzero(t != -100) and max(seen) == 8
    kw = dict(reduction=reduction, label_smoothing=0.1, z_loss=1e-3, grad_output=up)
    loss, g = softmaxce.cross_entropy_and_grad(x @ W.T + b, t, **kw)
    np.testing.assert_allclose(r.loss, loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.grad_x, g @ W, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.grad_weight, g.T @ x, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.grad_bias, g.sum(0), rtol=1e-12, atol=1e-15)
    assert (r.grad_x[t == -100] == 0).all()
