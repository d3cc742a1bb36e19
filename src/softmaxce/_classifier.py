"""SoftmaxClassifier: a multi-layer perceptron whose output layer is softmax + cross-entropy.

The network maps x to logits z = W_L h_{L-1} + b_L with hidden layers h_i = act(W_i h_{i-1} + b_i),
and is trained by mini-batch back-propagation of

    J = sum_n s_n l_n(z_n) / sum_n s_n  +  alpha / 2 * sum_i ||W_i||^2 / sum_n s_n

(s_n the sample weights, l_n softmaxce's cross-entropy with class weights, label smoothing and
z-loss). The output delta dJ/dz_n comes from `softmaxce.cross_entropy_and_grad` (exactly
s_n (a_n - y_n) / sum s for a one-hot target); with many classes it comes from the fused head
`softmaxce.linear_cross_entropy_and_grad`, which never holds the batch's logits. The hidden layers
are back-propagated by hand in NumPy:

    delta_{i-1} = (delta_i W_i^T) * act'(h_{i-1}),   dJ/dW_i = h_{i-1}^T delta_i,   dJ/db_i = sum_n delta_i

All parameters live in one flat vector (the optimizers update it with a few vector operations);
`coefs_` and `intercepts_` are views into it.
"""

from __future__ import annotations

import numbers
import sys
import warnings

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from ._api import cross_entropy_and_grad, log_softmax, softmax
from ._linear import linear_cross_entropy_and_grad

__all__ = ["SoftmaxClassifier"]

ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
SOLVERS = ("sgd", "adam")
LEARNING_RATES = ("constant", "invscaling", "adaptive")
FUSED_HEAD_MIN_CLASSES = 4096  # fused_head="auto" uses the fused head from this many classes on
_CHUNK_ELEMENTS = 2**22  # predict() and the fused training head form at most this many logits at a time


class SoftmaxClassifier(ClassifierMixin, BaseEstimator):
    """Multi-layer perceptron classifier trained on softmax cross-entropy (softmaxce's loss).

    Like `sklearn.neural_network.MLPClassifier`, plus class weights, label smoothing, z-loss,
    probability (soft) targets for distillation, and a fused output layer for 100k+ classes whose
    memory per batch does not grow with the number of classes. `hidden_layer_sizes=()` is
    multinomial softmax regression. The output layer always has one unit per class (also for two
    classes), and the output delta is exactly a - y (per sample, times its weight).

    Soft targets: `fit(X, Y)` with Y a floating (n_samples, n_classes) array of class probabilities
    (rows >= 0 summing to 1, e.g. a teacher's `predict_proba`) trains on
    l_n = -sum_c w_c Y_nc ln a_nc; `classes_` is then `arange(n_classes)` unless an earlier fit or
    `partial_fit(X, Y, classes=labels)` named the labels (column c is `classes_[c]`).

    Parameters:
        hidden_layer_sizes: units of each hidden layer; () for no hidden layer. Default (100,).
        activation: hidden activation, "relu" (default), "tanh", "logistic" or "identity".
        solver: "adam" (default) or "sgd" (with `momentum`, `nesterovs_momentum`).
        alpha: L2 penalty on the weights (not the biases); divided by the batch's total sample
            weight, as in MLPClassifier. Default 1e-4.
        batch_size: samples per mini-batch, or "auto" = min(200, n_samples).
        learning_rate: sgd schedule: "constant", "invscaling" (lr_init / t**power_t, t = samples
            seen) or "adaptive" (divide by 5 after `n_iter_no_change` epochs without improvement).
        learning_rate_init: initial step size. Default 4e-3 (MLPClassifier: 1e-3).
        power_t: exponent of "invscaling".
        max_iter: maximum number of epochs of fit(). Default 200.
        shuffle: shuffle the samples every epoch.
        random_state: None, an int or a RandomState: weight init, shuffling, validation split.
            The same int gives identical results.
        tol: an epoch improves when the training loss drops (or the validation score rises) by
            more than tol. Default 1e-4.
        verbose: print the loss after every epoch.
        warm_start: fit() starts from the previous solution (and optimizer state).
        momentum, nesterovs_momentum: sgd momentum.
        early_stopping: hold out `validation_fraction` (stratified) and stop when its accuracy
            stops improving; the best weights are kept.
        validation_fraction: share of the training data held out for early stopping.
        beta_1, beta_2, epsilon: adam's constants; beta_2 defaults to 0.99 (MLPClassifier: 0.999). The
            defaults (adam, 4e-3, beta_2 0.99) converge on digits in ~40% of MLPClassifier's epochs.
        n_iter_no_change: epochs without improvement (see tol) before stopping.
        class_weight: None, "balanced" (n_samples / (n_classes * count)) or a {label: weight}
            dict; passed as softmaxce's `weight=` (see SEMANTICS.md for its meaning with label
            smoothing and soft targets).
        label_smoothing: eps in [0, 1]: targets become (1 - eps) y + eps / n_classes.
        z_loss: lam >= 0 adds lam * lse(z)**2 per sample (PaLM's z-loss).
        fused_head: "auto" (fused from 4096 classes on), True or False: compute the output layer
            with `softmaxce.linear_cross_entropy_and_grad` instead of forming the batch's logits.

    Attributes:
        classes_, n_features_in_, feature_names_in_ (DataFrame input), n_iter_, t_ (samples seen),
        loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_, coefs_
        (list of (fan_in, fan_out) weight matrices), intercepts_, n_layers_, n_outputs_,
        out_activation_ ("softmax").

    Example:
        >>> import numpy as np
        >>> from softmaxce._classifier import SoftmaxClassifier
        >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
        >>> clf = SoftmaxClassifier(hidden_layer_sizes=(), learning_rate_init=0.1, max_iter=300,
        ...                         random_state=0).fit(X, ["a", "a", "b", "b"])
        >>> clf.predict([[0.9, 0.2]]).tolist()
        ['b']
    """

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=1e-4,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=4e-3,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.99,
        epsilon=1e-8,
        n_iter_no_change=10,
        class_weight=None,
        label_smoothing=0.0,
        z_loss=0.0,
        fused_head="auto",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.fused_head = fused_head

    # ------------------------------------------------------------------ public API

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None):
        """Trains for up to `max_iter` epochs (from the previous solution when warm_start).

        Args:
            X: (n_samples, n_features) array or CSR matrix; float32 input trains in float32.
            y: (n_samples,) labels (any hashable kind: ints, strings), or a floating
                (n_samples, n_classes) array of class probabilities (soft targets).
            sample_weight: optional (n_samples,) non-negative weights.

        Returns:
            self
        """
        return self._fit(X, y, sample_weight, classes=None, incremental=False)

    def partial_fit(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        classes: npt.ArrayLike | None = None,
        sample_weight: npt.ArrayLike | None = None,
    ):
        """One epoch over (X, y). The first call needs `classes` (every label that will ever occur;
        for soft targets the labels of Y's columns)."""
        return self._fit(X, y, sample_weight, classes=classes, incremental=True)

    def decision_function(self, X: npt.ArrayLike) -> np.ndarray:
        """Logits z, (n_samples, n_classes); for two classes the log-odds z_1 - z_0, (n_samples,)."""
        z = self._logits(self._check_predict_X(X))
        if z.shape[1] == 2:
            return z[:, 1] - z[:, 0]
        return z

    def predict_proba(self, X: npt.ArrayLike) -> np.ndarray:
        """softmax(z), (n_samples, n_classes); columns follow `classes_`."""
        return softmax(self._logits(self._check_predict_X(X)), axis=1)

    def predict_log_proba(self, X: npt.ArrayLike) -> np.ndarray:
        """ln softmax(z) = z - lse(z), computed stably (never ln of a rounded-to-zero probability)."""
        return log_softmax(self._logits(self._check_predict_X(X)), axis=1)

    def predict(self, X: npt.ArrayLike) -> np.ndarray:
        """classes_[argmax z]; forms the logits a chunk of rows at a time (bounded memory)."""
        X = self._check_predict_X(X)
        n = X.shape[0]
        rows = max(1, _CHUNK_ELEMENTS // max(1, len(self.classes_)))
        idx = np.empty(n, dtype=np.intp)
        for start in range(0, n, rows):
            idx[start : start + rows] = np.argmax(self._logits(X[start : start + rows]), axis=1)
        return self.classes_[idx]

    def save(self, path) -> None:
        """Writes the fitted model to `path` in softmaxce's safe .npz format (see _persistence)."""
        from ._persistence import save_classifier

        save_classifier(self, path)

    @classmethod
    def load(cls, path) -> SoftmaxClassifier:
        """Reads a model written by `save`; never unpickles. Bad files raise ModelFileError."""
        from ._persistence import load_classifier

        return load_classifier(path, cls)

    def __getstate__(self):
        # coefs_/intercepts_ pickle as plain arrays; the flat buffers they view are rebuilt by the next fit.
        state = super().__getstate__()
        for key in ("_params", "_grads", "_gcoefs", "_gints", "_w_out", "_gw_out"):
            state.pop(key, None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # ------------------------------------------------------------------ training

    def _fit(self, X, y, sample_weight, *, classes, incremental):
        self._validate_hyperparameters()
        if incremental and self.class_weight == "balanced":
            raise ValueError("class_weight='balanced' is not supported for partial_fit: pass a dict of weights")
        fitted = hasattr(self, "coefs_")
        first = not fitted or (not incremental and not self.warm_start)
        X, y = validate_data(
            self,
            X,
            y,
            reset=first,
            accept_sparse="csr",
            dtype=[np.float64, np.float32],
            multi_output=True,
            y_numeric=False,
        )
        target, soft = self._targets(y, classes, first, incremental)
        dtype = X.dtype
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        n_classes = len(self.classes_)
        cw = self._class_weight_vector(target, soft, n_classes)

        rng = getattr(self, "_rng", None)
        if not incremental or rng is None:
            rng = check_random_state(self.random_state)
        self._rng = rng
        hidden = list(self._hidden_sizes())
        if first:
            self._initialize([X.shape[1], *hidden, n_classes], dtype, rng)
        else:
            self._check_architecture([X.shape[1], *hidden, n_classes])
            self._pack(dtype)
        opt = getattr(self, "_optimizer", None)
        if first or not incremental or opt is None or opt.size != self._params.size or opt.dtype != dtype:
            self._optimizer = self._new_optimizer()  # partial_fit continues the optimizer's state

        early = self.early_stopping and not incremental
        X_val = t_val = sw_val = None
        if early:
            stratify = None if soft else target
            X, X_val, target, t_val, sw, sw_val = train_test_split(
                X, target, sw, random_state=rng, test_size=self.validation_fraction, stratify=stratify
            )
            if X_val.shape[0] < 2:
                raise ValueError(
                    f"The validation set is too small (n_samples={X_val.shape[0]}): "
                    "increase validation_fraction or disable early_stopping"
                )
        n = X.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn(
                    f"batch_size={self.batch_size} is larger than the number of samples ({n}); it is clipped",
                    UserWarning,
                    stacklevel=3,
                )
            batch = min(self.batch_size, n)

        if first:
            self.n_iter_ = 0
            self.t_ = 0
            self.loss_curve_ = []
            self._no_improvement_count = 0
            self.best_loss_ = None if early else np.inf
            self.validation_scores_ = [] if early else None
            self.best_validation_score_ = -np.inf if early else None
        if early and self.validation_scores_ is None:  # warm start switching early stopping on
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
        if not early and self.best_loss_ is None:
            self.best_loss_ = np.inf
        best_params = None

        fused = self._use_fused(n_classes)
        unit_weights = sample_weight is None
        epochs = 1 if incremental else self.max_iter
        for _epoch in range(epochs):
            order = rng.permutation(n) if self.shuffle else None
            total = 0.0
            for start in range(0, n, batch):
                sl = slice(start, start + batch) if order is None else order[start : start + batch]
                swb = sw[sl]
                s = float(swb.sum())
                if s <= 0.0:
                    continue  # only zero-weight samples: nothing to learn from this batch
                total += s * self._step(X[sl], target[sl], None if unit_weights else swb, s, cw, fused)
            self.n_iter_ += 1
            self.t_ += n
            sw_total = float(sw.sum())
            self.loss_ = total / sw_total if sw_total > 0 else 0.0
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}", file=sys.stdout)
            if early:
                score = _accuracy(self._logits(X_val), t_val, sw_val, soft)
                self.validation_scores_.append(score)
                if self.verbose:
                    print(f"Validation score: {score:f}", file=sys.stdout)
                self._no_improvement_count = (
                    self._no_improvement_count + 1 if score < self.best_validation_score_ + self.tol else 0
                )
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best_params = self._params.copy()
            else:
                self._no_improvement_count = (
                    self._no_improvement_count + 1 if self.loss_ > self.best_loss_ - self.tol else 0
                )
                self.best_loss_ = min(self.best_loss_, self.loss_)
            self._optimizer.iteration_ends(self.t_)
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if early else "Training loss"
                msg = f"{what} did not improve more than tol={self.tol} for {self.n_iter_no_change} consecutive epochs."
                if self._optimizer.trigger_stopping(msg, self.verbose):
                    break
                self._no_improvement_count = 0
        else:
            if not incremental:
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                    "optimization hasn't converged yet.",
                    ConvergenceWarning,
                    stacklevel=3,
                )
        if early and best_params is not None:
            self._params[...] = best_params
        return self

    def _step(self, Xb, tb, swb, s, cw, fused) -> float:
        """One mini-batch: forward, back-propagate, update. Returns the batch's objective J."""
        params, grads = self._params, self._grads
        coefs, intercepts, gcoefs, gints = self.coefs_, self.intercepts_, self._gcoefs, self._gints
        L = len(coefs)
        acts = [Xb]
        for i in range(L - 1):  # hidden layers: h = act(h_prev W + b), in place
            h = acts[i] @ coefs[i]
            h += intercepts[i]
            _activate(self.activation, h)
            acts.append(h)
        options = dict(weight=cw, label_smoothing=self.label_smoothing, z_loss=self.z_loss)
        if swb is None:  # unit sample weights: J = sum_n l_n / n, one scalar upstream gradient
            coef_rows = None
            options.update(reduction="sum", grad_output=1.0 / s)
        else:
            coef_rows = swb / s  # dJ/dl_n = s_n / sum s
            options.update(reduction="none", grad_output=coef_rows)
        if fused:
            x = acts[-1].toarray() if sp.issparse(acts[-1]) else acts[-1]
            x = np.ascontiguousarray(x, dtype=params.dtype)
            # a training batch's chunk, like predict's, is bounded by _CHUNK_ELEMENTS logits
            chunk = max(1, _CHUNK_ELEMENTS // max(1, len(self.classes_)))
            loss_rows, delta_x, gW, gb = linear_cross_entropy_and_grad(
                x, self._w_out, tb, bias=intercepts[-1], chunk_size=chunk, **options
            )
            self._gw_out[...] = gW  # (V, D): the transpose of dJ/dcoefs_[-1]
            gints[-1][...] = gb
            delta = None
        else:
            z = acts[-1] @ coefs[-1]
            z += intercepts[-1]
            loss_rows, delta = cross_entropy_and_grad(z, tb, out=z, **options)  # delta = dJ/dz  (n, V)
            if sp.issparse(acts[-1]):
                self._gw_out[...] = (acts[-1].T @ delta).T
            else:
                np.matmul(delta.T, acts[-1], out=self._gw_out)  # (V, D) = delta^T h
            np.sum(delta, axis=0, out=gints[-1])
            delta_x = delta @ coefs[-1].T if L > 1 else None
        delta = delta_x
        for i in range(L - 2, -1, -1):  # hidden layers, last to first
            _activation_backward(self.activation, acts[i + 1], delta)
            if sp.issparse(acts[i]):
                gcoefs[i][...] = acts[i].T @ delta
            else:
                np.matmul(acts[i].T, delta, out=gcoefs[i])
            np.sum(delta, axis=0, out=gints[i])
            if i > 0:
                delta = delta @ coefs[i].T
        nw = self._n_weights
        if coef_rows is None:
            loss = float(loss_rows) / s
        else:
            loss = float(np.dot(np.asarray(loss_rows, dtype=np.float64), coef_rows))
        if self.alpha:
            w = params[:nw]
            loss += 0.5 * self.alpha * float(np.dot(w, w)) / s
            grads[:nw] += (self.alpha / s) * w
        self._optimizer.update(params, grads)
        return loss

    def _targets(self, y, classes, first, incremental):
        """Validated targets: (class indices int64, False) or (probabilities (n, C), True); sets classes_."""
        y = np.asarray(y) if not sp.issparse(y) else y
        soft = getattr(y, "ndim", 1) == 2 and y.shape[1] >= 2
        if soft:
            if sp.issparse(y) or y.dtype.kind != "f":
                raise ValueError(
                    "a 2-D y is read as soft targets and must be a floating (n_samples, n_classes) "
                    f"array of class probabilities; got dtype {y.dtype}. Multilabel targets are not "
                    "supported."
                )
            if not np.all(np.isfinite(y)) or (y < 0).any():
                raise ValueError("soft targets must be finite and non-negative")
            if not np.allclose(y.sum(axis=1), 1.0, rtol=0, atol=1e-4):
                raise ValueError("each row of soft targets must sum to 1 (class probabilities)")
            C = y.shape[1]
            self._set_classes(
                np.arange(C) if classes is None else np.asarray(classes),
                first,
                incremental,
                classes is not None,
                soft_columns=C,
            )
            return np.ascontiguousarray(y), True
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if first:
            if incremental and classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            labels = np.unique(y) if classes is None else _unique_labels(classes)
            if len(labels) < 2:
                raise ValueError(f"SoftmaxClassifier needs samples of at least 2 classes; got 1 class: {labels!r}")
            self.classes_ = labels
        elif incremental and classes is not None and not np.array_equal(_unique_labels(classes), self.classes_):
            raise ValueError(
                f"classes={classes!r} is not the same as on the first call to partial_fit, which was {self.classes_!r}"
            )
        idx = np.searchsorted(self.classes_, y)
        idx = np.minimum(idx, len(self.classes_) - 1)
        unknown = self.classes_[idx] != y
        if unknown.any():
            raise ValueError(f"y contains labels not in classes_ {self.classes_!r}: {np.unique(y[unknown])!r}")
        return idx.astype(np.int64), False

    def _set_classes(self, labels, first, incremental, named, *, soft_columns):
        if len(labels) != soft_columns:
            raise ValueError(f"soft targets have {soft_columns} columns but classes has {len(labels)} labels")
        if first:
            if incremental and not named:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self.classes_ = _unique_labels(labels) if named else labels
            if named and not np.array_equal(self.classes_, labels):
                raise ValueError("classes for soft targets must be sorted and unique (column c is classes_[c])")
        elif len(self.classes_) != soft_columns:
            raise ValueError(f"soft targets have {soft_columns} columns, the model has {len(self.classes_)} classes")

    def _class_weight_vector(self, target, soft, C):
        cw = self.class_weight
        if cw is None:
            return None
        if cw == "balanced":
            counts = target.sum(axis=0) if soft else np.bincount(target, minlength=C).astype(np.float64)
            n = counts.sum()
            with np.errstate(divide="ignore"):
                w = np.where(counts > 0, n / (C * np.maximum(counts, 1e-300)), 1.0)
            return w
        w = np.ones(C)
        for label, value in cw.items():
            hit = (
                np.flatnonzero(self.classes_ == label)
                if self.classes_.dtype.kind != "O"
                else [i for i, c in enumerate(self.classes_) if c == label]
            )
            if len(hit) == 0:
                raise ValueError(f"class_weight has the label {label!r}, which is not in classes_ {self.classes_!r}")
            w[hit[0]] = float(value)
        return w

    def _validate_hyperparameters(self):
        def positive_int(name, allow_zero=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < (0 if allow_zero else 1):
                raise ValueError(f"{name} must be an int >= {0 if allow_zero else 1}, got {v!r}")

        def real(name, lo, hi=np.inf, lo_open=False, hi_open=False):
            v = getattr(self, name)
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)
            ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                raise ValueError(
                    f"{name} must be a real number in {'(' if lo_open else '['}{lo}, {hi}"
                    f"{')' if hi_open or hi == np.inf else ']'}, got {v!r}"
                )

        self._hidden_sizes()
        for name, choices in (("activation", ACTIVATIONS), ("solver", SOLVERS), ("learning_rate", LEARNING_RATES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        positive_int("max_iter")
        positive_int("n_iter_no_change")
        if self.batch_size != "auto":
            positive_int("batch_size")
        real("alpha", 0)
        real("learning_rate_init", 0, lo_open=True)
        real("power_t", 0)
        real("tol", 0)
        real("momentum", 0, 1)
        real("validation_fraction", 0, 1, lo_open=True, hi_open=True)
        real("beta_1", 0, 1, hi_open=True)
        real("beta_2", 0, 1, hi_open=True)
        real("epsilon", 0, lo_open=True)
        real("label_smoothing", 0, 1)
        real("z_loss", 0)
        if self.fused_head not in ("auto", True, False):
            raise ValueError(f"fused_head must be 'auto', True or False, got {self.fused_head!r}")
        if not (self.class_weight is None or self.class_weight == "balanced" or isinstance(self.class_weight, dict)):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {self.class_weight!r}")

    def _hidden_sizes(self) -> tuple:
        h = self.hidden_layer_sizes
        if isinstance(h, numbers.Integral) and not isinstance(h, bool):
            h = (h,)
        try:
            h = tuple(h)
        except TypeError:
            raise ValueError(f"hidden_layer_sizes must be a tuple of positive ints, got {h!r}") from None
        if any(isinstance(u, bool) or not isinstance(u, numbers.Integral) or u < 1 for u in h):
            raise ValueError(f"hidden_layer_sizes must be a tuple of positive ints, got {self.hidden_layer_sizes!r}")
        return tuple(int(u) for u in h)

    def _use_fused(self, n_classes: int) -> bool:
        if self.fused_head == "auto":
            return n_classes >= FUSED_HEAD_MIN_CLASSES
        return bool(self.fused_head)

    # ------------------------------------------------------------------ parameters

    def _initialize(self, units, dtype, rng):
        """Glorot-uniform weights and biases (as MLPClassifier: factor 2 for logistic, else 6)."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        coefs, intercepts = [], []
        for fan_in, fan_out in zip(units[:-1], units[1:], strict=True):
            bound = np.sqrt(factor / (fan_in + fan_out))
            coefs.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
            intercepts.append(rng.uniform(-bound, bound, fan_out))
        self.coefs_, self.intercepts_ = coefs, intercepts
        self.n_layers_ = len(units)
        self.n_outputs_ = units[-1]
        self.out_activation_ = "softmax"
        self._pack(dtype)

    def _check_architecture(self, units):
        have = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
        if have != list(units):
            raise ValueError(f"the fitted network has layer sizes {have}, but the data and parameters ask for {units}")

    def _pack(self, dtype):
        """Copies coefs_/intercepts_ into one flat vector and rebinds them as views of it.

        Layout: [W_0, ..., W_{L-2} (fan_in, fan_out) C order; W_out as (V, D) C order; b_0 ... b_out].
        coefs_[-1] is the (D, V) transpose view, so the fused head reads (V, D) without a copy.
        """
        coefs, intercepts = self.coefs_, self.intercepts_
        sizes = [c.size for c in coefs] + [b.size for b in intercepts]
        params = np.empty(sum(sizes), dtype=dtype)
        grads = np.zeros_like(params)
        new_c, new_b, g_c, g_b = [], [], [], []
        pos = 0
        for k, c in enumerate(coefs):
            shape = c.shape[::-1] if k == len(coefs) - 1 else c.shape
            view, gview = params[pos : pos + c.size].reshape(shape), grads[pos : pos + c.size].reshape(shape)
            if k == len(coefs) - 1:
                view[...] = c.T
                self._w_out, self._gw_out = view, gview
                view, gview = view.T, gview.T
            else:
                view[...] = c
            new_c.append(view)
            g_c.append(gview)
            pos += c.size
        self._n_weights = pos
        for b in intercepts:
            view = params[pos : pos + b.size]
            view[...] = b
            new_b.append(view)
            g_b.append(grads[pos : pos + b.size])
            pos += b.size
        self.coefs_, self.intercepts_, self._gcoefs, self._gints = new_c, new_b, g_c, g_b
        self._params, self._grads = params, grads

    def _new_optimizer(self):
        p = self._params
        if self.solver == "adam":
            return _Adam(p.size, p.dtype, self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon)
        return _SGD(
            p.size,
            p.dtype,
            self.learning_rate_init,
            self.learning_rate,
            self.momentum,
            self.nesterovs_momentum,
            self.power_t,
        )

    # ------------------------------------------------------------------ prediction

    def _check_predict_X(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False, accept_sparse="csr", dtype=[np.float64, np.float32])

    def _logits(self, X) -> np.ndarray:
        """z = forward pass without the softmax, (n_samples, n_classes)."""
        h = X
        L = len(self.coefs_)
        for i in range(L - 1):
            h = h @ self.coefs_[i]
            h += self.intercepts_[i]
            _activate(self.activation, h)
        z = h @ self.coefs_[-1]
        z += self.intercepts_[-1]
        return np.asarray(z)


# ---------------------------------------------------------------------- helpers


def _unique_labels(labels) -> np.ndarray:
    labels = column_or_1d(np.asarray(labels))
    return np.unique(labels)


def _accuracy(z, target, sw, soft) -> float:
    truth = np.argmax(target, axis=1) if soft else target
    hit = (np.argmax(z, axis=1) == truth).astype(np.float64)
    total = float(sw.sum())
    return float(np.dot(hit, sw) / total) if total > 0 else float(hit.mean())


def _activate(name, h):
    """h <- act(h) in place."""
    if name == "relu":
        np.maximum(h, 0, out=h)
    elif name == "tanh":
        np.tanh(h, out=h)
    elif name == "logistic":
        expit(h, out=h)


def _activation_backward(name, h, delta):
    """delta <- delta * act'(pre-activation), written with the activation's output h."""
    if name == "relu":
        delta *= h > 0  # relu'(u) = 1 for u > 0, where h = u > 0
    elif name == "tanh":
        delta *= 1 - h * h  # tanh' = 1 - tanh^2
    elif name == "logistic":
        delta *= h * (1 - h)  # sigma' = sigma (1 - sigma)


class _Adam:
    """Adam (Kingma & Ba) on one flat parameter vector, as in MLPClassifier:
    m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,  p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)."""

    def __init__(self, size, dtype, lr, beta_1, beta_2, epsilon):
        self.size, self.dtype = size, np.dtype(dtype)
        self.learning_rate_init = self.learning_rate = lr
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.t = 0
        self.m = np.zeros(size, dtype=dtype)
        self.v = np.zeros(size, dtype=dtype)
        self._tmp = np.empty(size, dtype=dtype)

    def update(self, params, grads):
        self.t += 1
        b1, b2, tmp = self.beta_1, self.beta_2, self._tmp
        lr = self.learning_rate_init * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        self.learning_rate = lr
        self.m *= b1
        np.multiply(grads, 1 - b1, out=tmp)
        self.m += tmp
        self.v *= b2
        np.multiply(grads, grads, out=tmp)
        tmp *= 1 - b2
        self.v += tmp
        np.sqrt(self.v, out=tmp)
        tmp += self.epsilon
        np.divide(self.m, tmp, out=tmp)
        tmp *= lr
        params -= tmp

    def iteration_ends(self, time_step):
        pass

    def trigger_stopping(self, msg, verbose):
        if verbose:
            print(msg + " Stopping.")
        return True

    def state(self) -> dict:
        return {"t": self.t}, {"m": self.m, "v": self.v}

    def set_state(self, scalars, arrays):
        self.t = int(scalars["t"])
        self.m[...] = arrays["m"]
        self.v[...] = arrays["v"]


class _SGD:
    """SGD with momentum / Nesterov momentum, as in MLPClassifier:
    u <- mu u - lr g;  p <- p + u  (Nesterov: p <- p + mu u - lr g)."""

    def __init__(self, size, dtype, lr, schedule, momentum, nesterov, power_t):
        self.size, self.dtype = size, np.dtype(dtype)
        self.learning_rate_init = self.learning_rate = float(lr)
        self.schedule, self.momentum, self.nesterov, self.power_t = schedule, momentum, nesterov, power_t
        self.velocity = np.zeros(size, dtype=dtype)
        self._tmp = np.empty(size, dtype=dtype)

    def update(self, params, grads):
        mu, lr, u, tmp = self.momentum, self.learning_rate, self.velocity, self._tmp
        u *= mu
        np.multiply(grads, lr, out=tmp)
        u -= tmp
        if self.nesterov:
            params += mu * u
            params -= tmp
        else:
            params += u

    def iteration_ends(self, time_step):
        if self.schedule == "invscaling":
            self.learning_rate = self.learning_rate_init / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        if self.schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + f" Setting learning rate to {self.learning_rate:f}")
        return False

    def state(self) -> dict:
        return {"learning_rate": self.learning_rate}, {"velocity": self.velocity}

    def set_state(self, scalars, arrays):
        self.learning_rate = float(scalars["learning_rate"])
        self.velocity[...] = arrays["velocity"]
