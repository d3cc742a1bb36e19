"""CSV input through ``pyarrow.csv``, and the re-scan that names the line and column of a bad cell.

The header row is read with the `csv` module (so a UTF-8 BOM, blank lines before it and spaces
around quoted names are handled), then pyarrow's streaming reader parses the rest of the file a
block at a time, the features as float64 and the target as text, and each block is copied into
one preallocated (n, d) float64 array (`copy_columns`): the text is read once and no second
full-size copy of the features is made. Blank lines are skipped; a quoted cell may span lines.

pyarrow does not say on which line it met a cell that is not a number, an empty cell or a row of
the wrong length. When it rejects the file, the file is read again with the `csv` module up to the
first bad row, which names the line and the column, as does a non-finite value or an empty class
label that a block turns out to hold. Line numbers count the lines of the file, the header being
line 1 (when no blank line comes before it).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ._data import DataError, Table, copy_columns, first_duplicate, first_line, parse_labels, short

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["load_csv"]

_BLOCK_BYTES = 1 << 20  # bytes of text pyarrow parses per block (a batch of rows)
_SCAN_ROWS = 8192  # rows converted at once by the re-scan
_PROGRESS_BYTES = 16 * 2**20  # files at least this big show a row counter while they are read


def load_csv(path: str, target: str | None, require_target: bool, progress: bool) -> Table:
    """Reads a CSV (or, for a ``.tsv`` name, tab-separated) file with a header row into a `Table`."""
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    header, header_lines, offset = _read_header(path, delimiter)
    line = header_lines  # the header's line, when it takes one line
    for j, name in enumerate(header):
        if not name:
            raise DataError(f"{path}: line {line}, column {j + 1}: empty column name in the header")
    dup = first_duplicate(header)
    if dup is not None:
        raise DataError(f"{path}: line {line}: column name '{dup}' appears twice in the header")
    t = None
    if target is not None and target in header:
        t = header.index(target)
    elif require_target:
        raise DataError(f"{path}: line {line} (header): no target column '{target}' (columns: {short(header, 8)})")
    if len(header) == (1 if t is not None else 0):
        raise DataError(f"{path}: line {line} (header): no feature columns besides the target '{target}'")
    layout = _Layout(path, delimiter, tuple(header), header_lines, t)
    show = progress and os.path.getsize(path) >= _PROGRESS_BYTES
    features, labels = _read_body(layout, offset, show)
    return Table(
        path=path,
        features=features,
        feature_names=[header[j] for j in layout.feature_idx],
        labels=parse_labels(labels) if labels is not None else None,
        target=header[t] if t is not None else None,
        row_kind="line",
        columns_at=f"line {line} (header)",
        line_of=layout.line_of,
    )


@dataclass(frozen=True)
class _Layout:
    """Where a CSV file's records are and what its columns hold."""

    path: str
    delimiter: str
    header: tuple[str, ...]
    header_lines: int  # lines up to and including the header row
    target: int | None  # index of the label column

    @property
    def feature_idx(self) -> list[int]:
        return [j for j in range(len(self.header)) if j != self.target]

    def records(self) -> Iterator[tuple[int, list[str]]]:
        """(line number, cells) of every record after the header, as the csv module reads them."""
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as f:
                for _ in range(self.header_lines):
                    f.readline()
                reader = csv.reader(f, delimiter=self.delimiter)
                for row in reader:
                    if row:  # empty lines are skipped, as pyarrow skips them
                        yield self.header_lines + reader.line_num, row
        except UnicodeDecodeError as e:
            raise DataError(f"{self.path}: not a UTF-8 text file ({e.reason}); expected CSV, Parquet or .npz") from None
        except csv.Error as e:
            raise DataError(f"{self.path}: malformed CSV ({e})") from None

    def record(self, i: int) -> tuple[int, list[str]]:
        """(line number, cells) of record i (0-based, after the header)."""
        for k, found in enumerate(self.records()):
            if k == i:
                return found
        raise IndexError(i)

    def line_of(self, i: int) -> int:
        """The line number of record i."""
        return self.record(i)[0]

    def raise_first_bad_row(self, arrow_error: pa.ArrowInvalid) -> NoReturn:
        """Re-reads the file to name the first row pyarrow could not read; always raises DataError."""
        ncol = len(self.header)
        block: list[list[str]] = []
        lines: list[int] = []
        count = 0
        for line, row in self.records():
            count += 1
            if len(row) != ncol:
                self._check_numbers(block, lines)  # an earlier bad cell comes first
                raise DataError(f"{self.path}: line {line}: expected {ncol} columns as in the header, found {len(row)}")
            block.append(row)
            lines.append(line)
            if len(block) >= _SCAN_ROWS:
                self._check_numbers(block, lines)
                block.clear()
                lines.clear()
        self._check_numbers(block, lines)
        if count == 0:
            raise DataError(f"{self.path}: empty file (a header but no data rows)")
        raise DataError(f"{self.path}: cannot read the CSV ({first_line(arrow_error)})")

    def _check_numbers(self, block: list[list[str]], lines: list[int]) -> None:
        """Raises DataError naming the first feature cell of the block that is empty or no number."""
        cells = [row[j] for row in block for j in self.feature_idx]
        try:
            np.array(cells, dtype=np.float64)
            return
        except ValueError:
            pass
        for row, line in zip(block, lines, strict=True):
            for j in self.feature_idx:
                cell = row[j].strip()
                if not cell:
                    raise DataError(f"{self.path}: line {line}, column '{self.header[j]}': missing value")
                try:
                    float(cell)
                except ValueError:
                    raise DataError(
                        f"{self.path}: line {line}, column '{self.header[j]}': non-numeric value {_quote(cell)}"
                    ) from None


def _read_header(path: str, delimiter: str) -> tuple[list[str], int, int]:
    """The header row (names stripped), the lines it and any blank lines before it take, and the
    byte offset just after it."""
    with open(path, "rb") as f:
        lines = 0
        text = ""
        while raw := f.readline():
            try:
                text += raw.decode("utf-8-sig" if lines == 0 else "utf-8")
            except UnicodeDecodeError as e:
                at = f.tell() - len(raw) + e.start
                raise DataError(
                    f"{path}: not a UTF-8 text file ({e.reason} at byte {at}); expected CSV, Parquet or .npz"
                ) from None
            lines += 1
            if text.count('"') % 2:
                continue  # a quoted name goes on to the next line
            row = next(csv.reader([text], delimiter=delimiter, skipinitialspace=True), [])
            if any(cell.strip() for cell in row):
                return [cell.strip() for cell in row], lines, f.tell()
            text = ""
    raise DataError(f"{path}: empty file (no header row)")


def _read_body(layout: _Layout, offset: int, progress: bool) -> tuple[np.ndarray, pa.ChunkedArray | None]:
    """The (n, d) float64 features and the labels as text, block by block from byte `offset` on."""
    path, header, t = layout.path, layout.header, layout.target
    feature_idx = layout.feature_idx
    size = os.path.getsize(path) - offset
    if size <= 0:
        raise DataError(f"{path}: empty file (a header but no data rows)")
    types = {header[j]: pa.float64() for j in feature_idx}
    if t is not None:
        types[header[t]] = pa.string()
    source = pa.OSFile(path)
    source.seek(offset)
    d = len(feature_idx)
    features = np.empty((0, d), dtype=np.float64)
    labels: list[pa.Array] = []
    n = 0
    bar = _row_bar(path) if progress else None
    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(column_names=list(header), block_size=_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=layout.delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False),
        )
        for batch in reader:
            rows = batch.num_rows
            if n == 0:  # room for the rows of the whole file, from the first block's rows per byte
                features = np.empty((int(rows * size / min(size, _BLOCK_BYTES) * 1.02) + 16, d), dtype=np.float64)
            elif n + rows > features.shape[0]:  # longer rows further on: grow (realloc, no copy when mmapped)
                features.resize((int(1.25 * (n + rows)), d), refcheck=False)
            columns = batch.columns
            bad = copy_columns(features[n : n + rows], [columns[j] for j in feature_idx])
            if bad is not None:
                line, row = layout.record(n + bad[0])
                j = feature_idx[bad[1]]
                raise DataError(
                    f"{path}: line {line}, column '{header[j]}': non-finite value "
                    f"{_quote(row[j].strip())} (NaN and infinity are not allowed)"
                )
            if t is not None:
                labels.append(_check_labels(layout, columns[t], n))
            n += rows
            if bar is not None:
                bar.update(rows)
    except pa.ArrowInvalid as e:
        layout.raise_first_bad_row(e)
    finally:
        source.close()
        if bar is not None:
            bar.close()
        pa.default_memory_pool().release_unused()  # the parsed blocks' memory goes back to the system
    if n == 0:
        raise DataError(f"{path}: empty file (a header but no data rows)")
    features.resize((n, d), refcheck=False)  # shrink in place (realloc): no second copy
    return features, (pa.chunked_array(labels, type=pa.string()) if t is not None else None)


def _check_labels(layout: _Layout, labels: pa.Array, start: int) -> pa.Array:
    """Raises DataError at the first empty class label of a block."""
    empty = pc.equal(pc.utf8_trim_whitespace(labels), "")
    if pc.any(empty).as_py():
        line = layout.line_of(start + pc.index(empty, True).as_py())
        raise DataError(f"{layout.path}: line {line}, column '{layout.header[layout.target]}': missing class label")
    return labels


def _row_bar(path: str) -> tqdm:
    from tqdm.auto import tqdm

    return tqdm(desc=f"reading {os.path.basename(path)}", unit=" rows", unit_scale=True, leave=False, mininterval=0.5)


def _quote(cell: str, limit: int = 40) -> str:
    return repr(cell if len(cell) <= limit else cell[:limit] + "...")
