"""Reading CSV, Parquet and .npz input: the same table from every format, the CSV dialect, label
parsing, and bad data: exit status 2 with one line naming the file, the row and the column."""

from __future__ import annotations

import numpy as np
import pytest
from _cli_helpers import assert_bad_data, blobs, no_temp_files, run, write_csv, write_parquet, write_text

from softmaxce.cli._data import DataError, load_table, parse_labels


def _train(data, *extra):
    return run("train", data, "--target", "label", "--epochs", "1", *extra)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("a,b,c,d,label\n1,2,3,4,cat\n1,2,x7,4,dog\n", ["line 3", "column 'c'", "non-numeric", "'x7'"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n1,2,3,4,dog\n1,nan,3,4,dog\n", ["line 4", "column 'b'", "non-finite", "nan"]),
        ("a,b,c,d,label\n1,2,3,-inf,cat\n", ["line 2", "column 'd'", "non-finite"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n1,,3,4,dog\n", ["line 3", "column 'b'", "missing value"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n1,2,3,4,\n", ["line 3", "column 'label'", "missing class label"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n1,2,3,dog\n", ["line 3", "expected 5 columns", "found 4"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n1,2,3,4,5,dog\n", ["line 3", "expected 5 columns", "found 6"]),
        ("a,b,c,d,species\n1,2,3,4,cat\n", ["line 1", "no target column 'label'", "species"]),
        ("a,b,b,d,label\n1,2,3,4,cat\n", ["line 1", "column name 'b' appears twice"]),
        ("a,,c,d,label\n1,2,3,4,cat\n", ["line 1, column 2", "empty column name"]),
        ("", ["empty file"]),
        ("\n\n", ["empty file", "no header row"]),
        ("a,b,c,d,label\n", ["empty file", "no data rows"]),
        ("a,b,c,d,label\n\n\n", ["empty file", "no data rows"]),
        ("a,b,c,d,label\n1,2,3,4,cat\n2,3,4,5,cat\n", ["column 'label'", "only one class"]),
    ],
    ids=[
        "non-numeric",
        "nan",
        "inf",
        "missing-value",
        "missing-label",
        "short-row",
        "long-row",
        "missing-target-column",
        "duplicate-column",
        "empty-column-name",
        "empty-file",
        "blank-lines-only",
        "header-only",
        "header-and-blank-lines",
        "one-class",
    ],
)
def test_train_bad_csv_gives_one_line_and_exit_2(tmp_path, text, fragments):
    data = write_text(tmp_path / "bad.csv", text)
    out = tmp_path / "model.npz"
    assert_bad_data(_train(data, "--out", out), "bad.csv", *fragments)
    assert not out.exists()
    assert no_temp_files(tmp_path) == []


def _corrupt(path, line, column, value):
    """Replaces the cell of a CSV file at 1-based `line` and 0-based `column`."""
    lines = open(path).read().splitlines()
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)
    open(path, "w").write("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("line", "column", "value", "message"),
    [
        (10002, 1, "oops", "line 10002, column 'b': non-numeric value 'oops'"),
        (2, 3, "", "line 2, column 'd': missing value"),
        (12001, 0, "1.5.2", "line 12001, column 'a': non-numeric value '1.5.2'"),
        (7777, 2, "inf", "line 7777, column 'c': non-finite value 'inf'"),
        (11000, 4, " ", "line 11000, column 'label': missing class label"),
    ],
    ids=["non-numeric-deep", "missing-first-row", "non-numeric-last-row", "infinite", "blank-label"],
)
def test_bad_cell_in_a_large_csv_names_its_line_and_column(tmp_path, line, column, value, message):
    """A bad cell after many of pyarrow's blocks (12000 rows, about 1 MiB) still names its exact line."""
    X, y = blobs(n_per_class=4000, seed=3)
    path = write_csv(tmp_path / "big.csv", X, y)
    _corrupt(path, line, column, value)
    with pytest.raises(DataError, match=f"^{tmp_path / 'big.csv'}: {message}"):
        load_table(path, target="label", require_target=True)


def test_line_numbers_count_blank_lines_and_quoted_newlines(tmp_path):
    path = write_text(
        tmp_path / "d.csv",
        '\na,b,label\n1,2,"two\nlines"\n\n3,4,x\n5,zz,y\n',
    )  # the header is line 2; the record after the 2-line label starts on line 6
    with pytest.raises(DataError, match=r"d\.csv: line 7, column 'b': non-numeric value 'zz'"):
        load_table(path, target="label")
    ok = write_text(tmp_path / "ok.csv", '\na,b,label\n1,2,"two\nlines"\n\n3,4,x\n')
    t = load_table(ok, target="label")
    assert t.labels.tolist() == ["two\nlines", "x"]
    assert t.columns_at == "line 2 (header)"
    assert [t.row(0), t.row(1)] == [4, 6] and t.where(1, "b") == f"{ok}: line 6, column 'b'"


def test_large_csv_reads_exactly(tmp_path):
    X, y = blobs(n_per_class=4000, seed=3)  # 12000 rows: many of pyarrow's blocks
    table = load_table(write_csv(tmp_path / "ok.csv", X, y), target="label", require_target=True)
    np.testing.assert_array_equal(table.features, X)  # repr() round-trips floats exactly
    assert table.features.dtype == np.float64 and table.features.flags.c_contiguous
    assert table.labels.tolist() == y.tolist()
    assert table.row(0) == 2 and table.row(11999) == 12001


def test_csv_dialect_details(tmp_path):
    """UTF-8 BOM, CRLF line endings, quoted cells, blank lines, spaces, a target column in the middle; TSV."""
    path = tmp_path / "d.csv"
    path.write_bytes('\ufeffa, "label" ,b\r\n1.5,"x, y",2\r\n\r\n -3 ,z,4e2\r\n'.encode())
    t = load_table(str(path), target="label", require_target=True)
    assert t.feature_names == ["a", "b"] and t.target == "label"
    np.testing.assert_array_equal(t.features, [[1.5, 2.0], [-3.0, 400.0]])
    assert t.labels.tolist() == ["x, y", "z"] and [t.row(0), t.row(1)] == [2, 4]
    tsv = write_text(tmp_path / "d.tsv", "a\tb\tlabel\n1\t2\tp\n3\t4\tq\n")
    t = load_table(tsv, target="label")
    np.testing.assert_array_equal(t.features, [[1, 2], [3, 4]])
    with pytest.raises(DataError, match=r"line 2, column 'label': non-numeric value 'p'"):
        load_table(tsv, target=None)  # no target: every column is a feature


def test_not_utf8_csv(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,b,label\n1,2,caf\u00e9\n".encode("latin-1"))
    assert_bad_data(_train(str(path), "--out", tmp_path / "m.npz"), "latin1.csv", "not a UTF-8 text file")
    (tmp_path / "png.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert_bad_data(_train(str(tmp_path / "png.csv"), "--out", tmp_path / "m.npz"), "png.csv", "not a UTF-8 text file")


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["3", " 7", "+2", "-1"], [3, 7, 2, -1]),
        (["3", "7", "x"], ["3", "7", "x"]),
        (["1.0", "2"], ["1.0", "2"]),
        ([" cat", "dog "], ["cat", "dog"]),
        (["99999999999999999999", "1"], ["99999999999999999999", "1"]),
    ],
    ids=["integers", "mixed", "float-text", "stripped", "beyond-int64"],
)
def test_csv_labels_are_integers_only_when_every_label_is_one(tmp_path, labels, expected):
    text = "a,label\n" + "".join(f"{i},{s}\n" for i, s in enumerate(labels))
    t = load_table(write_text(tmp_path / "d.csv", text), target="label")
    assert t.labels.tolist() == expected
    assert t.labels.dtype.kind == ("i" if isinstance(expected[0], int) else "U")


def test_parse_labels_of_numbers_and_text():
    assert parse_labels(np.array([1.0, 2.0])).tolist() == [1, 2]
    assert parse_labels(np.array([1.5, 2.0])).tolist() == [1.5, 2.0]
    assert parse_labels(np.array([True, False])).tolist() == [1, 0]
    assert parse_labels(np.array([b"4", b"5"])).tolist() == [4, 5]


def test_every_format_gives_the_same_table(tmp_path):
    X, y = blobs(n_per_class=7, labels=(5, 1, 3))
    tables = [
        load_table(write_csv(tmp_path / "d.csv", X, y), target="label"),
        load_table(write_parquet(tmp_path / "d.parquet", X, y), target="label"),
        load_table(write_parquet(tmp_path / "d32.pq", X, y.astype(np.int32)), target="label"),
        load_table(write_parquet(tmp_path / "ds.parquet", X, y.astype(str)), target="label"),
    ]
    np.savez(tmp_path / "d.npz", X=X, label=y, feature_names=np.array(list("abcd")))
    tables.append(load_table(str(tmp_path / "d.npz"), target="label"))
    for t in tables:
        np.testing.assert_array_equal(t.features, X)
        assert t.labels.dtype == np.int64 and t.labels.tolist() == y.tolist()
        assert t.feature_names == list("abcd") and t.target == "label"


def test_parquet_without_target_and_with_integer_and_boolean_features(tmp_path):
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    path = write_parquet(tmp_path / "d.parquet", X, flag=np.array([True, False, True, True]), n=np.arange(4))
    t = load_table(path)
    assert t.feature_names == ["a", "b", "c", "flag", "n"] and t.labels is None and t.target is None
    np.testing.assert_array_equal(t.features, np.column_stack([X, [1, 0, 1, 1], np.arange(4)]))
    assert t.where(2, "b") == f"{path}: row 2, column 'b'"


def test_parquet_bad_data(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, y = blobs(n_per_class=5)
    X_nan = X.copy()
    X_nan[7, 2] = np.nan
    with_null = pa.table({"a": pa.array([1.0, None, 3.0]), "label": ["x", "y", "x"]})
    null_label = pa.table({"a": [1.0, 2.0, 3.0], "label": pa.array(["x", None, "y"])})
    cases = {
        "nan.parquet": (pa.table({"a": X_nan[:, 2], "label": y}), ["row 7, column 'a'", "non-finite value nan"]),
        "null.parquet": (with_null, ["row 1, column 'a'", "missing value"]),
        "nulllabel.parquet": (null_label, ["row 1, column 'label'", "missing class label"]),
        "text.parquet": (pa.table({"a": ["1", "2"], "label": ["x", "y"]}), ["column 'a' holds string", "numbers"]),
        "notarget.parquet": (pa.table({"a": [1.0, 2.0], "species": ["x", "y"]}), ["no target column 'label'"]),
        "empty.parquet": (pa.table({"a": pa.array([], pa.float64()), "label": pa.array([], pa.string())}), ["empty"]),
    }
    for name, (table, fragments) in cases.items():
        pq.write_table(table, tmp_path / name)
        assert_bad_data(_train(tmp_path / name, "--out", tmp_path / "m.npz"), name, *fragments)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not a parquet file")
    assert_bad_data(_train(tmp_path / "junk.parquet", "--out", tmp_path / "m.npz"), "junk.parquet", "not a readable")
    assert not (tmp_path / "m.npz").exists()


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
