"""End-to-end tests of the `softmaxce` command-line tool (click's CliRunner and real subprocesses).

Every bad-data case must give exit status 2 and ONE line on stderr naming the file, row and column,
never a traceback, and must leave no half-written output behind.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from softmaxce import cli
from softmaxce._atomic import atomic_path
from softmaxce._cli_data import DataError, load_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FEATURES = ["a", "b", "c", "d"]


# ----------------------------------------------------------------------------------------- helpers


def blobs(n_per_class=40, labels=("cat", "dog", "emu"), seed=0, scale=1.0, offset=0.0):
    """Three well separated Gaussian blobs in 4-D: (X, y)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0, 0], [4, 4, 0, 0], [0, 4, 4, 4]], dtype=np.float64)
    X = np.concatenate([c + 0.5 * rng.standard_normal((n_per_class, 4)) for c in centers[: len(labels)]])
    y = np.repeat(np.array(labels), n_per_class)
    order = rng.permutation(len(y))
    return X[order] * scale + offset, y[order]


def write_csv(path, X, y=None, header=None, target="label"):
    header = header or FEATURES[: X.shape[1]] + ([target] if y is not None else [])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(len(X)):
            w.writerow([repr(float(v)) for v in X[i]] + ([y[i]] if y is not None else []))
    return str(path)


def write_text(path, text):
    path.write_text(text)
    return str(path)


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def assert_png(path, min_size=(100, 100)):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()  # checks the chunks and CRCs
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        im.load()


def assert_bad_data(result, *fragments):
    """Exit status 2, exactly one line on stderr, naming everything in `fragments`, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output


def no_temp_files(directory):
    return [name for name in os.listdir(directory) if ".tmp" in name]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained once by `softmaxce train` on string-labelled blobs, plus its data files."""
    d = tmp_path_factory.mktemp("trained")
    X, y = blobs()
    data = write_csv(d / "train.csv", X, y)
    model = str(d / "model.npz")
    result = run(
        "train",
        data,
        "--target",
        "label",
        "--hidden",
        "16",
        "--epochs",
        "15",
        "--batch-size",
        "16",
        "--lr",
        "0.01",
        "--out",
        model,
        "--metrics",
        d / "metrics.json",
        "--plots",
        d / "plots",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return {"dir": d, "data": data, "model": model, "X": X, "y": y}


# ----------------------------------------------------------------------------------------- help


def test_console_script_and_module_run_in_a_real_process():
    exe = shutil.which("softmaxce")
    assert exe is not None, "the softmaxce console script is not installed (pip install -e .)"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for command in ("demo", "train", "predict", "evaluate", "gradcheck"):
        assert command in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "softmaxce", "gradcheck", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "Examples:" in out.stdout and "softmaxce gradcheck" in out.stdout


@pytest.mark.parametrize("command", ["demo", "train", "predict", "evaluate", "gradcheck"])
def test_every_command_has_help_with_examples_and_quiet(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output
    assert f"softmaxce {command}" in result.output
    assert "--quiet" in result.output


def test_bad_usage_exits_2():
    assert run("train").exit_code == 2  # missing DATA
    assert run("nosuchcommand").exit_code == 2
    assert run("gradcheck", "--classes", "1").exit_code == 2
    assert run("train", "x.csv", "--target", "y", "--hidden", "12,abc").exit_code == 2


# ----------------------------------------------------------------------------------------- train


def test_train_writes_model_metrics_and_valid_pngs(trained):
    d = trained["dir"]
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["classes"] == ["cat", "dog", "emu"]
    assert metrics["features"] == 4 and metrics["feature_names"] == FEATURES
    assert metrics["train_rows"] + metrics["val_rows"] == 120 and metrics["val_rows"] == 12
    assert len(metrics["epochs"]) == 15
    first, last = metrics["epochs"][0], metrics["epochs"][-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["val_accuracy"] >= 0.9
    assert all(e["samples_per_s"] > 0 for e in metrics["epochs"])
    assert_png(d / "plots" / "loss_curve.png")
    assert_png(d / "plots" / "confusion_matrix.png")
    assert no_temp_files(d) == [] and no_temp_files(d / "plots") == []


def test_train_prints_progress_lines_and_is_silent_with_quiet(tmp_path):
    X, y = blobs(n_per_class=10)
    data = write_csv(tmp_path / "d.csv", X, y)
    loud = run("train", data, "--target", "label", "--hidden", "8", "--epochs", "2", "--out", tmp_path / "m.npz")
    assert loud.exit_code == 0
    assert re.search(
        r"epoch +2/2 +loss \d+\.\d+ +val_loss \d+\.\d+ +val_acc \d\.\d{4} +\([\d,]+ samples/s\)", loud.stdout
    )
    quiet = run(
        "train", data, "--target", "label", "--hidden", "8", "--epochs", "2", "--out", tmp_path / "m2.npz", "--quiet"
    )
    assert quiet.exit_code == 0
    assert quiet.output == ""


def test_standardization_is_folded_into_the_saved_model(tmp_path):
    """Features on a scale of thousands train well (standardized), and the saved model takes raw features."""
    from softmaxce._classifier import SoftmaxClassifier

    X, y = blobs(n_per_class=30, labels=(0, 1, 2), scale=1000.0, offset=5000.0)
    data = write_csv(tmp_path / "big.csv", X, y)
    model = tmp_path / "m.npz"
    result = run(
        "train",
        data,
        "--target",
        "label",
        "--hidden",
        "16",
        "--epochs",
        "20",
        "--batch-size",
        "16",
        "--lr",
        "0.01",
        "--val-fraction",
        "0",
        "--out",
        model,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    clf = SoftmaxClassifier.load(str(model))
    assert clf.classes_.tolist() == [0, 1, 2]  # integer labels stay integers
    assert np.mean(clf.predict(X) == y) >= 0.95


def test_train_npz_with_balanced_weights_and_label_smoothing(tmp_path):
    X, y = blobs(n_per_class=20, labels=(3, 7, 9))
    keep = np.concatenate([np.flatnonzero(y == 3)[:5], np.flatnonzero(y != 3)])  # class 3 is rare
    path = tmp_path / "d.npz"
    np.savez(path, X=X[keep], y=y[keep], feature_names=np.array(["p", "q", "r", "s"]))
    result = run(
        "train",
        path,
        "--target",
        "y",
        "--hidden",
        "0",
        "--epochs",
        "30",
        "--lr",
        "0.05",
        "--class-weight",
        "balanced",
        "--label-smoothing",
        "0.1",
        "--out",
        tmp_path / "m.npz",
        "--metrics",
        tmp_path / "m.json",
        "--val-fraction",
        "0",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["feature_names"] == ["p", "q", "r", "s"]
    assert metrics["classes"] == [3, 7, 9] and metrics["class_counts"] == [5, 20, 20]
    assert metrics["params"]["class_weight"] == "balanced"
    ev = run("evaluate", tmp_path / "m.npz", path, "--target", "y", "--no-plots")
    assert ev.exit_code == 0
    assert float(re.search(r"accuracy (\d\.\d+)", ev.stdout).group(1)) >= 0.9


# ----------------------------------------------------------------------------------------- predict / evaluate


def test_predict_matches_the_model_and_writes_atomically(trained, tmp_path):
    from softmaxce._classifier import SoftmaxClassifier

    clf = SoftmaxClassifier.load(trained["model"])
    X, y = blobs(n_per_class=5, seed=1)
    data = write_csv(tmp_path / "new.csv", X)  # no label column
    out = tmp_path / "pred.csv"
    result = run("predict", trained["model"], data, "--proba", "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["prediction", "p_cat", "p_dog", "p_emu"]
    assert [r[0] for r in rows[1:]] == clf.predict(X).tolist()
    P = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(P, clf.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(np.array([r[0] for r in rows[1:]]) == y) >= 0.9
    # stdout, and a label column named with --target is left out of the features
    labelled = write_csv(tmp_path / "labelled.csv", X, y)
    result = run("predict", trained["model"], labelled, "--target", "label")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["prediction"] + clf.predict(X).tolist()
    # .npz output
    result = run("predict", trained["model"], data, "--proba", "--out", tmp_path / "pred.npz")
    with np.load(tmp_path / "pred.npz", allow_pickle=False) as z:
        assert z["prediction"].tolist() == clf.predict(X).tolist()
        np.testing.assert_allclose(z["proba"], clf.predict_proba(X), rtol=1e-12)
    assert no_temp_files(tmp_path) == []


def test_evaluate_reports_metrics_that_match_sklearn(trained, tmp_path):
    from sklearn.metrics import log_loss, precision_recall_fscore_support

    from softmaxce._classifier import SoftmaxClassifier

    clf = SoftmaxClassifier.load(trained["model"])
    X, y = blobs(n_per_class=20, seed=2)
    y = y.copy()
    y[:6] = np.roll(y[:6], 1)  # some labels wrong, so the metrics are not all 1
    data = write_csv(tmp_path / "test.csv", X, y)
    result = run(
        "evaluate",
        trained["model"],
        data,
        "--target",
        "label",
        "--metrics",
        tmp_path / "ev.json",
        "--plots",
        tmp_path / "plots",
    )
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "ev.json").read_text())
    pred = clf.predict(X)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y, clf.predict_proba(X), labels=clf.classes_), rel=1e-6)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=clf.classes_, zero_division=0)
    for i, c in enumerate(clf.classes_):
        got = m["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert np.array(m["confusion_matrix"]).sum() == len(y)
    assert f"accuracy {m['accuracy']:.4f}" in result.stdout
    assert "precision" in result.stdout and "emu" in result.stdout
    assert_png(tmp_path / "plots" / "confusion_matrix.png")
    quiet = run("evaluate", trained["model"], data, "--target", "label", "--no-plots", "-q")
    assert quiet.stdout.strip().startswith("accuracy") and len(quiet.stdout.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------- bad data


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("a,b,c,d,label\n1,2,3,4,cat\n1,2,x7,4,dog\n", ["line 3", "column 'c'", "non-numeric", "'x7'"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n1,2,3,4,dog\n1,nan,3,4,dog\n", ["line 4", "column 'b'", "non-finite", "nan"]),
        ("a,b,c,d,label\n1,2,3,-inf,cat\n", ["line 2", "column 'd'", "non-finite"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n1,,3,4,dog\n", ["line 3", "column 'b'", "missing value"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n1,2,3,4,\n", ["line 3", "column 'label'", "missing class label"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n1,2,3,dog\n", ["line 3", "expected 5 columns", "found 4"]),
        ("a,b,c,d,species\n1,2,3,4,cat\n", ["line 1", "no target column 'label'", "species"]),
        ("", ["empty file"]),
        ("a,b,c,d,label\n", ["empty file", "no data rows"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n2,3,4,5,cat\n", ["column 'label'", "only one class"]),
    ],
    ids=[
        "non-numeric",
        "nan",
        "inf",
        "missing-value",
        "missing-label",
        "ragged-row",
        "missing-target-column",
        "empty-file",
        "header-only",
        "one-class",
    ],
)
def test_train_bad_csv_gives_one_line_and_exit_2(tmp_path, text, fragments):
    data = write_text(tmp_path / "bad.csv", text)
    out = tmp_path / "model.npz"
    result = run("train", data, "--target", "label", "--epochs", "1", "--out", out)
    assert_bad_data(result, "bad.csv", *fragments)
    assert not out.exists()
    assert no_temp_files(tmp_path) == []


def test_bad_row_deep_in_a_large_csv_is_located(tmp_path):
    """A bad cell after several conversion blocks still names its exact line."""
    X, y = blobs(n_per_class=4000, seed=3)  # 12000 rows: two blocks of 8192
    path = write_csv(tmp_path / "big.csv", X, y)
    lines = open(path).read().splitlines()
    lines[10001] = lines[10001].split(",", 1)[0] + ",oops," + lines[10001].split(",", 2)[2]
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"big\.csv: line 10002, column 'b': non-numeric value 'oops'"):
        load_table(path, target="label", require_target=True)
    table = load_table(write_csv(tmp_path / "ok.csv", X, y), target="label", require_target=True)
    np.testing.assert_array_equal(table.features, X)  # repr() round-trips floats exactly
    assert table.labels.tolist() == y.tolist()
    assert table.rows[0] == 2 and table.rows[-1] == 12001


def test_csv_dialect_details(tmp_path):
    """UTF-8 BOM, CRLF line endings, quoted cells, blank lines, spaces, a target column in the middle; TSV."""
    path = tmp_path / "d.csv"
    path.write_bytes('\ufeffa, "label" ,b\r\n1.5,"x, y",2\r\n\r\n -3 ,z,4e2\r\n'.encode())
    t = load_table(str(path), target="label", require_target=True)
    assert t.feature_names == ["a", "b"] and t.target == "label"
    np.testing.assert_array_equal(t.features, [[1.5, 2.0], [-3.0, 400.0]])
    assert t.labels.tolist() == ["x, y", "z"] and t.rows.tolist() == [2, 4]
    tsv = write_text(tmp_path / "d.tsv", "a\tb\tlabel\n1\t2\tp\n3\t4\tq\n")
    t = load_table(tsv, target="label")
    np.testing.assert_array_equal(t.features, [[1, 2], [3, 4]])
    with pytest.raises(DataError, match=r"line 2, column 'label': non-numeric value 'p'"):
        load_table(tsv, target=None)  # no target: every column is a feature


def test_npz_bad_data(tmp_path):
    X, y = blobs(n_per_class=5)
    X_nan = X.copy()
    X_nan[7, 2] = np.nan
    cases = {
        "nan.npz": ({"X": X_nan, "y": y}, ["row 7 of X", "column 'x2'", "non-finite"]),
        "nox.npz": ({"features": X, "y": y}, ["no array 'X'"]),
        "noy.npz": ({"X": X}, ["no labels array 'y'"]),
        "short.npz": ({"X": X, "y": y[:-1]}, ["labels 'y'", "(15,)"]),
        "empty.npz": ({"X": np.empty((0, 4)), "y": np.empty(0)}, ["empty file"]),
    }
    for name, (arrays, fragments) in cases.items():
        np.savez(tmp_path / name, **arrays)
        result = run("train", tmp_path / name, "--target", "y", "--epochs", "1", "--out", tmp_path / "m.npz")
        assert_bad_data(result, name, *fragments)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    assert_bad_data(run("train", tmp_path / "junk.npz", "--target", "y", "--out", tmp_path / "m.npz"), "junk.npz")
    assert not (tmp_path / "m.npz").exists()


def test_predict_and_evaluate_bad_data(trained, tmp_path):
    model = trained["model"]
    three = write_text(tmp_path / "three.csv", "a,b,c\n1,2,3\n")
    assert_bad_data(run("predict", model, three), "three.csv", "line 1", "3 feature columns", "trained on 4")
    three_l = write_text(tmp_path / "three_l.csv", "a,b,c,label\n1,2,3,cat\n")
    assert_bad_data(run("evaluate", model, three_l, "--target", "label", "--no-plots"), "three_l.csv", "trained on 4")
    unknown = write_text(tmp_path / "unknown.csv", "a,b,c,d,label\n1,2,3,4,cat\n1,2,3,4,dog\n1,2,3,4,yak\n")
    assert_bad_data(
        run("evaluate", model, unknown, "--target", "label", "--no-plots"),
        "unknown.csv",
        "line 4",
        "column 'label'",
        "unknown class 'yak'",
        "cat, dog, emu",
    )
    nolabel = write_text(tmp_path / "nolabel.csv", "a,b,c,d\n1,2,3,4\n")
    assert_bad_data(run("evaluate", model, nolabel, "--target", "label"), "nolabel.csv", "no target column 'label'")
    assert_bad_data(run("predict", model, tmp_path / "missing.csv"), "missing.csv", "no such file")
    assert_bad_data(run("predict", model, write_text(tmp_path / "e.csv", "")), "e.csv", "empty file")
    nan = write_text(tmp_path / "nan.csv", "a,b,c,d\n1,2,3,4\n1,2,NaN,4\n")
    assert_bad_data(run("predict", model, nan), "nan.csv", "line 3", "column 'c'", "non-finite")


def test_bad_model_file_gives_one_line(tmp_path):
    X, y = blobs(n_per_class=3)
    data = write_csv(tmp_path / "d.csv", X)
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 100)
    assert_bad_data(run("predict", tmp_path / "junk.npz", data), "junk.npz", "cannot load the model")
    np.savez(tmp_path / "foreign.npz", X=X)
    assert_bad_data(run("predict", tmp_path / "foreign.npz", data), "foreign.npz", "not a softmaxce model")
    assert_bad_data(run("predict", tmp_path / "none.npz", data), "none.npz", "no such model file")


def test_failed_predict_keeps_the_previous_output_file(trained, tmp_path):
    out = tmp_path / "pred.csv"
    out.write_text("previous content\n")
    bad = write_text(tmp_path / "bad.csv", "a,b,c,d\n1,2,3,4\n1,2,3,zz\n")
    assert_bad_data(run("predict", trained["model"], bad, "--out", out), "bad.csv", "line 3", "column 'd'")
    assert out.read_text() == "previous content\n"
    assert no_temp_files(tmp_path) == []


def test_atomic_path_never_leaves_a_half_written_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(str(target)) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]
    with atomic_path(str(tmp_path / "sub" / "new.json")) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path / "sub") and tmp.endswith(".json")
        open(tmp, "w").write("complete")
    assert (tmp_path / "sub" / "new.json").read_text() == "complete"


# ----------------------------------------------------------------------------------------- gradcheck


def test_gradcheck_passes_and_prints_the_table():
    result = run("gradcheck", "--classes", "7", "--batch", "5", "--features", "3")
    assert result.exit_code == 0, result.output
    for name in ("loss L", "dL/dz", "dL/dW", "dL/db", "dL/dx", "fused dL/dW", "fused dL/dx"):
        assert re.search(rf"^{re.escape(name)} .* ok$", result.stdout, re.M), name
    worst = float(re.search(r"largest scaled error (\S+)", result.stdout).group(1))
    assert worst < 1e-9  # float64 analytic vs 4th-order finite differences
    r32 = run("gradcheck", "--dtype", "float32", "--reduction", "sum", "--label-smoothing", "0.2", "--seed", "4")
    assert r32.exit_code == 0, r32.output


def test_gradcheck_fails_on_a_wrong_gradient(monkeypatch):
    assert run("gradcheck", "--tol", "1e-30", "-q").exit_code == 1  # real errors (~1e-12) exceed a silly tol
    real = cli.cross_entropy_and_grad

    def off_by_one_percent(*args, **kwargs):
        loss, grad = real(*args, **kwargs)
        return loss, grad * 1.01

    monkeypatch.setattr(cli, "cross_entropy_and_grad", off_by_one_percent)
    result = run("gradcheck")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "FAILED" in result.stderr


# ----------------------------------------------------------------------------------------- demo


def test_demo_end_to_end_in_a_real_process(tmp_path):
    """`softmaxce demo` as a user runs it. It must take under 60 s on the 2-core machine; the test bounds
    the child's CPU time (threads included), which does not grow when other jobs share the machine."""
    before = os.times()
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "softmaxce", "demo", "--out-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    print(f"softmaxce demo: {wall:.1f} s wall, {cpu:.1f} s CPU")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "-ln 0.6 = 0.5108" in text
    assert "a - y = [0.1000, -0.4000, 0.3000]" in text
    assert "finite differences     = [0.1000, -0.4000, 0.3000]" in text
    assert re.search(r"epoch +30/30 +loss \S+ +val_loss \S+ +val_acc \S+", text)
    acc = float(re.search(r"test accuracy: \S*?(\d\.\d{4})", text).group(1))
    assert acc >= 0.97
    assert re.search(r"max \|dL/dz - finite differences\| += \d\.\de-(1[0-9]|9)", text)
    assert re.search(r"512 MiB of logits: [\d.]+ ms .* GB/s", text)
    for png in ("loss_curve.png", "confusion_matrix.png"):
        path = tmp_path / "o" / png
        assert str(path) in text or os.path.join("o", png) in text
        assert_png(path)
    assert cpu < 60, f"demo used {cpu:.1f} s of CPU"


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    # Regression: mkstemp's private 0600 leaked into every output file; a finished file has the
    # permissions a plain open() gives it (0666 less the umask).
    umask = os.umask(0o022)
    try:
        with atomic_path(str(tmp_path / "out.csv")) as tmp:
            with open(tmp, "w") as f:
                f.write("a,b\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o644
