"""SoftmaxClassifier: a multi-layer perceptron whose output layer is softmax + cross-entropy.

The network maps x to logits z = W_L h_{L-1} + b_L with hidden layers h_i = act(W_i h_{i-1} + b_i),
and is trained by mini-batch back-propagation of

    J = sum_n s_n l_n(z_n) / sum_n s_n  +  alpha / 2 * sum_i ||W_i||^2 / sum_n s_n

(s_n the sample weights, l_n softmaxce's cross-entropy with class weights, label smoothing and
z-loss, all carried by one `CEOptions`). The output layer (`_output.py`) takes dJ/dz_n from the
engine behind `softmaxce.cross_entropy_and_grad` (exactly s_n (a_n - y_n) / sum s for a one-hot
target); with many classes from the fused head behind `softmaxce.linear_cross_entropy_and_grad`,
which never holds the batch's logits. The hidden layers are back-propagated here, in NumPy:

    delta_{i-1} = (delta_i W_i^T) * act'(h_{i-1}),   dJ/dW_i = h_{i-1}^T delta_i,   dJ/db_i = sum_n delta_i

The other parts live next door: `_network.py` (all parameters in one flat vector; `coefs_` and
`intercepts_` are views into it), `_optimizers.py` (sgd, adam), `_activations.py`, `_targets.py`
(labels, soft targets, class weights, the training rows) and `_persistence.py` (save / load).
This module holds the estimator: its parameters and their constraints, and the training steps.
"""

from __future__ import annotations

import os
import sys
import warnings
from numbers import Integral, Real

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import Tags, check_random_state
from sklearn.utils._param_validation import Hidden, Interval, Options, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from .._api import log_softmax, softmax
from .._options import CEOptions
from ._activations import ACTIVATIONS, DERIVATIVES
from ._network import NetworkParameters, hidden_layer_units
from ._optimizers import make_optimizer
from ._output import FUSED_HEAD_MIN_CLASSES, OutputLoss, chunk_rows
from ._targets import TrainingData, class_weight_vector, encode_targets, sparse_target_matrix

__all__ = ["SoftmaxClassifier"]


class _Interval(Interval):
    """scikit-learn's Interval, except that a bool is not a number (max_iter=True is an error)."""

    def is_satisfied_by(self, val: object) -> bool:
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


def _reals(left: float, right: float = np.inf, *, closed: str) -> _Interval:
    """Finite reals in the interval (an open right end at inf excludes inf itself)."""
    return _Interval(Real, left, right, closed=closed)


_POSITIVE_INT = _Interval(Integral, 1, None, closed="left")
_NON_NEGATIVE = _reals(0, closed="left")


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
    `partial_fit(X, Y, classes=labels)` named the labels (column c is `classes_[c]`). Y may be
    sparse: a scipy.sparse (n_samples, n_classes) matrix, or a `softmaxce.SparseTarget` of
    (n_samples, K) class indices and probabilities (its class count is `len(classes)` or the fitted
    model's, else its largest index + 1); sparse soft targets are never densified.

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
            dict; passed as softmaxce's `weight=` (see docs/SEMANTICS.md for its meaning with label
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
        >>> from softmaxce.classifier import SoftmaxClassifier
        >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
        >>> clf = SoftmaxClassifier(hidden_layer_sizes=(), learning_rate_init=0.1, max_iter=300,
        ...                         random_state=0).fit(X, ["a", "a", "b", "b"])
        >>> clf.predict([[0.9, 0.2]]).tolist()
        ['b']
    """

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", _POSITIVE_INT],  # the sizes themselves: hidden_layer_units
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [StrOptions({"sgd", "adam"})],
        "alpha": [_NON_NEGATIVE],
        "batch_size": [StrOptions({"auto"}), _POSITIVE_INT],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [_reals(0, closed="neither")],
        "power_t": [_NON_NEGATIVE],
        "max_iter": [_POSITIVE_INT],
        "random_state": ["random_state"],
        "tol": [_NON_NEGATIVE],
        "momentum": [_reals(0, 1, closed="both")],
        "validation_fraction": [_reals(0, 1, closed="neither")],
        "beta_1": [_reals(0, 1, closed="left")],
        "beta_2": [_reals(0, 1, closed="left")],
        "epsilon": [_reals(0, closed="neither")],
        "n_iter_no_change": [_POSITIVE_INT],
        "class_weight": [None, StrOptions({"balanced"}), dict],
        "label_smoothing": [_reals(0, 1, closed="both")],
        "z_loss": [_NON_NEGATIVE],
        "fused_head": [StrOptions({"auto"}), "boolean", Hidden(Options(Real, {0, 1}))],
        # read for their truth value, as they always were
        "shuffle": "no_validation",
        "verbose": "no_validation",
        "warm_start": "no_validation",
        "nesterovs_momentum": "no_validation",
        "early_stopping": "no_validation",
    }

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
    ) -> None:
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

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None) -> SoftmaxClassifier:
        """Trains for up to `max_iter` epochs (from the previous solution when warm_start).

        Args:
            X: (n_samples, n_features) array or CSR matrix; float32 input trains in float32.
            y: (n_samples,) labels (any hashable kind: ints, strings), or a floating
                (n_samples, n_classes) array of class probabilities (soft targets), dense, a
                scipy.sparse matrix or a `softmaxce.SparseTarget` (see "Soft targets" above).
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
    ) -> SoftmaxClassifier:
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
        rows = chunk_rows(len(self.classes_))
        idx = np.empty(n, dtype=np.intp)
        for start in range(0, n, rows):
            idx[start : start + rows] = np.argmax(self._logits(X[start : start + rows]), axis=1)
        return self.classes_[idx]

    def save(self, path: str | os.PathLike) -> None:
        """Writes the fitted model to `path` in softmaxce's safe .npz format (see _persistence)."""
        from ._persistence import save_classifier

        check_is_fitted(self)
        save_classifier(self, path, optimizer=getattr(self, "_optimizer", None), rng=getattr(self, "_rng", None))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SoftmaxClassifier:
        """Reads a model written by `save`; never unpickles. Bad files raise ModelFileError.

        The loaded model predicts as the saved one did, and partial_fit continues its optimizer
        and random state (the count of epochs without improvement starts again at 0)."""
        from ._persistence import load_classifier

        est, saved = load_classifier(path, cls)
        est._set_network(saved.network)
        est._optimizer, est._rng = saved.optimizer, saved.rng
        est._no_improvement_count = 0
        return est

    def __getstate__(self) -> dict:
        # coefs_/intercepts_ pickle as plain arrays; the flat buffer they view is rebuilt by the next fit.
        state = super().__getstate__()
        state.pop("_network", None)
        return state

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # ------------------------------------------------------------------ training: the steps

    def _fit(self, X, y, sample_weight, *, classes, incremental: bool) -> SoftmaxClassifier:
        """validate -> prepare data -> initialize -> epochs (each: batches, then early stopping)."""
        self._validate_params()
        if incremental and self.class_weight == "balanced":
            raise ValueError("class_weight='balanced' is not supported for partial_fit: pass a dict of weights")
        first = not hasattr(self, "coefs_") or (not incremental and not self.warm_start)
        data, loss = self._prepare_data(X, y, sample_weight, classes, first=first, incremental=incremental)
        self._initialize(data.X.shape[1], data.X.dtype, first=first, incremental=incremental)
        early = self.early_stopping and not incremental
        train, validation = data.split(self._rng, self.validation_fraction) if early else (data, None)
        batch_size = self._batch_size(len(train))
        self._reset_progress(first=first, early=early)
        best = None
        for _epoch in range(1 if incremental else self.max_iter):
            self._run_epoch(train, batch_size, loss)
            if validation is None:
                self._score_training_loss()
            elif self._score_validation(validation):
                best = self._network.snapshot()
            self._optimizer.iteration_ends(self.t_)
            if self._stop(early):
                break
        else:
            if not incremental:
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                    "optimization hasn't converged yet.",
                    ConvergenceWarning,
                    stacklevel=3,
                )
        if best is not None:  # early stopping keeps the weights of the best validation score
            self._network.restore(best)
        return self

    def _prepare_data(
        self, X, y, sample_weight, classes, *, first: bool, incremental: bool
    ) -> tuple[TrainingData, OutputLoss]:
        """Validated (X, targets, sample weights), `classes_`, and the loss they are trained on."""
        y = sparse_target_matrix(y, classes, None if first else self.classes_)  # a SparseTarget as CSR
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
        target, soft, self.classes_ = encode_targets(
            y, classes, None if first else self.classes_, incremental=incremental
        )
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        n_classes = len(self.classes_)
        loss = OutputLoss(
            # unit sample weights: J = sum_n l_n / n, one scalar upstream gradient ("sum");
            # else dJ/dl_n = s_n / sum s per row ("none")
            options=CEOptions(
                reduction="sum" if sample_weight is None else "none",
                label_smoothing=self.label_smoothing,
                z_loss=self.z_loss,
            ),
            class_weight=class_weight_vector(self.class_weight, self.classes_, target, soft),
            fused=n_classes >= FUSED_HEAD_MIN_CLASSES if self.fused_head == "auto" else bool(self.fused_head),
            chunk_size=chunk_rows(n_classes),
        )
        return TrainingData(X, target, sw), loss

    def _initialize(self, n_features: int, dtype: np.dtype, *, first: bool, incremental: bool) -> None:
        """The random state, the network (new, or the fitted one in `dtype`) and the optimizer."""
        if not incremental or getattr(self, "_rng", None) is None:
            self._rng = check_random_state(self.random_state)
        units = [n_features, *hidden_layer_units(self.hidden_layer_sizes), len(self.classes_)]
        if first:
            factor = 2.0 if self.activation == "logistic" else 6.0  # Glorot, as MLPClassifier
            self._set_network(NetworkParameters.glorot_uniform(units, dtype, self._rng, factor=factor))
            self.n_layers_ = len(units)
            self.n_outputs_ = units[-1]
            self.out_activation_ = "softmax"
        else:
            network = NetworkParameters(self.coefs_, self.intercepts_, dtype)
            if network.layer_units != units:
                raise ValueError(
                    f"the fitted network has layer sizes {network.layer_units}, but the data and parameters "
                    f"ask for {units}"
                )
            self._set_network(network)
        network, opt = self._network, getattr(self, "_optimizer", None)
        if first or not incremental or opt is None or opt.size != network.size or opt.dtype != dtype:
            # partial_fit continues the optimizer's state
            self._optimizer = make_optimizer(self.get_params(deep=False), network.size, dtype)

    def _set_network(self, network: NetworkParameters) -> None:
        self._network = network
        self.coefs_, self.intercepts_ = network.coefs, network.intercepts

    def _batch_size(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn(
                f"batch_size={self.batch_size} is larger than the number of samples ({n}); it is clipped",
                UserWarning,
                stacklevel=4,
            )
        return min(self.batch_size, n)

    def _reset_progress(self, *, first: bool, early: bool) -> None:
        """n_iter_, t_, loss_curve_ and the early-stopping records: new on a first fit, else continued."""
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

    def _run_epoch(self, train: TrainingData, batch_size: int, loss: OutputLoss) -> None:
        """One pass over `train` in (shuffled) mini-batches; records loss_ = sum_b S_b J_b / sum s."""
        n = len(train)
        order = self._rng.permutation(n) if self.shuffle else None
        total = 0.0
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            swb = train.sample_weight[rows]
            s = float(swb.sum())
            if s <= 0.0:
                continue  # only zero-weight samples: nothing to learn from this batch
            total += s * self._batch_step(train.X[rows], train.target[rows], swb, s, loss)
        self.n_iter_ += 1
        self.t_ += n
        sw_total = float(train.sample_weight.sum())
        self.loss_ = total / sw_total if sw_total > 0 else 0.0
        self.loss_curve_.append(self.loss_)
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}", file=sys.stdout)

    def _score_training_loss(self) -> None:
        """No early stopping: an epoch improves when loss_ drops below best_loss_ - tol."""
        self._no_improvement_count = self._no_improvement_count + 1 if self.loss_ > self.best_loss_ - self.tol else 0
        self.best_loss_ = min(self.best_loss_, self.loss_)

    def _score_validation(self, validation: TrainingData) -> bool:
        """Early stopping: records the validation accuracy; returns whether it is the best so far."""
        score = validation.accuracy(self._logits(validation.X))
        self.validation_scores_.append(score)
        if self.verbose:
            print(f"Validation score: {score:f}", file=sys.stdout)
        self._no_improvement_count = (
            self._no_improvement_count + 1 if score < self.best_validation_score_ + self.tol else 0
        )
        if score > self.best_validation_score_:
            self.best_validation_score_ = score
            return True
        return False

    def _stop(self, early: bool) -> bool:
        """After n_iter_no_change epochs without improvement the optimizer decides (sgd "adaptive"
        lowers its step size instead of stopping)."""
        if self._no_improvement_count <= self.n_iter_no_change:
            return False
        what = "Validation score" if early else "Training loss"
        msg = f"{what} did not improve more than tol={self.tol} for {self.n_iter_no_change} consecutive epochs."
        if self._optimizer.trigger_stopping(msg, self.verbose):
            return True
        self._no_improvement_count = 0
        return False

    # ------------------------------------------------------------------ training: one mini-batch

    def _batch_step(self, Xb, tb: np.ndarray, swb: np.ndarray, s: float, loss: OutputLoss) -> float:
        """One mini-batch: forward, back-propagate, update. Returns the batch's objective J."""
        network = self._network
        acts = [Xb]  # h_0 = X, h_1, ..., h_{L-1}
        _forward_hidden(Xb, network.coefs, network.intercepts, self.activation, keep=acts)
        grad_output = 1.0 / s if loss.options.reduction == "sum" else swb / s  # dJ/dl_n
        loss_rows, delta = loss.backward(acts[-1], tb, grad_output, network)
        derivative = DERIVATIVES[self.activation]
        for i in range(len(network.coefs) - 2, -1, -1):  # hidden layers, last to first
            derivative(acts[i + 1], delta)  # delta_i = dJ/dh_{i+1} * act'
            if sp.issparse(acts[i]):
                network.grad_coefs[i][...] = acts[i].T @ delta
            else:
                np.matmul(acts[i].T, delta, out=network.grad_coefs[i])  # dJ/dW_i = h_i^T delta_i
            np.sum(delta, axis=0, out=network.grad_intercepts[i])  # dJ/db_i = sum_n delta_i
            if i > 0:
                delta = delta @ network.coefs[i].T
        if np.ndim(grad_output) == 0:
            J = float(loss_rows) / s
        else:
            J = float(np.dot(np.asarray(loss_rows, dtype=np.float64), grad_output))
        if self.alpha:  # + alpha / 2 ||W||^2 / sum s
            w, gw = network.weights, network.grad_weights
            J += 0.5 * self.alpha * float(np.dot(w, w)) / s
            gw += (self.alpha / s) * w
        self._optimizer.update_params(network.params, network.grads)
        return J

    # ------------------------------------------------------------------ prediction

    def _check_predict_X(self, X) -> np.ndarray | sp.csr_matrix:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, accept_sparse="csr", dtype=[np.float64, np.float32])

    def _logits(self, X) -> np.ndarray:
        """z = forward pass without the softmax, (n_samples, n_classes)."""
        h = _forward_hidden(X, self.coefs_, self.intercepts_, self.activation)
        z = h @ self.coefs_[-1]
        z += self.intercepts_[-1]
        return np.asarray(z)


# ---------------------------------------------------------------------- helpers


def _forward_hidden(X, coefs, intercepts, activation: str, keep: list | None = None) -> np.ndarray:
    """h_{L-1}, the last hidden layer's output (X itself without hidden layers), from
    h_i = act(h_{i-1} W_i + b_i); appends every h_i to `keep` when given."""
    act = ACTIVATIONS[activation]
    h = X
    for W, b in zip(coefs[:-1], intercepts[:-1], strict=True):
        h = h @ W
        h += b
        act(h)
        if keep is not None:
            keep.append(h)
    return h
