"""Data loading and safe file writing for the command-line tool.

Two input formats:

- CSV with a header row (``.csv``; ``.tsv`` is read with tabs). Every column except the target is a
  numeric feature. The file is streamed: rows are read one at a time with the `csv` module, converted
  to float64 a block at a time and copied into a preallocated array that doubles when full, so the
  text is never held (or read) twice.
- NumPy ``.npz`` (read with ``allow_pickle=False``): key ``X`` holds the (n, d) features, the labels
  sit under the key named by ``--target`` (default ``y``, an (n,) array of integers or strings),
  and an optional ``feature_names`` key holds d strings.

Every problem with the data raises `DataError` with one line naming the file, the row (CSV: the line
number in the file, the header being line 1; npz: the index into ``X``) and the column.
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["DataError", "Table", "load_table", "parse_labels"]

_BLOCK_ROWS = 8192  # rows converted to float64 at once
_PROGRESS_BYTES = 16 * 2**20  # files at least this big show a row counter while they are read
_INT_RE = re.compile(r"^[+-]?\d+$")


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, row and column."""


@dataclass
class Table:
    """A loaded data file.

    Attributes:
        path: the file it came from.
        features: (n, d) float64 feature matrix, every entry finite.
        feature_names: the d feature column names.
        labels: (n,) labels as read (strings for CSV; the stored dtype for npz), or None when the
            file has no target column and none was required.
        target: the name of the target column (or npz key), or None.
        rows: (n,) CSV line numbers (1-based, the header is line 1) or npz row indices, so later
            checks (an unknown class at evaluate) can name the row.
        row_kind: "line" for CSV, "row" for npz.
    """

    path: str
    features: np.ndarray
    feature_names: list[str]
    labels: np.ndarray | None
    target: str | None
    rows: np.ndarray
    row_kind: str

    def where(self, i: int, column: str | None = None) -> str:
        """`file: line L` (CSV) or `file: row R` (npz) for record i, plus `, column 'c'` when given."""
        col = f", column '{column}'" if column is not None else ""
        return f"{self.path}: {self.row_kind} {int(self.rows[i])}{col}"


def load_table(path: str, *, target: str | None = None, require_target: bool = False, progress: bool = False) -> Table:
    """Loads a CSV or npz file into a `Table` (see the module docstring for the formats).

    Args:
        path: the file.
        target: the label column (CSV) or key (npz; default "y"). For CSV, None means every column
            is a feature.
        require_target: raise `DataError` when the target column / key is absent.
        progress: show a row counter (tqdm, on stderr) while reading a CSV of 16 MiB or more.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a CSV or .npz file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file")
    if path.lower().endswith(".npz"):
        return _load_npz(path, target, require_target)
    return _load_csv(path, target, require_target, progress and os.path.getsize(path) >= _PROGRESS_BYTES)


def parse_labels(raw: np.ndarray) -> np.ndarray:
    """Class labels read as text become int64 when every one is an integer, else stay strings."""
    raw = np.asarray(raw)
    if raw.dtype.kind in "iub":
        return raw.astype(np.int64)
    if raw.dtype.kind == "f":
        if raw.size and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw)):
            return raw.astype(np.int64)
        return raw
    text = raw.astype(str)
    if text.size and all(_INT_RE.match(s.strip()) for s in text):
        return np.array([int(s) for s in text], dtype=np.int64)
    return np.char.strip(text)


# ----------------------------------------------------------------------------------------- CSV


def _load_csv(path: str, target: str | None, require_target: bool, progress: bool) -> Table:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return _read_csv(f, path, delimiter, target, require_target, progress)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); expected CSV or .npz") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None


def _read_csv(f, path, delimiter, target, require_target, progress) -> Table:
    reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
    header = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            break
    if header is None:
        raise DataError(f"{path}: empty file (no header row)")
    header_line = reader.line_num
    for j, name in enumerate(header):
        if not name:
            raise DataError(f"{path}: line {header_line}, column {j + 1}: empty column name in the header")
    dup = _first_duplicate(header)
    if dup is not None:
        raise DataError(f"{path}: line {header_line}: column name '{dup}' appears twice in the header")
    t = None
    if target is not None and target in header:
        t = header.index(target)
    elif require_target:
        raise DataError(
            f"{path}: line {header_line} (header): no target column '{target}' (columns: {_short_list(header)})"
        )
    feature_idx = [j for j in range(len(header)) if j != t]
    names = [header[j] for j in feature_idx]
    if not feature_idx:
        raise DataError(f"{path}: line {header_line} (header): no feature columns besides the target '{target}'")
    ncol = len(header)

    feats = np.empty((1024, len(feature_idx)), dtype=np.float64)  # grows by doubling
    labels: list[np.ndarray] = []
    lines: list[int] = []
    n = 0
    block: list[list[str]] = []
    block_lines: list[int] = []
    bar = _row_bar(path) if progress else None

    def flush():
        nonlocal feats, n
        if not block:
            return
        vals, labs = _convert_block(block, block_lines, path, header, feature_idx, t)
        if n + len(vals) > feats.shape[0]:
            grown = np.empty((max(2 * feats.shape[0], n + len(vals)), feats.shape[1]), dtype=np.float64)
            grown[:n] = feats[:n]
            feats = grown
        feats[n : n + len(vals)] = vals
        n += len(vals)
        if labs is not None:
            labels.append(labs)
        lines.extend(block_lines)
        if bar is not None:
            bar.update(len(block))
        block.clear()
        block_lines.clear()

    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != ncol:
                raise DataError(
                    f"{path}: line {reader.line_num}: expected {ncol} columns as in the header, found {len(row)}"
                )
            block.append(row)
            block_lines.append(reader.line_num)
            if len(block) >= _BLOCK_ROWS:
                flush()
        flush()
    finally:
        if bar is not None:
            bar.close()
    if n == 0:
        raise DataError(f"{path}: empty file (a header but no data rows)")
    if feats.shape[0] != n:
        feats.resize((n, feats.shape[1]), refcheck=False)  # shrink in place (realloc): no second copy
    return Table(
        path=path,
        features=feats,
        feature_names=names,
        labels=np.concatenate(labels) if t is not None else None,
        target=header[t] if t is not None else None,
        rows=np.asarray(lines, dtype=np.int64),
        row_kind="line",
    )


def _convert_block(block, block_lines, path, header, feature_idx, t):
    """Converts a block of CSV rows (lists of strings) to float64 features and string labels."""
    ncol = len(header)
    if t is None:
        cells = [v for row in block for v in row]
    elif t == ncol - 1:
        cells = [v for row in block for v in row[:-1]]
    else:
        cells = [v for row in block for v in row[:t] + row[t + 1 :]]
    try:
        vals = np.array(cells, dtype=np.float64).reshape(len(block), len(feature_idx))
    except ValueError:
        vals = None
    if vals is None:  # find the first bad cell, in reading order
        for r, row in enumerate(block):
            for j in feature_idx:
                cell = row[j].strip()
                if not cell:
                    raise DataError(f"{path}: line {block_lines[r]}, column '{header[j]}': missing value") from None
                try:
                    float(cell)
                except ValueError:
                    raise DataError(
                        f"{path}: line {block_lines[r]}, column '{header[j]}': non-numeric value {_quote(cell)}"
                    ) from None
        raise DataError(f"{path}: line {block_lines[0]}: could not read the numbers in this block")  # unreachable
    finite = np.isfinite(vals)
    if not finite.all():
        r, k = np.argwhere(~finite)[0]
        j = feature_idx[k]
        raise DataError(
            f"{path}: line {block_lines[r]}, column '{header[j]}': non-finite value "
            f"{_quote(block[r][j].strip())} (NaN and infinity are not allowed)"
        )
    labs = None
    if t is not None:
        labs = np.array([row[t].strip() for row in block], dtype=str)
        empty = np.flatnonzero(labs == "")
        if empty.size:
            raise DataError(f"{path}: line {block_lines[empty[0]]}, column '{header[t]}': missing class label")
    return vals, labs


def _row_bar(path):
    from tqdm.auto import tqdm

    return tqdm(desc=f"reading {os.path.basename(path)}", unit=" rows", unit_scale=True, leave=False, mininterval=0.5)


# ----------------------------------------------------------------------------------------- npz


def _load_npz(path: str, target: str | None, require_target: bool) -> Table:
    key = target if target is not None else "y"
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            if "X" not in keys:
                raise DataError(f"{path}: no array 'X' (the features) in the .npz file (keys: {_short_list(keys)})")
            X = z["X"]
            y = z[key] if key in keys else None
            names = z["feature_names"] if "feature_names" in keys else None
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    except ValueError as e:  # object arrays need pickle, corrupt headers
        raise DataError(f"{path}: cannot read the .npz file safely ({str(e).splitlines()[0]})") from None
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
            raise DataError(f"{path}: no labels array '{key}' in the .npz file (keys: {_short_list(keys)})")
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
        labels=y,
        target=key if y is not None else None,
        rows=np.arange(X.shape[0], dtype=np.int64),
        row_kind="row",
    )


# ----------------------------------------------------------------------------------------- helpers


def _first_duplicate(names: list[str]) -> str | None:
    seen: set[str] = set()
    for s in names:
        if s in seen:
            return s
        seen.add(s)
    return None


def _short_list(items, limit: int = 8) -> str:
    items = [str(s) for s in items]
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _quote(cell: str, limit: int = 40) -> str:
    return repr(cell if len(cell) <= limit else cell[:limit] + "...")
