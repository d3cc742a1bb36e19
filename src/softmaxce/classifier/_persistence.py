"""Safe save / load of a fitted SoftmaxClassifier: NumPy arrays + JSON metadata in one .npz file.

File format "softmaxce.SoftmaxClassifier", version 1. The file is an uncompressed ZIP archive as
written by `numpy.savez` (each member is a .npy array, CRC-checked on read) holding:

    metadata            0-d unicode array: UTF-8 JSON text (see below)
    coefs_0 ... coefs_{L-1}            (fan_in, fan_out) float32 or float64 weights
    intercepts_0 ... intercepts_{L-1}  (fan_out,) biases, same dtype
    classes             (n_classes,) labels: int, uint, float, bool or unicode strings
    feature_names_in    (n_features,) unicode, only when fitted on a DataFrame
    optimizer_<name>    optimizer state arrays (adam: m, v; sgd: velocity), flat
    rng_keys            (624,) uint32: the training RandomState (so partial_fit continues exactly)

The JSON object has: "format" (the name above), "format_version" (1), "softmaxce_version",
"params" (the constructor parameters; hidden_layer_sizes as a list, class_weight dicts as
[label, weight] pairs), "classes_dtype" ("object" when classes_ held Python strings),
"fitted" (n_features_in_, n_iter_, t_, loss_, loss_curve_, best_loss_, validation_scores_,
best_validation_score_, n_layers_), "optimizer" (its "solver", "_Adam" or "_SGD", and its "scalars", or null) and "rng"
(the RandomState's pos / has_gauss / cached_gaussian, or null). Non-finite floats are written as
JSON's NaN / Infinity extensions (Python's json reads them).

Loading reads arrays with `numpy.load(..., allow_pickle=False)`: nothing in the file is ever
unpickled or executed. A file that is not a ZIP, is truncated, fails a CRC check, lacks an entry,
is another program's .npz, has a newer format version or inconsistent shapes raises
`ModelFileError` (a ValueError) naming the problem.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator

from .._version import __version__
from ._atomic import atomic_path
from ._network import NetworkParameters, hidden_layer_units
from ._optimizers import BaseOptimizer, make_optimizer

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ModelFileError",
    "TrainingState",
    "load_classifier",
    "save_classifier",
]

FORMAT_NAME = "softmaxce.SoftmaxClassifier"
FORMAT_VERSION = 1
_FITTED_SCALARS = ("n_features_in_", "n_iter_", "t_", "loss_", "best_loss_", "best_validation_score_", "n_layers_")
_FITTED_LISTS = ("loss_curve_", "validation_scores_")
_OPTIMIZER_TAGS = {"adam": "_Adam", "sgd": "_SGD"}  # the "solver" the file names for each optimizer


class ModelFileError(ValueError):
    """A model file that cannot be loaded: not a softmaxce model, corrupted, truncated or inconsistent."""


@dataclass(frozen=True)
class TrainingState:
    """What a model file holds besides the estimator's parameters and public fitted attributes:
    the network (`coefs_` and `intercepts_` are its views), and what partial_fit continues from."""

    network: NetworkParameters
    optimizer: BaseOptimizer | None
    rng: np.random.RandomState | None


def save_classifier(
    est: BaseEstimator,
    path: str | os.PathLike,
    *,
    optimizer: BaseOptimizer | None,
    rng: np.random.RandomState | None,
) -> None:
    """Writes a fitted SoftmaxClassifier to `path` atomically (temporary file + rename).

    Reads only `est`'s parameters and public fitted attributes; `optimizer` and `rng` are the
    training state that partial_fit would continue from (None when there is none).
    """
    arrays: dict[str, np.ndarray] = {}
    for i, (c, b) in enumerate(zip(est.coefs_, est.intercepts_, strict=True)):
        arrays[f"coefs_{i}"] = np.ascontiguousarray(c)
        arrays[f"intercepts_{i}"] = np.ascontiguousarray(b)
    arrays["classes"], classes_dtype = _classes_array(np.asarray(est.classes_))
    if hasattr(est, "feature_names_in_"):
        arrays["feature_names_in"] = np.asarray(est.feature_names_in_).astype(str)
    optimizer_meta = None
    if optimizer is not None:
        scalars, state = optimizer.get_state()
        optimizer_meta = {"solver": _OPTIMIZER_TAGS[optimizer.solver], "scalars": scalars}
        for name, a in state.items():
            arrays[f"optimizer_{name}"] = a
    rng_meta = None
    if rng is not None:
        kind, keys, pos, has_gauss, gauss = rng.get_state()
        arrays["rng_keys"] = np.asarray(keys, dtype=np.uint32)
        rng_meta = {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "softmaxce_version": __version__,
        "params": _params_to_json(est.get_params(deep=False)),
        "classes_dtype": classes_dtype,
        "fitted": {
            **{k: _scalar(getattr(est, k, None)) for k in _FITTED_SCALARS},
            **{
                k: None if getattr(est, k, None) is None else [float(v) for v in getattr(est, k)] for k in _FITTED_LISTS
            },
        },
        "optimizer": optimizer_meta,
        "rng": rng_meta,
    }
    arrays["metadata"] = np.array(json.dumps(meta))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _classes_array(classes: np.ndarray) -> tuple[np.ndarray, str]:
    """classes_ as a savable array (Python strings as unicode) and the "classes_dtype" to note."""
    if classes.dtype.kind == "O":
        if not all(isinstance(c, str) for c in classes):
            raise ValueError(
                "only int, float, bool or string class labels can be saved; classes_ holds "
                f"{sorted({type(c).__name__ for c in classes})}"
            )
        return classes.astype(str), "object"
    if classes.dtype.kind not in "iufbU":
        raise ValueError(f"classes_ of dtype {classes.dtype} cannot be saved")
    return classes, str(classes.dtype)


def load_classifier(path: str | os.PathLike, cls: type[BaseEstimator]) -> tuple[BaseEstimator, TrainingState]:
    """Reads a file written by `save_classifier`. Never unpickles.

    Returns:
        (est, state): a new `cls` with the saved parameters and public fitted attributes (all but
        coefs_ / intercepts_, which are views of `state.network`), and its training state.
    """
    with open(path, "rb") as f:  # a missing file is FileNotFoundError, not a format problem
        try:
            data = np.load(f, allow_pickle=False)
        except Exception as e:
            raise ModelFileError(f"{path!s}: not a softmaxce model file (not a readable .npz archive: {e})") from e
        if not hasattr(data, "files"):
            raise ModelFileError(f"{path!s}: not a softmaxce model file (a single .npy array, not an .npz archive)")
        try:
            with data:
                return _load(data, path, cls)
        except ModelFileError:
            raise
        except Exception as e:  # truncated member, CRC failure, bad JSON ...
            raise ModelFileError(
                f"{path!s}: corrupted or truncated softmaxce model file ({type(e).__name__}: {e})"
            ) from e


def _load(data, path, cls) -> tuple[BaseEstimator, TrainingState]:
    names = set(data.files)
    if "metadata" not in names:
        raise ModelFileError(
            f"{path!s}: not a softmaxce model file (no 'metadata' entry; it holds {sorted(names)[:8]})"
        )
    meta = json.loads(str(data["metadata"][()]))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelFileError(f"{path!s}: not a softmaxce model file (format {found!r}, expected {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ModelFileError(
            f"{path!s}: format version {version!r} is not supported (this softmaxce reads "
            f"versions 1..{FORMAT_VERSION}; a newer softmaxce wrote it?)"
        )

    def entry(name):
        if name not in names:
            raise ModelFileError(f"{path!s}: corrupted softmaxce model file: the entry {name!r} is missing")
        return data[name]

    def corrupted(what: str) -> ModelFileError:
        return ModelFileError(f"{path!s}: corrupted softmaxce model file: {what}")

    fitted = meta["fitted"]
    n_layers = int(fitted["n_layers_"])
    coefs = [entry(f"coefs_{i}") for i in range(n_layers - 1)]
    intercepts = [entry(f"intercepts_{i}") for i in range(n_layers - 1)]
    dtype = coefs[0].dtype if coefs else None
    if dtype not in (np.float32, np.float64):
        raise corrupted(f"weights of dtype {dtype}, expected float")
    units = [int(fitted["n_features_in_"])] + [c.shape[1] if c.ndim == 2 else -1 for c in coefs]
    for i, (c, b) in enumerate(zip(coefs, intercepts, strict=True)):
        if c.dtype != dtype or b.dtype != dtype or c.shape != (units[i], units[i + 1]) or b.shape != (units[i + 1],):
            raise corrupted(
                f"layer {i} has weights {c.shape} {c.dtype} and biases {b.shape} {b.dtype}, "
                f"expected ({units[i]}, {units[i + 1]}) and ({units[i + 1]},) {dtype}"
            )
    classes = entry("classes")
    if classes.shape != (units[-1],):
        raise corrupted(f"{classes.shape[0] if classes.ndim else 0} classes for an output layer of {units[-1]} units")
    if meta.get("classes_dtype") == "object":
        classes = classes.astype(object)

    est = cls(**_params_from_json(meta["params"]))
    hidden = hidden_layer_units(est.hidden_layer_sizes)
    if list(hidden) != units[1:-1]:
        raise corrupted(f"hidden_layer_sizes={hidden} but the weights have hidden layers {units[1:-1]}")
    network = NetworkParameters(coefs, intercepts, dtype)
    est.classes_ = classes
    est.n_outputs_ = units[-1]
    est.out_activation_ = "softmax"
    for k in _FITTED_SCALARS:
        setattr(est, k, fitted.get(k))
    for k in _FITTED_LISTS:
        setattr(est, k, None if fitted.get(k) is None else list(fitted[k]))
    if "feature_names_in" in names:
        est.feature_names_in_ = data["feature_names_in"].astype(object)
    optimizer = None
    opt = meta.get("optimizer")
    if opt is not None:
        optimizer = make_optimizer(est.get_params(deep=False), network.size, dtype)
        if _OPTIMIZER_TAGS[optimizer.solver] != opt["solver"]:
            raise corrupted(f"optimizer {opt['solver']!r} does not match solver={est.solver!r}")
        arrays = {name: entry(f"optimizer_{name}") for name in optimizer.state_arrays}
        for name, a in arrays.items():
            if a.shape != (network.size,):
                raise corrupted(f"optimizer state {name!r} has shape {a.shape}, expected {(network.size,)}")
        optimizer.set_state(opt["scalars"], arrays)
    rng = None
    rng_meta = meta.get("rng")
    if rng_meta is not None:
        keys = entry("rng_keys")
        if keys.shape != (624,) or keys.dtype != np.uint32:
            raise corrupted(f"rng_keys {keys.shape} {keys.dtype}")
        rng = np.random.RandomState()
        rng.set_state((rng_meta["kind"], keys, rng_meta["pos"], rng_meta["has_gauss"], rng_meta["cached_gaussian"]))
    return est, TrainingState(network, optimizer, rng)


def _scalar(v):
    if v is None:
        return None
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    return float(v)


def _label(v):
    return v.item() if isinstance(v, np.generic) else v


def _params_to_json(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if k == "hidden_layer_sizes":
            v = [int(u) for u in (v if np.iterable(v) else (v,))]
        elif k == "class_weight" and isinstance(v, dict):
            v = {"pairs": [[_label(label), float(w)] for label, w in v.items()]}
        elif k == "random_state" and not (v is None or isinstance(v, (int, np.integer))):
            v = None  # a RandomState instance: its current state is saved as "rng" instead
        elif isinstance(v, np.generic):
            v = v.item()
        try:
            json.dumps(v)
        except TypeError:
            raise ValueError(f"parameter {k}={v!r} cannot be saved (not JSON-serializable)") from None
        out[k] = v
    return out


def _params_from_json(params: dict) -> dict:
    params = dict(params)
    if "hidden_layer_sizes" in params:
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    cw = params.get("class_weight")
    if isinstance(cw, dict):
        params["class_weight"] = {label: w for label, w in cw["pairs"]}
    return params
