"""`softmaxce predict` and `softmaxce evaluate` with a model trained by `softmaxce train`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from _cli_helpers import assert_bad_data, assert_png, blobs, no_temp_files, run, write_csv, write_parquet, write_text

from softmaxce.classifier import SoftmaxClassifier


def test_predict_matches_the_model_and_writes_atomically(trained, tmp_path):
    clf = SoftmaxClassifier.load(trained["model"])
    X, y = blobs(n_per_class=5, seed=1)
    data = write_csv(tmp_path / "new.csv", X)  # no label column
    out = tmp_path / "pred.csv"
    result = run("predict", trained["model"], data, "--proba", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"15 predictions written to {out}\n"
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["prediction", "p_cat", "p_dog", "p_emu"]
    assert [r[0] for r in rows[1:]] == clf.predict(X).tolist()
    P = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(P, clf.predict_proba(X), rtol=1e-5, atol=1e-300)  # 6 significant digits
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
        assert z["classes"].tolist() == ["cat", "dog", "emu"]
    assert no_temp_files(tmp_path) == []


def test_predict_from_parquet_equals_predict_from_csv(trained, tmp_path):
    X, y = blobs(n_per_class=5, seed=4)
    args = ["--target", "label", "--proba"]
    from_csv = run("predict", trained["model"], write_csv(tmp_path / "d.csv", X, y), *args)
    from_pq = run("predict", trained["model"], write_parquet(tmp_path / "d.parquet", X, y), *args)
    assert from_csv.exit_code == from_pq.exit_code == 0
    assert from_pq.stdout == from_csv.stdout and len(from_pq.stdout.splitlines()) == 16


def _labelled_test_set(tmp_path):
    X, y = blobs(n_per_class=20, seed=2)
    y = y.copy()
    y[:6] = np.roll(y[:6], 1)  # some labels wrong, so the metrics are not all 1
    return X, y, write_csv(tmp_path / "test.csv", X, y)


def test_evaluate_reports_metrics_that_match_sklearn(trained, tmp_path):
    from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

    clf = SoftmaxClassifier.load(trained["model"])
    X, y, data = _labelled_test_set(tmp_path)
    result = run(
        "evaluate", trained["model"], data, "--target", "label", "--metrics", tmp_path / "ev.json",
        "--plots", tmp_path / "plots",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "ev.json").read_text())
    pred = clf.predict(X)
    assert m["rows"] == 60 and m["classes"] == ["cat", "dog", "emu"]
    assert m["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y, clf.predict_proba(X), labels=clf.classes_), rel=1e-6)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=clf.classes_, zero_division=0)
    for i, c in enumerate(clf.classes_):
        got = m["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=clf.classes_).tolist()
    assert_png(tmp_path / "plots" / "confusion_matrix.png")
    # the printed table: the summary line, a header, one row per class, the macro average
    lines = result.stdout.splitlines()
    assert lines[0] == f"accuracy {m['accuracy']:.4f}   log loss {m['log_loss']:.4f}   (60 rows, 3 classes)"
    assert lines[1] == "class  precision  recall     f1  support"
    for line, c in zip(lines[2:5], clf.classes_, strict=True):
        pc = m["per_class"][c]
        assert line == f"{c:>5}  {pc['precision']:9.4f}  {pc['recall']:6.4f}  {pc['f1']:.4f}  {pc['support']:7d}"
    assert lines[5] == f"macro  {np.mean(p):9.4f}  {np.mean(r):6.4f}  {np.mean(f):.4f}       60"
    quiet = run("evaluate", trained["model"], data, "--target", "label", "--no-plots", "-q")
    assert quiet.stdout.splitlines() == lines[:1]


def test_evaluate_counts_by_hand(trained, tmp_path):
    """Labels that disagree with the (confident) model in a known way give the confusion matrix,
    precision and recall one can count by hand."""
    clf = SoftmaxClassifier.load(trained["model"])
    X, _ = blobs(n_per_class=4, seed=5)
    pred = clf.predict(X)
    assert np.mean(pred == _) == 1.0  # well separated blobs: the model is right on every row
    y = pred.copy()
    y[np.flatnonzero(pred == "cat")[:2]] = "dog"  # 2 cats labelled dog
    data = write_csv(tmp_path / "t.csv", X, y)
    args = ["--target", "label", "--no-plots", "--metrics", tmp_path / "m.json"]
    result = run("evaluate", trained["model"], data, *args)
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["confusion_matrix"] == [[2, 0, 0], [2, 4, 0], [0, 0, 4]]  # rows: label cat, dog, emu
    assert m["accuracy"] == 10 / 12
    assert m["per_class"]["cat"] == {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2}
    assert m["per_class"]["dog"] == {"precision": 1.0, "recall": 4 / 6, "f1": 0.8, "support": 6}


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


def test_unknown_class_in_parquet_names_the_row(trained, tmp_path):
    X, y = blobs(n_per_class=3)
    y = y.copy()
    y[4] = "yak"
    data = write_parquet(tmp_path / "t.parquet", X, y)
    result = run("evaluate", trained["model"], data, "--target", "label", "--no-plots")
    assert_bad_data(result, "t.parquet: row 4, column 'label'", "unknown class 'yak'")


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
