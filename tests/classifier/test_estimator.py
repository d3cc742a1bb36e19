"""SoftmaxClassifier: sklearn conformance, exact back-propagation, soft targets, fused head, bad input."""

from __future__ import annotations

import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import load_digits, make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils.estimator_checks import parametrize_with_checks

import softmaxce
from softmaxce.classifier import SoftmaxClassifier

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _blobs(n=120, n_classes=3, n_features=5, seed=0):
    X, y = make_blobs(n_samples=n, centers=n_classes, n_features=n_features, random_state=seed, cluster_std=2.0)
    return X, y


# ---------------------------------------------------------------------- scikit-learn's conformance suite


@parametrize_with_checks([SoftmaxClassifier(hidden_layer_sizes=(20,), max_iter=100)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------- exact back-propagation


def _reference_objective(params, shapes, X, y, sw, *, activation, cw, eps, lam, alpha):
    """float64 NumPy J = sum_n s_n l_n / sum s + alpha/2 sum ||W||^2 / sum s, from SEMANTICS.md."""
    Ws, bs, pos = [], [], 0
    for fan_in, fan_out in shapes:
        Ws.append(params[pos : pos + fan_in * fan_out].reshape(fan_in, fan_out))
        pos += fan_in * fan_out
    for _, fan_out in shapes:
        bs.append(params[pos : pos + fan_out])
        pos += fan_out
    act = {
        "tanh": np.tanh,
        "relu": lambda u: np.maximum(u, 0),
        "logistic": lambda u: 1 / (1 + np.exp(-u)),
        "identity": lambda u: u,
    }[activation]
    h = X
    for W, b in zip(Ws[:-1], bs[:-1], strict=True):
        h = act(h @ W + b)
    z = h @ Ws[-1] + bs[-1]
    C = z.shape[1]
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    nll = lse[:, None] - z  # -ln a
    wy = cw[y]
    loss = (1 - eps) * wy * nll[np.arange(len(y)), y] + eps / C * (nll * cw).sum(axis=1) + wy * lam * lse**2
    S = sw.sum()
    return float((sw * loss).sum() / S + 0.5 * alpha * sum((W**2).sum() for W in Ws) / S)


def _flat(clf):
    return np.concatenate([c.ravel() for c in clf.coefs_] + [b.ravel() for b in clf.intercepts_])


@pytest.mark.parametrize("fused_head", [False, True], ids=["logits", "fused"])
@pytest.mark.parametrize(
    "hidden,activation",
    [((), "identity"), ((7,), "tanh"), ((6, 5), "logistic")],
    ids=["softmax-regression", "tanh", "logistic-2"],
)
def test_one_sgd_step_is_the_exact_gradient(hidden, activation, fused_head):
    # One full-batch SGD step without momentum moves the parameters by -lr * dJ/dparams; compare that
    # gradient with 4th-order central finite differences of a float64 reference objective.
    rng = np.random.default_rng(1)
    n, d, C = 13, 4, 5
    X = rng.standard_normal((n, d))
    y = np.arange(n) % C
    sw = rng.uniform(0.2, 2.0, n)
    cw = {0: 0.5, 1: 2.0, 2: 1.0, 3: 1.5, 4: 0.7}
    opts = dict(class_weight=cw, label_smoothing=0.1, z_loss=0.01, alpha=0.3)
    lr = 1e-3
    clf = SoftmaxClassifier(
        hidden,
        activation,
        solver="sgd",
        momentum=0.0,
        nesterovs_momentum=False,
        batch_size=n,
        shuffle=False,
        learning_rate_init=lr,
        max_iter=1,
        random_state=0,
        fused_head=fused_head,
        **opts,
    )
    clf.fit(X, y, sample_weight=sw)
    before = _flat(clf)
    clf.set_params(warm_start=True).fit(X, y, sample_weight=sw)
    grad = (before - _flat(clf)) / lr
    shapes = [c.shape for c in clf.coefs_]
    ref_kw = dict(activation=activation, cw=np.array([cw[k] for k in range(C)]), eps=0.1, lam=0.01, alpha=0.3)
    h = 1e-4
    fd = np.empty_like(before)
    for i in range(before.size):

        def J(delta, i=i):
            p = before.copy()
            p[i] += delta
            return _reference_objective(p, shapes, X, y, sw, **ref_kw)

        fd[i] = (-J(2 * h) + 8 * J(h) - 8 * J(-h) + J(-2 * h)) / (12 * h)
    np.testing.assert_allclose(grad, fd, rtol=2e-6, atol=1e-8)
    # and the loss recorded for that epoch is J at the parameters the epoch started from
    assert clf.loss_curve_[-1] == pytest.approx(_reference_objective(before, shapes, X, y, sw, **ref_kw), rel=1e-12)


def test_output_delta_is_a_minus_y():
    # Softmax regression, no options, one sample: dJ/db_out = a - onehot(y), exactly what the seeds say.
    X = np.array([[0.3, -1.2]])
    clf = SoftmaxClassifier(
        (), solver="sgd", momentum=0.0, learning_rate_init=1.0, alpha=0.0, max_iter=1, random_state=3, shuffle=False
    )
    clf.partial_fit(X, [2], classes=[0, 1, 2])
    b0, W0 = clf.intercepts_[0].copy(), clf.coefs_[0].copy()
    a = softmaxce.softmax(X @ W0 + b0)[0]
    clf.partial_fit(X, [2])
    np.testing.assert_allclose(b0 - clf.intercepts_[0], a - np.array([0.0, 0.0, 1.0]), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(W0 - clf.coefs_[0], np.outer(X[0], a - [0, 0, 1]), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_fused_head_matches_logits_path(solver):
    X, y = _blobs(n=90, n_classes=6)
    kw = dict(
        hidden_layer_sizes=(8,),
        solver=solver,
        max_iter=5,
        random_state=0,
        batch_size=32,
        label_smoothing=0.05,
        z_loss=1e-3,
        class_weight="balanced",
    )
    a = SoftmaxClassifier(fused_head=False, **kw).fit(X, y)
    b = SoftmaxClassifier(fused_head=True, **kw).fit(X, y)
    np.testing.assert_allclose(_flat(a), _flat(b), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-10)


# ---------------------------------------------------------------------- options


def test_digits_accuracy_with_defaults():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
    clf = SoftmaxClassifier(random_state=0).fit(Xtr, ytr)
    assert clf.score(Xte, yte) >= 0.975
    assert clf.n_iter_ < clf.max_iter  # converged by the tol / n_iter_no_change rule


def test_identical_seeds_identical_results_and_different_seeds_differ():
    X, y = _blobs()
    kw = dict(hidden_layer_sizes=(10,), max_iter=20, early_stopping=True, validation_fraction=0.2)
    a = SoftmaxClassifier(random_state=5, **kw).fit(X, y)
    b = SoftmaxClassifier(random_state=5, **kw).fit(X, y)
    c = SoftmaxClassifier(random_state=6, **kw).fit(X, y)
    np.testing.assert_array_equal(_flat(a), _flat(b))
    assert a.loss_curve_ == b.loss_curve_
    assert not np.array_equal(_flat(a), _flat(c))


@pytest.mark.parametrize(
    "kw",
    [
        dict(solver="adam"),
        dict(solver="sgd", momentum=0.9, nesterovs_momentum=True, learning_rate_init=0.05),
        dict(
            solver="sgd",
            momentum=0.5,
            nesterovs_momentum=False,
            learning_rate="invscaling",
            learning_rate_init=0.5,
            power_t=0.25,
        ),
        dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.05),
    ],
    ids=["adam", "sgd-nesterov", "sgd-invscaling", "sgd-adaptive"],
)
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_solvers_and_activations_learn(kw, activation):
    X, y = _blobs(n=150, n_classes=3)
    X = X / 10
    clf = SoftmaxClassifier((16,), activation, max_iter=60, random_state=0, **kw).fit(X, y)
    assert clf.score(X, y) > 0.9
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert len(clf.loss_curve_) == clf.n_iter_ and clf.t_ == clf.n_iter_ * len(y)


def test_adaptive_learning_rate_is_divided_by_five():
    X, y = _blobs(n=60)
    clf = SoftmaxClassifier(
        (5,),
        solver="sgd",
        learning_rate="adaptive",
        learning_rate_init=0.01,
        tol=10.0,
        n_iter_no_change=1,
        max_iter=5,
        random_state=0,
    ).fit(X, y)
    assert clf._optimizer.learning_rate < 0.01 and np.isclose(
        np.log(0.01 / clf._optimizer.learning_rate) / np.log(5),
        round(np.log(0.01 / clf._optimizer.learning_rate) / np.log(5)),
    )


def test_early_stopping_keeps_the_best_validation_weights():
    X, y = _blobs(n=200, n_classes=4)
    clf = SoftmaxClassifier(
        (10,), early_stopping=True, validation_fraction=0.25, n_iter_no_change=3, max_iter=200, random_state=0
    ).fit(X, y)
    assert len(clf.validation_scores_) == clf.n_iter_ < 200
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.best_loss_ is None
    # the kept weights are those after the best epoch: training only that many epochs gives them again
    best_epoch = int(np.argmax(clf.validation_scores_)) + 1
    assert best_epoch < clf.n_iter_
    again = clone(clf).set_params(max_iter=best_epoch).fit(X, y)
    np.testing.assert_array_equal(_flat(again), _flat(clf))


def test_no_early_stopping_attributes():
    X, y = _blobs(n=60)
    clf = SoftmaxClassifier((4,), max_iter=3, random_state=0).fit(X, y)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    assert clf.best_loss_ == min(clf.loss_curve_)


def test_balanced_class_weight_equals_the_explicit_dict_and_helps_the_minority():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (180, 2)), rng.normal(1.5, 1, (20, 2))])
    y = np.array(["big"] * 180 + ["small"] * 20)
    kw = dict(hidden_layer_sizes=(), max_iter=50, random_state=0, learning_rate_init=0.05)
    bal = SoftmaxClassifier(class_weight="balanced", **kw).fit(X, y)
    explicit = SoftmaxClassifier(class_weight={"big": 200 / (2 * 180), "small": 200 / (2 * 20)}, **kw).fit(X, y)
    np.testing.assert_allclose(_flat(bal), _flat(explicit), rtol=1e-12)
    plain = SoftmaxClassifier(**kw).fit(X, y)
    recall = lambda m: np.mean(m.predict(X[y == "small"]) == "small")  # noqa: E731
    assert recall(bal) > recall(plain) + 0.2


def test_sample_weight_equals_repetition_full_batch():
    X, y = _blobs(n=40)
    sw = np.arange(40) % 3
    kw = dict(hidden_layer_sizes=(6,), max_iter=30, random_state=0, batch_size=1000, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = SoftmaxClassifier(**kw).fit(X, y, sample_weight=sw)
        b = SoftmaxClassifier(**kw).fit(np.repeat(X, sw, axis=0), np.repeat(y, sw))
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-9, atol=1e-12)


def test_label_smoothing_and_z_loss_change_the_solution_as_documented():
    X, y = _blobs(n=90)
    kw = dict(hidden_layer_sizes=(), max_iter=150, random_state=0, learning_rate_init=0.05, alpha=0.0)
    plain = SoftmaxClassifier(**kw).fit(X, y)
    smooth = SoftmaxClassifier(label_smoothing=0.3, **kw).fit(X, y)
    zl = SoftmaxClassifier(z_loss=0.1, **kw).fit(X, y)
    # smoothing keeps predictions less confident; z-loss pulls lse(z) toward 0
    assert smooth.predict_proba(X).max(axis=1).mean() < plain.predict_proba(X).max(axis=1).mean() - 0.05
    lse = lambda m: np.log(np.exp(m.decision_function(X)).sum(axis=1))  # noqa: E731
    assert np.abs(lse(zl)).mean() < np.abs(lse(plain)).mean()


# ---------------------------------------------------------------------- soft targets


def test_one_hot_soft_targets_equal_hard_labels():
    X, y = _blobs(n=80, n_classes=4)
    Y = np.eye(4)[y]
    kw = dict(hidden_layer_sizes=(9,), max_iter=8, random_state=0, label_smoothing=0.1)
    hard = SoftmaxClassifier(**kw).fit(X, y)
    soft = SoftmaxClassifier(**kw).fit(X, Y)
    np.testing.assert_allclose(_flat(hard), _flat(soft), rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(soft.classes_, np.arange(4))


def test_distillation_from_a_teacher():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
    teacher = SoftmaxClassifier(random_state=0).fit(Xtr, ytr)
    student = SoftmaxClassifier((32,), random_state=0, max_iter=100)
    student.partial_fit(Xtr[:1], teacher.predict_proba(Xtr[:1]), classes=teacher.classes_)
    student.set_params(warm_start=True).fit(Xtr, teacher.predict_proba(Xtr))
    np.testing.assert_array_equal(student.classes_, teacher.classes_)
    assert np.mean(student.predict(Xte) == teacher.predict(Xte)) > 0.95


def test_soft_targets_with_string_classes_map_columns_to_labels():
    X, y = _blobs(n=60, n_classes=3)
    labels = np.array(["a", "b", "c"])
    clf = SoftmaxClassifier((), max_iter=1, random_state=0, learning_rate_init=0.1)
    clf.partial_fit(X, np.eye(3)[y], classes=labels)
    for _ in range(40):
        clf.partial_fit(X, np.eye(3)[y])
    assert set(clf.predict(X)) <= set(labels)
    assert np.mean(clf.predict(X) == labels[y]) > 0.9


@pytest.mark.parametrize(
    "Y,match",
    [
        (np.full((4, 3), 0.5), "sum to 1"),
        (np.array([[1.5, -0.5, 0]] * 4), "non-negative"),
        (np.eye(3, dtype=int)[[0, 1, 2, 0]], "floating"),
        (np.full((4, 3), np.nan), "NaN|finite"),
    ],
    ids=["rows-not-1", "negative", "integer-multilabel", "nan"],
)
def test_bad_soft_targets(Y, match):
    with pytest.raises(ValueError, match=match):
        SoftmaxClassifier((), max_iter=1).fit(np.zeros((4, 2)), Y)


# ---------------------------------------------------------------------- many classes


def test_100k_classes_use_the_fused_head_with_bounded_memory():
    V, D, n, batch = 100_000, 8, 512, 256
    rng = np.random.default_rng(0)
    y = rng.integers(0, V, n)
    X = rng.standard_normal((n, D))
    clf = SoftmaxClassifier((), batch_size=batch, random_state=0, learning_rate_init=0.05, alpha=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn: "more unique classes than 50% of samples"
        clf.partial_fit(X[:2], y[:2], classes=np.arange(V))
        tracemalloc.start()
        clf.partial_fit(X, y)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        clf.partial_fit(X, y)
    logits_bytes = batch * V * 8
    assert peak < 0.6 * logits_bytes, f"peak {peak / 2**20:.0f} MiB vs batch logits {logits_bytes / 2**20:.0f} MiB"
    assert clf.loss_curve_[2] < clf.loss_curve_[1]
    assert clf.coefs_[-1].shape == (D, V)
    pred = clf.predict(X[:5])
    assert pred.shape == (5,) and np.isin(pred, clf.classes_).all()


# ---------------------------------------------------------------------- conventions and bad input


def test_predict_proba_log_proba_decision_function_agree():
    X, y = _blobs(n=60, n_classes=3)
    clf = SoftmaxClassifier((5,), max_iter=20, random_state=0).fit(X, y)
    p = clf.predict_proba(X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(p), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[np.argmax(clf.decision_function(X), axis=1)])
    binary = SoftmaxClassifier((5,), max_iter=20, random_state=0).fit(X[y < 2], np.where(y[y < 2] == 1, "yes", "no"))
    d = binary.decision_function(X)
    assert d.shape == (60,)
    np.testing.assert_array_equal(binary.predict(X), np.where(d > 0, "yes", "no"))


def test_string_labels_and_sparse_input():
    X, y = _blobs(n=90)
    names = np.array(["cat", "dog", "eel"])[y]
    dense = SoftmaxClassifier((7,), max_iter=20, random_state=0).fit(X, names)
    sparse = SoftmaxClassifier((7,), max_iter=20, random_state=0).fit(sp.csr_matrix(X), names)
    np.testing.assert_array_equal(dense.classes_, ["cat", "dog", "eel"])
    np.testing.assert_allclose(_flat(dense), _flat(sparse), rtol=1e-10)
    assert dense.predict(X).dtype == names.dtype


def test_float32_input_trains_in_float32():
    X, y = _blobs(n=60)
    clf = SoftmaxClassifier((5,), max_iter=5, random_state=0).fit(X.astype(np.float32), y)
    assert all(c.dtype == np.float32 for c in clf.coefs_ + clf.intercepts_)
    assert clf.predict_proba(X.astype(np.float32)).dtype == np.float32


def test_inputs_are_not_modified():
    X, y = _blobs(n=60)
    sw = np.linspace(0.5, 1.5, 60)
    copies = X.copy(), y.copy(), sw.copy()
    clf = SoftmaxClassifier((5,), max_iter=3, random_state=0).fit(X, y, sample_weight=sw)
    clf.predict_proba(X)
    for a, b in zip((X, y, sw), copies, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_X_is_rejected(bad):
    X, y = _blobs(n=30)
    X[3, 1] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        SoftmaxClassifier((3,), max_iter=1).fit(X, y)
    clf = SoftmaxClassifier((3,), max_iter=1).fit(_blobs(n=30)[0], y)
    with pytest.raises(ValueError, match="NaN|infinity"):
        clf.predict(X)


def test_wrong_feature_count_one_class_empty_and_unknown_labels():
    X, y = _blobs(n=30)
    clf = SoftmaxClassifier((3,), max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :3])
    with pytest.raises(ValueError, match="class"):
        SoftmaxClassifier((3,)).fit(X, np.zeros(30))
    with pytest.raises(ValueError, match="0 sample"):
        SoftmaxClassifier((3,)).fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="classes must be passed"):
        SoftmaxClassifier((3,)).partial_fit(X, y)
    part = SoftmaxClassifier((3,)).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="not in classes_"):
        part.partial_fit(X, y + 5)
    with pytest.raises(ValueError, match="continuous|Unknown label type"):
        SoftmaxClassifier((3,)).fit(X, np.linspace(0, 1, 30))
    with pytest.raises(ValueError, match="balanced"):
        SoftmaxClassifier((3,), class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])


@pytest.mark.parametrize(
    "param",
    [
        dict(hidden_layer_sizes=(0,)),
        dict(activation="gelu"),
        dict(solver="lbfgs"),
        dict(alpha=-1.0),
        dict(batch_size=0),
        dict(learning_rate="cosine"),
        dict(max_iter=0),
        dict(label_smoothing=1.5),
        dict(z_loss=-0.1),
        dict(validation_fraction=1.0),
        dict(fused_head="yes"),
        dict(class_weight="auto"),
    ],
    ids=lambda d: next(iter(d)),
)
def test_bad_hyperparameters_name_the_parameter(param):
    X, y = _blobs(n=30)
    with pytest.raises(ValueError, match=next(iter(param))):
        SoftmaxClassifier(**param).fit(X, y)


@pytest.mark.parametrize(
    "param",
    [
        dict(hidden_layer_sizes=(2, 0)),
        dict(hidden_layer_sizes=(True,)),
        dict(hidden_layer_sizes="ab"),
        dict(max_iter=True),
        dict(max_iter=2.0),
        dict(batch_size=True),
        dict(alpha=np.inf),
        dict(alpha=np.nan),
        dict(alpha=False),
        dict(learning_rate_init=0.0),
        dict(momentum=1.01),
        dict(validation_fraction=0.0),
        dict(beta_1=1.0),
        dict(beta_2=-0.1),
        dict(epsilon=0.0),
        dict(n_iter_no_change=0),
        dict(tol=-1e-9),
        dict(power_t=np.inf),
        dict(fused_head=2),
        dict(random_state=-1),
    ],
    ids=lambda d: f"{next(iter(d))}={next(iter(d.values()))!r}",
)
def test_edge_values_that_are_rejected(param):
    X, y = _blobs(n=30)
    with pytest.raises(ValueError, match=next(iter(param))):
        SoftmaxClassifier(**param).partial_fit(X, y, classes=[0, 1, 2])


@pytest.mark.parametrize(
    "param",
    [
        dict(hidden_layer_sizes=3),
        dict(hidden_layer_sizes=[4, 2]),
        dict(hidden_layer_sizes=np.array([3])),
        dict(max_iter=np.int64(1)),
        dict(batch_size=1),
        dict(alpha=0),
        dict(momentum=0.0),
        dict(momentum=1.0),
        dict(beta_1=0.0),
        dict(label_smoothing=1.0),
        dict(validation_fraction=0.999, early_stopping=False),
        dict(fused_head=1),
        dict(fused_head=np.False_),
        dict(class_weight={0: 2}),
        dict(random_state=np.random.RandomState(0)),
        dict(shuffle=0, verbose=0, warm_start=None),
    ],
    ids=lambda d: ",".join(
        f"{k}={type(v).__name__ if isinstance(v, np.random.RandomState) else repr(v)}" for k, v in d.items()
    ),
)
def test_edge_values_that_are_accepted(param):
    X, y = _blobs(n=30)
    SoftmaxClassifier(**{"max_iter": 1, **param}).fit(X, y)


def test_invalid_parameters_raise_sklearns_error_on_every_call():
    from sklearn.utils._param_validation import InvalidParameterError

    X, y = _blobs(n=30)
    with pytest.raises(InvalidParameterError, match="The 'alpha' parameter of SoftmaxClassifier must be"):
        SoftmaxClassifier(alpha=-1.0).fit(X, y)
    clf = SoftmaxClassifier((3,)).partial_fit(X, y, classes=[0, 1, 2])
    clf.set_params(solver="lbfgs")  # also checked when partial_fit continues
    with pytest.raises(InvalidParameterError, match="solver"):
        clf.partial_fit(X, y)


def test_partial_fit_and_warm_start_continue_training():
    X, y = _blobs(n=60)
    clf = SoftmaxClassifier((5,), random_state=0, max_iter=3)
    clf.partial_fit(X, y, classes=np.unique(y))
    clf.partial_fit(X, y)
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2
    warm = SoftmaxClassifier((5,), random_state=0, max_iter=3, warm_start=True).fit(X, y)
    first = _flat(warm)
    warm.fit(X, y)
    assert warm.n_iter_ == 6 and not np.array_equal(first, _flat(warm))
    cold = SoftmaxClassifier((5,), random_state=0, max_iter=3).fit(X, y)
    np.testing.assert_array_equal(first, _flat(cold))


def test_pickle_round_trip_and_continue():
    X, y = _blobs(n=60)
    clf = SoftmaxClassifier((5,), random_state=0, max_iter=3).partial_fit(X, y, classes=[0, 1, 2])
    clone = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clone.predict_proba(X), clf.predict_proba(X))
    clf.partial_fit(X, y)
    clone.partial_fit(X, y)
    np.testing.assert_array_equal(_flat(clone), _flat(clf))


def test_verbose_prints_the_loss(capsys):
    X, y = _blobs(n=30)
    SoftmaxClassifier((3,), max_iter=2, verbose=True, random_state=0).fit(X, y)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Iteration 2, loss = " in out


def test_max_iter_reached_warns():
    X, y = _blobs(n=30)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        SoftmaxClassifier((3,), max_iter=1, random_state=0).fit(X, y)


def test_unit_sample_weights_equal_no_sample_weights():
    # sample_weight=None takes the reduction="sum" path, explicit weights the per-row "none" path
    X, y = _blobs(n=70)
    kw = dict(hidden_layer_sizes=(6,), max_iter=10, random_state=0, batch_size=16, class_weight={0: 2.0})
    a = SoftmaxClassifier(**kw).fit(X, y)
    b = SoftmaxClassifier(**kw).fit(X, y, sample_weight=np.ones(70))
    np.testing.assert_allclose(_flat(a), _flat(b), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-12)
    # scaling every weight by 3 only changes the L2 term (alpha is divided by the total sample weight)
    c = SoftmaxClassifier(**kw, alpha=0.0).fit(X, y)
    d = SoftmaxClassifier(**kw, alpha=0.0).fit(X, y, sample_weight=np.full(70, 3.0))
    np.testing.assert_allclose(_flat(c), _flat(d), rtol=1e-9, atol=1e-12)


def test_soft_targets_with_early_stopping_and_sample_weight():
    X, y = _blobs(n=120, n_classes=3)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    Y = 0.8 * np.eye(3)[y] + 0.2 / 3
    clf = SoftmaxClassifier((8,), early_stopping=True, validation_fraction=0.25, max_iter=100, random_state=0)
    clf.fit(X, Y, sample_weight=np.linspace(0.5, 2.0, 120))
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ > 0.8  # accuracy against argmax of the soft targets
