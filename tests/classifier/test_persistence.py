"""SoftmaxClassifier.save / load: round trips, exact resumption, and clear errors for bad files."""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from softmaxce.classifier import SoftmaxClassifier
from softmaxce.classifier._persistence import FORMAT_NAME, ModelFileError

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def data():
    X, y = make_blobs(n_samples=90, centers=3, n_features=4, random_state=0, cluster_std=2.0)
    return X, y


def _flat(clf):
    return np.concatenate([c.ravel() for c in clf.coefs_] + [b.ravel() for b in clf.intercepts_])


@pytest.fixture
def saved(tmp_path, data):
    X, y = data
    clf = SoftmaxClassifier((6,), max_iter=5, random_state=0).fit(X, y)
    path = tmp_path / "model.npz"
    clf.save(path)
    return clf, path


@pytest.mark.parametrize(
    "labels,kw,dtype",
    [
        (lambda y: y, dict(), np.float64),
        (lambda y: np.array(["cat", "dog", "eel"])[y], dict(class_weight={"cat": 2.0, "dog": 1.0}), np.float64),
        (lambda y: np.array(["x", "yy", "z"], dtype=object)[y], dict(hidden_layer_sizes=()), np.float32),
        (lambda y: y * 2.0 - 3, dict(solver="sgd", activation="tanh", hidden_layer_sizes=(4, 3)), np.float64),
        (lambda y: y, dict(early_stopping=True, label_smoothing=0.1, z_loss=1e-3), np.float64),
    ],
    ids=["int", "str-classweight", "object-float32", "float-labels-sgd", "early-stopping"],
)
def test_round_trip(tmp_path, data, labels, kw, dtype):
    X, y = data
    X = X.astype(dtype)
    yl = labels(y)
    clf = SoftmaxClassifier(max_iter=5, random_state=0, **{"hidden_layer_sizes": (5,), **kw}).fit(X, yl)
    path = tmp_path / "m.npz"
    clf.save(path)
    back = SoftmaxClassifier.load(path)
    assert back.get_params() == clf.get_params()
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(back.predict(X), clf.predict(X))
    assert back.classes_.dtype == clf.classes_.dtype
    fitted = sorted(k for k in vars(clf) if k.endswith("_") and not k.startswith("_"))
    assert fitted == sorted(k for k in vars(back) if k.endswith("_") and not k.startswith("_"))
    for name in fitted:
        a, b = getattr(back, name), getattr(clf, name)
        if isinstance(a, list) and a and isinstance(a[0], np.ndarray):  # coefs_, intercepts_
            assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True)), name
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert all(c.dtype == dtype for c in back.coefs_)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_partial_fit_after_load_continues_exactly(tmp_path, data, solver):
    X, y = data
    a = SoftmaxClassifier((6,), solver=solver, random_state=0).partial_fit(X, y, classes=[0, 1, 2])
    a.partial_fit(X, y)
    path = tmp_path / "m.npz"
    a.save(path)
    b = SoftmaxClassifier.load(path)
    for _ in range(2):
        a.partial_fit(X, y)
        b.partial_fit(X, y)
    np.testing.assert_array_equal(_flat(a), _flat(b))
    assert a.loss_curve_ == b.loss_curve_


_DATA = pathlib.Path(__file__).parent / "data"


@pytest.mark.parametrize(
    "name,kw,fit",
    [
        ("model_v1_sgd.npz", dict(solver="sgd"), "partial_fit"),
        ("model_v1_adam_float32.npz", dict(class_weight={"a": 2.0}, early_stopping=True), "fit-float32"),
    ],
    ids=["sgd-partial_fit", "adam-float32-early-stopping"],
)
def test_files_written_by_format_version_1_load_and_resume(name, kw, fit):
    # The files were written before the classifier was split into modules; training the same model
    # now must give the same numbers, and partial_fit after load must continue as the live model does.
    X, y = make_blobs(n_samples=150, centers=4, n_features=5, random_state=0, cluster_std=2.0)
    labels = np.array(list("abcd"))[y]
    live = SoftmaxClassifier((6,), max_iter=5, random_state=0, **kw)
    if fit == "partial_fit":
        live.partial_fit(X, labels, classes=list("abcd"))
    else:
        X = X.astype(np.float32)
        live.fit(X, labels)
    back = SoftmaxClassifier.load(_DATA / name)
    assert back.get_params() == live.get_params()
    np.testing.assert_array_equal(_flat(back), _flat(live))
    np.testing.assert_array_equal(back.predict(X), live.predict(X))
    back.partial_fit(X, labels)
    live.partial_fit(X, labels)
    np.testing.assert_array_equal(_flat(back), _flat(live))


def test_partial_fit_after_load_without_improvement(tmp_path, data):
    # The epochs-without-improvement count is not in the file: a loaded model starts it at 0
    # (it used to be missing, and an epoch without improvement raised AttributeError).
    X, y = data
    clf = SoftmaxClassifier((6,), tol=1e3, random_state=0).partial_fit(X, y, classes=[0, 1, 2])
    clf.save(tmp_path / "m.npz")
    back = SoftmaxClassifier.load(tmp_path / "m.npz")
    back.partial_fit(X, y)
    clf.partial_fit(X, y)
    np.testing.assert_array_equal(_flat(back), _flat(clf))


def test_file_is_documented_npz_with_json_metadata(saved):
    clf, path = saved
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["metadata"][()]))
        assert meta["format"] == FORMAT_NAME and meta["format_version"] == 1
        assert meta["params"]["hidden_layer_sizes"] == [6]
        np.testing.assert_array_equal(f["coefs_1"], clf.coefs_[1])
        np.testing.assert_array_equal(f["classes"], clf.classes_)


def test_save_does_not_append_a_suffix_and_overwrites(tmp_path, saved):
    clf, _ = saved
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")
    clf.save(path)
    assert SoftmaxClassifier.load(path).n_iter_ == clf.n_iter_
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.npz"]


def test_unfitted_cannot_be_saved(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        SoftmaxClassifier().save(tmp_path / "x.npz")


def _rewrite(path, out, *, drop=(), replace=None):
    """Copies the archive at `path` to `out`, dropping or replacing members."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            name = item.filename.removesuffix(".npy")
            if name in drop:
                continue
            if replace and name in replace:
                buf = io.BytesIO()
                np.save(buf, replace[name], allow_pickle=True)
                dst.writestr(item.filename, buf.getvalue())
            else:
                dst.writestr(item, src.read(item.filename))


def _meta(path):
    with np.load(path) as f:
        return json.loads(str(f["metadata"][()]))


def test_garbage_empty_and_truncated_files(tmp_path, saved):
    _, path = saved
    raw = path.read_bytes()
    cases = {
        "garbage": (b"hello, this is not a model" * 10, "not a softmaxce model file"),
        "empty": (b"", "not a softmaxce model file"),
        "truncated": (raw[: len(raw) // 2], "not a softmaxce model file|corrupted or truncated"),
        "truncated-tail": (raw[:-10], "not a softmaxce model file|corrupted or truncated"),
    }
    for name, (content, match) in cases.items():
        bad = tmp_path / f"{name}.npz"
        bad.write_bytes(content)
        with pytest.raises(ModelFileError, match=match):
            SoftmaxClassifier.load(bad)


def test_flipped_byte_is_caught_by_the_crc(tmp_path, saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("coefs_0.npy")
    at = info.header_offset + 30 + len(info.filename) + info.file_size - 3  # inside the coefs_0 data
    raw[at] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="corrupted or truncated.*CRC"):
        SoftmaxClassifier.load(bad)


def test_foreign_npz_and_npy(tmp_path):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(ModelFileError, match="no 'metadata' entry"):
        SoftmaxClassifier.load(foreign)
    other = tmp_path / "other.npz"
    np.savez(other, metadata=np.array(json.dumps({"format": "someone.else", "format_version": 1})))
    with pytest.raises(ModelFileError, match="format 'someone.else'"):
        SoftmaxClassifier.load(other)
    single = tmp_path / "single.npy"
    np.save(single, np.ones(3))
    with pytest.raises(ModelFileError, match="single .npy array"):
        SoftmaxClassifier.load(single)


def test_missing_entry_newer_version_and_bad_shapes(tmp_path, saved):
    _, path = saved
    out = tmp_path / "missing.npz"
    _rewrite(path, out, drop={"intercepts_1"})
    with pytest.raises(ModelFileError, match="'intercepts_1' is missing"):
        SoftmaxClassifier.load(out)
    meta = _meta(path)
    meta["format_version"] = 99
    out = tmp_path / "newer.npz"
    _rewrite(path, out, replace={"metadata": np.array(json.dumps(meta))})
    with pytest.raises(ModelFileError, match="format version 99 is not supported"):
        SoftmaxClassifier.load(out)
    out = tmp_path / "shape.npz"
    _rewrite(path, out, replace={"coefs_1": np.ones((6, 7))})
    with pytest.raises(ModelFileError, match="layer 1"):
        SoftmaxClassifier.load(out)
    out = tmp_path / "json.npz"
    _rewrite(path, out, replace={"metadata": np.array("{not json")})
    with pytest.raises(ModelFileError, match="corrupted or truncated.*JSONDecodeError"):
        SoftmaxClassifier.load(out)


class _Boom:
    def __reduce__(self):
        return (pytest.fail, ("a model file was unpickled",))


def test_loading_never_unpickles(tmp_path, saved):
    _, path = saved
    out = tmp_path / "pickled.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = _Boom()
    _rewrite(path, out, replace={"classes": evil})
    with pytest.raises(ModelFileError, match="pickled|allow_pickle"):
        SoftmaxClassifier.load(out)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        SoftmaxClassifier.load(tmp_path / "nope.npz")


def test_model_file_error_is_a_value_error():
    assert issubclass(ModelFileError, ValueError)


def test_pickle_and_saved_file_agree(tmp_path, saved, data):
    X, _ = data
    clf, path = saved
    via_pickle = pickle.loads(pickle.dumps(clf))
    via_file = SoftmaxClassifier.load(path)
    np.testing.assert_array_equal(via_pickle.predict_proba(X), via_file.predict_proba(X))
