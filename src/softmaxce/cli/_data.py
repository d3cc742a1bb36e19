"""Reading the command-line tool's input tables into one float64 feature matrix and class labels.

Three input formats, chosen by the file name:

- CSV with a header row (``.csv``; ``.tsv`` is read with tabs), read with ``pyarrow.csv`` (see
  `_csv`). Every column except the target is a numeric feature; the labels are read as text.
- Parquet (``.parquet`` or ``.pq``), read with ``pyarrow.parquet``, a row group at a time. Every
  column except the target is a feature and must hold numbers (integers, floats or booleans).
- NumPy ``.npz`` (read with ``allow_pickle=False``): key ``X`` holds the (n, d) features, the labels
  sit under the key named by ``--target`` (default ``y``, an (n,) array of integers or strings),
  and an optional ``feature_names`` key holds d strings.

The features are copied column by column straight into one preallocated (n, d) float64 array; no
other full-size copy is made. Every problem with the data raises `DataError` with one line naming
the file, the row (CSV: the line number in the file, the header being line 1; Parquet and npz: the
0-based row index) and the column.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["DataError", "Table", "copy_columns", "first_duplicate", "first_line", "load_table", "parse_labels", "short"]

_PARQUET_BATCH_ROWS = 65536  # rows converted at once from a Parquet file


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, row and column."""


@dataclass
class Table:
    """A loaded data file.

    Attributes:
        path: the file it came from.
        features: (n, d) float64 feature matrix, every entry finite.
        feature_names: the d feature column names.
        labels: (n,) class labels parsed by `parse_labels` (int64, or the floats or strings as
            stored), or None when the file has no target column and none was required.
        target: the name of the target column (or npz key), or None.
        row_kind: "line" for CSV (rows are named by their line in the file), "row" for Parquet and
            npz (rows are named by their 0-based index).
        columns_at: where the file names its columns, for messages ("line 1 (header)", ...).
        line_of: CSV only: record index -> line number (it re-reads the file; for error messages).
    """

    path: str
    features: np.ndarray
    feature_names: list[str]
    labels: np.ndarray | None
    target: str | None
    row_kind: str
    columns_at: str
    line_of: Callable[[int], int] | None = field(default=None, repr=False)

    def row(self, i: int) -> int:
        """The line number (CSV) or row index (Parquet, npz) of record i."""
        return self.line_of(i) if self.line_of is not None else int(i)

    def where(self, i: int, column: str | None = None) -> str:
        """`file: line L` (CSV) or `file: row R` for record i, plus `, column 'c'` when given."""
        col = f", column '{column}'" if column is not None else ""
        return f"{self.path}: {self.row_kind} {self.row(i)}{col}"


def load_table(path: str, *, target: str | None = None, require_target: bool = False, progress: bool = False) -> Table:
    """Loads a CSV, Parquet or npz file into a `Table` (see the module docstring for the formats).

    Args:
        path: the file.
        target: the label column (CSV, Parquet) or key (npz; default "y"). For CSV and Parquet, None
            means every column is a feature.
        require_target: raise `DataError` when the target column / key is absent.
        progress: show a row counter (tqdm, on stderr) while reading a CSV of 16 MiB or more.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a CSV, Parquet or .npz file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file")
    lower = path.lower()
    try:
        if lower.endswith(".npz"):
            return _load_npz(path, target, require_target)
        if lower.endswith((".parquet", ".pq")):
            return _load_parquet(path, target, require_target)
        from ._csv import load_csv

        return load_csv(path, target, require_target, progress)
    except OSError as e:  # unreadable: permissions, I/O errors
        raise DataError(f"{path}: cannot read the file ({e.strerror or first_line(e)})") from None


def parse_labels(raw: np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Class labels: int64 when every label is an integer (or integer text), else as stored.

    Text is stripped of surrounding white space first; float labels that are all whole numbers
    become integers too.

    >>> parse_labels(np.array([" 3", "+4", "-1"])).tolist()
    [3, 4, -1]
    >>> parse_labels(np.array(["cat ", "7"])).tolist()
    ['cat', '7']
    >>> parse_labels(np.array([2.0, 5.0])).dtype
    dtype('int64')
    """
    if isinstance(raw, pa.ChunkedArray | pa.Array):
        if pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type):
            return _parse_text_labels(raw)
        raw = raw.to_numpy(zero_copy_only=False)
    raw = np.asarray(raw)
    if raw.dtype.kind in "iub":
        return raw.astype(np.int64)
    if raw.dtype.kind == "f":
        if raw.size and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw)):
            return raw.astype(np.int64)
        return raw
    return _parse_text_labels(pa.array(raw.astype(str), type=pa.string()))


def _parse_text_labels(text: pa.Array | pa.ChunkedArray) -> np.ndarray:
    text = pc.utf8_trim_whitespace(text)
    if len(text) and pc.all(pc.match_substring_regex(text, r"^[+-]?\d+$")).as_py():
        try:
            return np.asarray(pc.cast(pc.replace_substring_regex(text, r"^\+", ""), pa.int64()), dtype=np.int64)
        except pa.ArrowInvalid:  # beyond int64: the labels stay text
            pass
    return np.asarray(text.to_numpy(zero_copy_only=False)).astype(str)


def copy_columns(out: np.ndarray, columns: Sequence[pa.Array]) -> tuple[int, int] | None:
    """Copies numeric arrow columns into out, a (rows, d) float64 block, column by column.

    Missing values (nulls) become NaN. Returns (row, column) of the first missing or non-finite
    value in reading order (row by row), or None when every value is finite.
    """
    for j, col in enumerate(columns):
        out[:, j] = col.to_numpy(zero_copy_only=False)  # nulls -> NaN
    finite = np.isfinite(out)
    if finite.all():
        return None
    r, j = np.argwhere(~finite)[0]
    return int(r), int(j)


# ----------------------------------------------------------------------------------------- Parquet


def _load_parquet(path: str, target: str | None, require_target: bool) -> Table:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
    schema = pf.schema_arrow
    header = list(schema.names)
    dup = first_duplicate(header)
    if dup is not None:
        raise DataError(f"{path}: column name '{dup}' appears twice in the Parquet schema")
    if target is not None and target in header:
        t = target
    elif require_target:
        raise DataError(f"{path}: no target column '{target}' (columns: {short(header, 8)})")
    else:
        t = None
    names = [name for name in header if name != t]
    if not names:
        raise DataError(f"{path}: no feature columns besides the target '{target}'")
    for name in names:
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise DataError(f"{path}: column '{name}' holds {kind}, expected numbers")
    n = pf.metadata.num_rows
    if n == 0:
        raise DataError(f"{path}: empty file (no rows)")
    features = np.empty((n, len(names)), dtype=np.float64)
    labels: list[pa.Array] = []
    start = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=names + ([t] if t is not None else [])):
            stop = start + batch.num_rows
            columns = batch.columns
            bad = copy_columns(features[start:stop], columns[: len(names)])
            if bad is not None:
                r, j = bad
                value = columns[j][r].as_py()
                problem = (
                    "missing value" if value is None else f"non-finite value {value} (NaN and infinity are not allowed)"
                )
                raise DataError(f"{path}: row {start + r}, column '{names[j]}': {problem}")
            if t is not None:
                labels.append(_check_labels(path, columns[-1], start, t))
            start = stop
    except pa.ArrowException as e:
        raise DataError(f"{path}: cannot read the Parquet file ({first_line(e)})") from None
    return Table(
        path=path,
        features=features,
        feature_names=names,
        labels=parse_labels(pa.chunked_array(labels)) if t is not None else None,
        target=t,
        row_kind="row",
        columns_at="the Parquet schema",
    )


def _check_labels(path: str, labels: pa.Array, start: int, target: str) -> pa.Array:
    """Parquet labels: dictionary-encoded columns decoded, no missing or non-finite label."""
    if pa.types.is_dictionary(labels.type):
        labels = labels.dictionary_decode()
    if labels.null_count:
        r = pc.index(pc.is_null(labels), True).as_py()
        raise DataError(f"{path}: row {start + r}, column '{target}': missing class label")
    if pa.types.is_floating(labels.type):
        finite = pc.is_finite(labels)
        if not pc.all(finite).as_py():
            r = pc.index(finite, False).as_py()
            raise DataError(f"{path}: row {start + r}, column '{target}': non-finite class label {labels[r].as_py()}")
    return labels


# ----------------------------------------------------------------------------------------- npz


def _load_npz(path: str, target: str | None, require_target: bool) -> Table:
    key = target if target is not None else "y"
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            if "X" not in keys:
                raise DataError(f"{path}: no array 'X' (the features) in the .npz file (keys: {short(keys, 8)})")
            X = z["X"]
            y = z[key] if key in keys else None
            names = z["feature_names"] if "feature_names" in keys else None
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    except ValueError as e:  # object arrays need pickle, corrupt headers
        raise DataError(f"{path}: cannot read the .npz file safely ({first_line(e)})") from None
    if X.ndim != 2:
        raise DataError(f"{path}: array 'X' must be 2-D (samples, features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise DataError(f"{path}: empty file (array 'X' has no rows)")
    if X.shape[1] == 0:
        raise DataError(f"{path}: array 'X' has no feature columns")
    if names is None:
        feature_names = [f"x{j}" for j in range(X.shape[1])]
    else:
        if names.ndim != 1 or names.shape[0] != X.shape[1]:
            raise DataError(f"{path}: 'feature_names' has shape {names.shape}, expected ({X.shape[1]},)")
        feature_names = [str(s) for s in names]
    if X.dtype.kind not in "iufb":
        raise DataError(f"{path}: array 'X' has dtype {X.dtype}, expected numbers")
    feats = X.astype(np.float64)
    finite = np.isfinite(feats)
    if not finite.all():
        r, k = np.argwhere(~finite)[0]
        raise DataError(
            f"{path}: row {r} of X, column '{feature_names[k]}': non-finite value {X[r, k]} "
            "(NaN and infinity are not allowed)"
        )
    if y is None:
        if require_target:
            raise DataError(f"{path}: no labels array '{key}' in the .npz file (keys: {short(keys, 8)})")
    else:
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise DataError(f"{path}: labels '{key}' have shape {y.shape}, expected ({X.shape[0]},) to match X")
        if y.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(y))
            if bad.size:
                raise DataError(f"{path}: row {bad[0]} of '{key}', column '{key}': non-finite class label {y[bad[0]]}")
        elif y.dtype.kind not in "iubUS":
            raise DataError(f"{path}: labels '{key}' have dtype {y.dtype}, expected integers or strings")
    return Table(
        path=path,
        features=feats,
        feature_names=feature_names,
        labels=parse_labels(y) if y is not None else None,
        target=key if y is not None else None,
        row_kind="row",
        columns_at="array 'X'",
    )


# ----------------------------------------------------------------------------------------- helpers


def short(items: Iterable[Any], limit: int = 10) -> str:
    """At most `limit` items, comma-separated, then how many there are in all.

    >>> short(range(12), limit=3)
    '0, 1, 2, ... (12 in all)'
    """
    items = [str(s) for s in items]
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def first_duplicate(names: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for s in names:
        if s in seen:
            return s
        seen.add(s)
    return None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
