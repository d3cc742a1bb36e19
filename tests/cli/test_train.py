"""`softmaxce train`: model, metrics JSON and PNGs, progress lines, standardization, npz and Parquet input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from _cli_helpers import FEATURES, assert_png, blobs, no_temp_files, run, write_csv, write_parquet

from softmaxce.classifier import SoftmaxClassifier

SMALL = ["--hidden", "8", "--epochs", "2"]


def test_train_writes_model_metrics_and_valid_pngs(trained):
    d = trained["dir"]
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["classes"] == ["cat", "dog", "emu"]
    assert metrics["class_counts"] == [40, 40, 40]
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


def test_validation_metrics_are_those_of_the_saved_model(trained):
    """The last epoch's val_loss / val_accuracy are the log loss and accuracy of the saved model on
    the held-out rows (the split is seeded, so it can be redone here)."""
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split

    last = json.loads((trained["dir"] / "metrics.json").read_text())["epochs"][-1]
    X, y = trained["X"], trained["y"]
    _, X_val, _, y_val = train_test_split(X, y, test_size=12, random_state=0, stratify=y)
    clf = SoftmaxClassifier.load(trained["model"])  # takes raw features: the scaling is folded in
    assert last["val_accuracy"] == np.mean(clf.predict(X_val) == y_val)
    assert np.isclose(last["val_loss"], log_loss(y_val, clf.predict_proba(X_val), labels=clf.classes_), rtol=1e-6)


def test_train_prints_progress_lines_and_is_silent_with_quiet(tmp_path):
    X, y = blobs(n_per_class=10)
    data = write_csv(tmp_path / "d.csv", X, y)
    loud = run("train", data, "--target", "label", *SMALL, "--out", tmp_path / "m.npz")
    assert loud.exit_code == 0
    assert loud.stdout.startswith(f"read 30 rows x 4 features, 3 classes from {data} in ")
    assert re.search(
        r"epoch +2/2 +loss \d+\.\d+ +val_loss \d+\.\d+ +val_acc \d\.\d{4} +\([\d,]+ samples/s\)", loud.stdout
    )
    assert loud.stdout.endswith(f"model written to {tmp_path / 'm.npz'}\n")
    quiet = run("train", data, "--target", "label", *SMALL, "--out", tmp_path / "m2.npz", "--quiet")
    assert quiet.exit_code == 0
    assert quiet.output == ""


def test_standardization_is_folded_into_the_saved_model(tmp_path):
    """Features on a scale of thousands train well (standardized), and the saved model takes raw features."""
    X, y = blobs(n_per_class=30, labels=(0, 1, 2), scale=1000.0, offset=5000.0)
    data = write_csv(tmp_path / "big.csv", X, y)
    model = tmp_path / "m.npz"
    args = ["--hidden", "16", "--epochs", "20", "--batch-size", "16", "--lr", "0.01", "--val-fraction", "0"]
    result = run("train", data, "--target", "label", *args, "--out", model, "--quiet")
    assert result.exit_code == 0, result.output
    clf = SoftmaxClassifier.load(str(model))
    assert clf.classes_.tolist() == [0, 1, 2]  # integer labels stay integers
    assert np.mean(clf.predict(X) == y) >= 0.95


def test_train_npz_with_balanced_weights_and_label_smoothing(tmp_path):
    X, y = blobs(n_per_class=20, labels=(3, 7, 9))
    keep = np.concatenate([np.flatnonzero(y == 3)[:5], np.flatnonzero(y != 3)])  # class 3 is rare
    path = tmp_path / "d.npz"
    np.savez(path, X=X[keep], y=y[keep], feature_names=np.array(["p", "q", "r", "s"]))
    args = ["--hidden", "0", "--epochs", "30", "--lr", "0.05", "--class-weight", "balanced", "--label-smoothing", "0.1"]
    result = run(
        "train", path, "--target", "y", *args, "--out", tmp_path / "m.npz", "--metrics", tmp_path / "m.json",
        "--val-fraction", "0", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["feature_names"] == ["p", "q", "r", "s"]
    assert metrics["classes"] == [3, 7, 9] and metrics["class_counts"] == [5, 20, 20]
    assert metrics["params"]["class_weight"] == "balanced"
    ev = run("evaluate", tmp_path / "m.npz", path, "--target", "y", "--no-plots")
    assert ev.exit_code == 0
    assert float(re.search(r"accuracy (\d\.\d+)", ev.stdout).group(1)) >= 0.9


def test_train_on_parquet_gives_the_model_trained_on_the_same_csv(tmp_path):
    """Parquet and CSV input of the same table train the same model, bit for bit."""
    X, y = blobs(n_per_class=15)
    csv_path = write_csv(tmp_path / "d.csv", X, y)
    pq_path = write_parquet(tmp_path / "d.parquet", X, y)
    args = ["--target", "label", *SMALL, "--quiet"]
    assert run("train", csv_path, *args, "--out", tmp_path / "c.npz", "--metrics", tmp_path / "c.json").exit_code == 0
    assert run("train", pq_path, *args, "--out", tmp_path / "p.npz", "--metrics", tmp_path / "p.json").exit_code == 0
    a, b = SoftmaxClassifier.load(str(tmp_path / "c.npz")), SoftmaxClassifier.load(str(tmp_path / "p.npz"))
    assert a.classes_.tolist() == b.classes_.tolist() == ["cat", "dog", "emu"]
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    mc, mp = (json.loads((tmp_path / f"{s}.json").read_text()) for s in "cp")
    assert mc["epochs"][-1]["train_loss"] == mp["epochs"][-1]["train_loss"]
    assert mp["feature_names"] == FEATURES and mp["rows"] == 45


@pytest.mark.parametrize(
    ("n", "d", "with_rows"),
    [(50_000, 64, True), (40_001, 33, False), (300_000, 2, True), (1_500_000, 1, True), (7, 5, True)],
    ids=["rows-64-columns", "all-rows-odd-sizes", "two-columns", "one-column", "tiny"],
)
def test_standardization_statistics_equal_numpy_bit_for_bit(n, d, with_rows):
    """train's chunked mean and std over the training rows are exactly X[rows].mean / .std(axis=0),
    so that reading the rows in place instead of copying them changes no trained model."""
    from softmaxce.cli._train import _mean_std

    rng = np.random.default_rng(d)
    X = rng.standard_normal((n, d)) * rng.uniform(0.1, 1e4, d) + rng.uniform(-1e3, 1e3, d)
    rows = rng.permutation(n)[: n - n // 10] if with_rows else None
    part = X[rows] if with_rows else X
    before = X.copy()
    mu, sd = _mean_std(X, rows)
    np.testing.assert_array_equal(mu, part.mean(axis=0))
    np.testing.assert_array_equal(sd, part.std(axis=0))
    np.testing.assert_array_equal(X, before)  # the features are not touched


def test_sigint_during_train_exits_130_and_writes_nothing(tmp_path):
    """Ctrl-C in the middle of training: one line on stderr, exit status 130, and no model, metrics,
    plot or temporary file left behind."""
    import shutil
    import signal
    import subprocess
    import time

    X, y = blobs(n_per_class=4000, seed=3)
    data = write_csv(tmp_path / "big.csv", X, y)
    exe = shutil.which("softmaxce")
    assert exe is not None, "the softmaxce console script is not installed"
    out = tmp_path / "out"
    args = [exe, "train", data, "--target", "label", "--epochs", "100000", "--hidden", "32"]
    args += ["--out", str(out / "m.npz"), "--metrics", str(out / "m.json"), "--plots", str(out / "plots")]
    # SIGINT at its default in the child even where the tests run with it ignored (a background job of a
    # shell without job control ignores SIGINT, and children inherit that)
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = proc.stdout.readline()  # "read N rows ...": the data is loaded, training starts
        assert first.startswith("read "), first + proc.stderr.read()
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    # stderr holds the progress bar's lines, then exactly one line about the interrupt (no traceback)
    assert err.strip().splitlines()[-1] == "interrupted: no output file was written", err[-2000:]
    assert "Traceback" not in err and err.count("interrupted") == 1
    left = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["big.csv"], left


def test_an_error_after_the_first_output_leaves_no_output(tmp_path):
    """Outputs land together when the command ends: a later failure removes the earlier ones too."""
    from softmaxce.classifier._atomic import atomic_group, atomic_path

    with pytest.raises(RuntimeError, match="later failure"), atomic_group():
        with atomic_path(tmp_path / "model.npz") as tmp:
            np.savez(tmp, a=np.arange(3))
        raise RuntimeError("later failure")
    assert list(tmp_path.iterdir()) == []
    with atomic_group():
        for name in ("a.txt", "b.txt"):
            with atomic_path(tmp_path / name) as tmp, open(tmp, "w") as f:
                f.write(name)
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_ctrl_c_waits_for_the_loops_check_and_survives_finalizers():
    """While training, SIGINT only sets a flag: KeyboardInterrupt comes from the loop's next check, also
    when the signal is handled inside a finalizer (where Python drops a KeyboardInterrupt), and
    Python's handler is back afterwards. A process that ignores SIGINT keeps ignoring it."""
    import gc
    import os
    import signal
    import time

    from softmaxce.cli._model import _interrupt_between_steps

    class SignalsWhenCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs here, inside the finalizer

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a process started normally
    try:
        reached = False
        with pytest.raises(KeyboardInterrupt), _interrupt_between_steps() as check:
            SignalsWhenCollected()
            gc.collect()
            time.sleep(0.01)
            reached = True  # nothing was raised before the check
            check()
        assert reached
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with _interrupt_between_steps() as check:
            check()  # no signal: nothing raised
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job
        with _interrupt_between_steps() as check:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            check()  # ignored: nothing raised
    finally:
        signal.signal(signal.SIGINT, before)
