"""Second derivatives, torch.func transforms, forward AD and autocast behave as PyTorch's
cross_entropy / linear_cross_entropy (SEMANTICS.md, "Higher-order and transforms"); the option and
shape errors come when and as PyTorch raises them.

Hessian-vector products are compared with PyTorch's in float64, or, for z_loss and softcap (which
PyTorch lacks), with `_torchref.ref_cross_entropy`, a float64 reference built from torch ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _torchref import ref_cross_entropy
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap

import softmaxce.torch as sce
from softmaxce.torch import _composite, _linear_ops, _ops

D64 = torch.float64

CE_CASES = [
    # target kind, weighted, label_smoothing, z_loss, softcap
    ("index", False, 0.0, 0.0, None),
    ("index", True, 0.2, 0.0, None),
    ("index", True, 0.1, 1e-2, 3.0),
    ("prob", False, 0.0, 0.0, None),
    ("prob", True, 0.3, 1e-2, 2.5),
]
CE_IDS = [f"{k}{'-w' if w else ''}-eps{e}-lam{lam}-cap{c}" for k, w, e, lam, c in CE_CASES]


def _problem(kind: str, weighted: bool, gen: torch.Generator, N: int = 6, C: int = 5):
    z = torch.randn(N, C, generator=gen, dtype=D64) * 2
    if kind == "prob":
        t = torch.rand(N, C, generator=gen, dtype=D64).softmax(1)
    else:
        t = torch.randint(0, C, (N,), generator=gen)
        t[1] = -100
    w = torch.rand(C, generator=gen, dtype=D64) + 0.5 if weighted else None
    return z, t, w


def _reference(lam: float, cap: float | None):
    """PyTorch's own function when it has every option, else the float64 reference from torch ops."""
    if not lam and cap is None:
        return lambda z, t, w, **kw: F.cross_entropy(z, t, w, **kw)
    return lambda z, t, w, **kw: ref_cross_entropy(z, t, w, z_loss=lam, softcap=cap, **kw)


def _hvp(fn, inputs, up, vs):
    """(g, H v): the gradient dJ/dinputs * up and the Hessian-vector product of J * up."""
    inputs = [v.detach().clone().requires_grad_() for v in inputs]
    loss = fn(*inputs)
    g = torch.autograd.grad(loss, inputs, up, create_graph=True)
    hv = torch.autograd.grad(sum((gi * v).sum() for gi, v in zip(g, vs, strict=True)), inputs)
    return [x.detach() for x in g], hv


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("kind", "weighted", "eps", "lam", "cap"), CE_CASES, ids=CE_IDS)
def test_cross_entropy_hessian_vector_product(kind, weighted, eps, lam, cap, reduction):
    gen = torch.Generator().manual_seed(11)
    z, t, w = _problem(kind, weighted, gen)
    kw = dict(reduction=reduction, label_smoothing=eps)
    up = torch.rand(z.shape[0], generator=gen, dtype=D64) + 0.5 if reduction == "none" else torch.tensor(1.3, dtype=D64)
    inputs = [z, t] if kind == "prob" else [z]
    vs = [torch.randn(v.shape, generator=gen, dtype=D64) for v in inputs]
    ref = _reference(lam, cap)

    def ours_fn(z, t_=t):
        return sce.cross_entropy(z, t_, w, z_loss=lam, softcap=cap, **kw)

    def ref_fn(z, t_=t):
        return ref(z, t_, w, **kw)

    g, hv = _hvp(ours_fn, inputs, up, vs)
    g_ref, hv_ref = _hvp(ref_fn, inputs, up, vs)
    for a, b in zip(g + list(hv), g_ref + list(hv_ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(
    ("kind", "weighted", "eps", "lam", "cap"), CE_CASES[1::2] + CE_CASES[4:], ids=CE_IDS[1::2] + CE_IDS[4:]
)
def test_cross_entropy_gradgradcheck(kind, weighted, eps, lam, cap, reduction):
    gen = torch.Generator().manual_seed(12)
    z, t, w = _problem(kind, weighted, gen, N=4, C=3)
    inputs = (z.requires_grad_(), t.requires_grad_()) if kind == "prob" else (z.requires_grad_(),)

    def fn(*args):
        return sce.cross_entropy(args[0], args[1] if kind == "prob" else t, w, reduction=reduction,
                                 label_smoothing=eps, z_loss=lam, softcap=cap)  # fmt: skip

    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


LCE_CASES = [
    # target kind, bias, weighted, eps, z_loss, softcap
    ("index", False, False, 0.0, 0.0, None),
    ("index", True, True, 0.1, 0.0, None),
    ("index", True, True, 0.1, 1e-2, 4.0),
    ("prob", True, False, 0.2, 0.0, None),
]
LCE_IDS = [f"{k}{'-bias' if b else ''}{'-w' if w else ''}-eps{e}-lam{lam}-cap{c}" for k, b, w, e, lam, c in LCE_CASES]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("kind", "has_bias", "weighted", "eps", "lam", "cap"), LCE_CASES, ids=LCE_IDS)
def test_linear_cross_entropy_hessian_vector_product(kind, has_bias, weighted, eps, lam, cap, reduction):
    gen = torch.Generator().manual_seed(13)
    N, Dm, V = 6, 4, 7
    x = torch.randn(N, Dm, generator=gen, dtype=D64)
    W = torch.randn(V, Dm, generator=gen, dtype=D64)
    b = torch.randn(V, generator=gen, dtype=D64)
    _, t, w = _problem(kind, weighted, gen, N=N, C=V)
    kw = dict(reduction=reduction, label_smoothing=eps)
    up = torch.rand(N, generator=gen, dtype=D64) + 0.5 if reduction == "none" else torch.tensor(0.7, dtype=D64)
    inputs = [x, W] + ([b] if has_bias else [])
    vs = [torch.randn(v.shape, generator=gen, dtype=D64) for v in inputs]
    ref = _reference(lam, cap)

    def ours_fn(x, W, b=None):
        return sce.linear_cross_entropy(x, W, t, linear_bias=b, weight=w, z_loss=lam, softcap=cap, **kw)

    def ref_fn(x, W, b=None):
        return ref(F.linear(x, W, b), t, w, **kw)

    g, hv = _hvp(ours_fn, inputs, up, vs)
    g_ref, hv_ref = _hvp(ref_fn, inputs, up, vs)
    for a, r in zip(g + list(hv), g_ref + list(hv_ref), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_gradgradcheck(reduction):
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(3, 2, generator=gen, dtype=D64, requires_grad=True)
    W = torch.randn(4, 2, generator=gen, dtype=D64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=D64, requires_grad=True)
    t = torch.rand(3, 4, generator=gen, dtype=D64).softmax(1).requires_grad_()
    w = torch.rand(4, generator=gen, dtype=D64) + 0.5

    def fn(x, W, b, t):
        return sce.linear_cross_entropy(x, W, t, linear_bias=b, weight=w, reduction=reduction,
                                        label_smoothing=0.1, z_loss=1e-2, softcap=3.0)  # fmt: skip

    assert gradcheck(fn, (x, W, b, t))
    assert gradgradcheck(fn, (x, W, b, t))


def test_first_order_keeps_the_fast_path(monkeypatch):
    """Plain backward never builds the composite graph; create_graph=True does."""
    calls = []
    monkeypatch.setattr(_composite, "vjp", lambda *a, **k: calls.append(1) or pytest.fail("composite used"))
    z = torch.randn(5, 4, requires_grad=True)
    x, W = torch.randn(5, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, -100])
    for reduction in ("mean", "none"):
        sce.cross_entropy(z, t, reduction=reduction).sum().backward()
        sce.linear_cross_entropy(x, W, t, reduction=reduction).sum().backward()
    assert not calls


# ----------------------------------------------------------------------------- torch.func and forward AD


def _ce_pair(**kw):
    w = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=D64)
    return (lambda z, t: sce.cross_entropy(z, t, w, **kw)), (lambda z, t: F.cross_entropy(z, t, w, **kw))


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_func_transforms_cross_entropy(kind):
    gen = torch.Generator().manual_seed(15)
    z = torch.randn(5, 4, generator=gen, dtype=D64)
    t = torch.rand(5, 4, generator=gen, dtype=D64).softmax(1) if kind == "prob" else torch.tensor([0, 3, -100, 1, 2])
    ours, theirs = _ce_pair(label_smoothing=0.1)
    close = torch.testing.assert_close
    close(grad(ours)(z, t), grad(theirs)(z, t))
    close(vmap(grad(ours))(z, t), vmap(grad(theirs))(z, t))  # per-sample gradients
    close(jacrev(ours, argnums=(0, 1) if kind == "prob" else 0)(z, t),
          jacrev(theirs, argnums=(0, 1) if kind == "prob" else 0)(z, t))  # fmt: skip
    close(jacfwd(ours)(z, t), jacfwd(theirs)(z, t))
    v = torch.randn(z.shape, generator=gen, dtype=D64)
    close(jvp(lambda z: ours(z, t), (z,), (v,)), jvp(lambda z: theirs(z, t), (z,), (v,)))
    ours_n, theirs_n = _ce_pair(reduction="none")
    close(jacrev(ours_n)(z, t), jacrev(theirs_n)(z, t))
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(z, v)
        a = torch.autograd.forward_ad.unpack_dual(ours(dual, t)).tangent
        b = torch.autograd.forward_ad.unpack_dual(theirs(dual, t)).tangent
    close(a, b)


def test_func_transforms_linear_cross_entropy():
    gen = torch.Generator().manual_seed(16)
    x, W, b = (torch.randn(s, generator=gen, dtype=D64) for s in ((6, 3), (5, 3), (5,)))
    t = torch.tensor([0, 4, 1, -100, 2, 3])

    def ours(x, W, b, t):
        return sce.linear_cross_entropy(x, W, t, linear_bias=b, label_smoothing=0.1)

    def theirs(x, W, b, t):
        return F.linear_cross_entropy(x, W, t, linear_bias=b, label_smoothing=0.1)

    close = torch.testing.assert_close
    per_sample = (0, None, None, 0)
    close(vmap(grad(ours, argnums=(1, 2)), per_sample)(x, W, b, t),
          vmap(grad(theirs, argnums=(1, 2)), per_sample)(x, W, b, t))  # fmt: skip
    close(jacrev(ours, argnums=(0, 1))(x, W, b, t), jacrev(theirs, argnums=(0, 1))(x, W, b, t))
    close(jacfwd(ours, argnums=1)(x, W, b, t), jacfwd(theirs, argnums=1)(x, W, b, t))


def test_func_transforms_modules():
    torch.manual_seed(17)
    ours = sce.LinearCrossEntropyLoss(3, 5, bias=True, dtype=D64, label_smoothing=0.1)
    theirs = torch.nn.LinearCrossEntropyLoss(3, 5, bias=True, dtype=D64, label_smoothing=0.1)
    theirs.load_state_dict(ours.state_dict())
    params = {k: v.detach() for k, v in ours.named_parameters()}
    x, t = torch.randn(6, 3, dtype=D64), torch.tensor([0, 4, 1, -100, 2, 3])

    def per_sample(module):
        loss = lambda p, x, t: functional_call(module, p, (x.unsqueeze(0), t.unsqueeze(0)))  # noqa: E731
        return vmap(grad(loss), (None, 0, 0))(params, x, t)

    for k, v in per_sample(ours).items():
        torch.testing.assert_close(v, per_sample(theirs)[k])
    z = torch.randn(6, 5, dtype=D64)
    a = vmap(grad(lambda z, t: sce.CrossEntropyLoss()(z, t)))(z, t)
    torch.testing.assert_close(a, vmap(grad(lambda z, t: torch.nn.CrossEntropyLoss()(z, t)))(z, t))


def test_opcheck_backward_ops():
    """The backward ops (used by "none" and first-order backward) pass opcheck too."""
    z = torch.randn(5, 7, dtype=D64)
    t = torch.tensor([0, 3, -100, 6, 2])
    up = torch.rand(5, dtype=D64)
    torch.library.opcheck(_ops._ce_bwd, (z, t, None, up, -100, 0.1, 1e-3, 2.0, "none", ""))
    x, W, b = torch.randn(5, 4, dtype=D64), torch.randn(7, 4, dtype=D64), torch.randn(7, dtype=D64)
    torch.library.opcheck(
        _linear_ops._lce_bwd, (x, W, t, b, None, up, -100, 0.1, 0.0, 0.0, "none", 2, True, True, True, "")
    )


# ----------------------------------------------------------------------------- autocast


def _autocast_devices():
    cases = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16")]
    for dtype in (torch.float16, torch.bfloat16):
        marks = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
        cases.append(pytest.param("cuda", dtype, id=f"cuda-{str(dtype)[6:]}", marks=marks))
    return cases


@pytest.mark.parametrize(("device", "dtype"), _autocast_devices())
def test_autocast_dtype_and_value_match_torch(device, dtype):
    gen = torch.Generator().manual_seed(18)
    x, W, b = (torch.randn(s, generator=gen).to(device) for s in ((8, 16), (40, 16), (40,)))
    t = torch.randint(0, 40, (8,), generator=gen).to(device)
    w = (torch.rand(40, generator=gen) + 0.5).to(device)
    z = torch.randn(8, 40, generator=gen).to(device)
    opts = torch.nn.LinearCrossEntropyOptions()
    torch.manual_seed(0)
    lce_ours = sce.LinearCrossEntropyLoss(16, 40, bias=True, device=device)
    lce_theirs = torch.nn.LinearCrossEntropyLoss(16, 40, bias=True, device=device)
    lce_theirs.load_state_dict(lce_ours.state_dict())
    with torch.autocast(device, dtype=dtype):
        pairs = [
            (sce.cross_entropy(z, t, w, label_smoothing=0.1), F.cross_entropy(z, t, w, label_smoothing=0.1)),
            (sce.cross_entropy(z.to(dtype), t, reduction="none"), F.cross_entropy(z.to(dtype), t, reduction="none")),
            (sce.CrossEntropyLoss(w)(z.to(dtype), t), torch.nn.CrossEntropyLoss(w)(z.to(dtype), t)),
            (sce.linear_cross_entropy(x, W, t, linear_bias=b), F.linear_cross_entropy(x, W, t, linear_bias=b)),
            (sce.linear_cross_entropy(x, W, t, options=opts), F.linear_cross_entropy(x, W, t, options=opts)),
            (lce_ours(x, t), lce_theirs(x, t)),
        ]
    for ours, theirs in pairs:
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- when and how errors come


def test_cross_entropy_loss_checks_options_when_called():
    for kw in (dict(label_smoothing=1.5), dict(reduction="avg"), dict(z_loss=-1.0), dict(softcap=0.0)):
        module = sce.CrossEntropyLoss(**kw)  # constructs, as torch.nn.CrossEntropyLoss does
        with pytest.raises((ValueError, RuntimeError)):
            module(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(RuntimeError, match=r"label_smoothing must be between 0.0 and 1.0. Got: 1.5"):
        sce.CrossEntropyLoss(label_smoothing=1.5)(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))


def test_linear_cross_entropy_loss_checks_options_at_construction():
    for kw in (dict(label_smoothing=1.5), dict(z_loss=-1.0), dict(softcap=-2.0)):
        with pytest.raises(RuntimeError):
            sce.LinearCrossEntropyLoss(3, 4, **kw)
    with pytest.raises(RuntimeError) as theirs:
        torch.nn.LinearCrossEntropyLoss(3, 4, label_smoothing=1.5)
    with pytest.raises(RuntimeError, match=str(theirs.value).replace("[", r"\[")):
        sce.LinearCrossEntropyLoss(3, 4, label_smoothing=1.5)
    sce.LinearCrossEntropyLoss(3, 4, reduction="avg")  # torch checks reduction on the call


@pytest.mark.parametrize(
    ("z", "t"),
    [
        (torch.randn(4, 3), torch.rand(5, 3)),
        (torch.randn(4, 3), torch.randint(0, 3, (5, 3))),
        (torch.randn(4, 3, 2), torch.randint(0, 3, (5, 3))),
    ],
    ids=["prob-shaped", "multi-target", "k-dim"],
)
def test_batch_size_is_checked_before_target_rank(z, t):
    for ours, theirs in ((sce.cross_entropy, F.cross_entropy), (sce.CrossEntropyLoss(), torch.nn.CrossEntropyLoss())):
        with pytest.raises(ValueError) as expected:
            theirs(z, t)
        with pytest.raises(ValueError) as got:
            ours(z, t)
        assert str(got.value) == str(expected.value)
    x, W = torch.randn(4, 2), torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"Expected input batch_size \(4\) to match target batch_size \(5\)."):
        sce.linear_cross_entropy(x, W, torch.rand(5, 3))
    with pytest.raises(ValueError, match=r"Expected input batch_size \(4\) to match target batch_size \(5\)."):
        sce.LinearCrossEntropyLoss(2, 3)(x, torch.rand(5, 3))
