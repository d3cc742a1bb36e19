"""Helpers of the CLI tests: small labelled data sets, files in every input format, and the checks
every bad-data case shares (exit status 2, one line on stderr naming file, row and column)."""

from __future__ import annotations

import csv
import os

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image

from softmaxce.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FEATURES = ["a", "b", "c", "d"]


def blobs(n_per_class=40, labels=("cat", "dog", "emu"), seed=0, scale=1.0, offset=0.0):
    """Three well separated Gaussian blobs in 4-D: (X, y)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0, 0], [4, 4, 0, 0], [0, 4, 4, 4]], dtype=np.float64)
    X = np.concatenate([c + 0.5 * rng.standard_normal((n_per_class, 4)) for c in centers[: len(labels)]])
    y = np.repeat(np.array(labels), n_per_class)
    order = rng.permutation(len(y))
    return X[order] * scale + offset, y[order]


def write_csv(path, X, y=None, header=None, target="label") -> str:
    """X (and y as the last column) as CSV; repr() writes every float so that it reads back exactly."""
    header = header or FEATURES[: X.shape[1]] + ([target] if y is not None else [])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(len(X)):
            w.writerow([repr(float(v)) for v in X[i]] + ([y[i]] if y is not None else []))
    return str(path)


def write_parquet(path, X, y=None, target="label", **extra_columns) -> str:
    """X as columns a, b, c, d (and y as `target`, and any extra columns) in a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: X[:, j] for j, name in enumerate(FEATURES[: X.shape[1]])}
    if y is not None:
        columns[target] = y
    columns.update(extra_columns)
    pq.write_table(pa.table(columns), path)
    return str(path)


def write_text(path, text) -> str:
    path.write_text(text)
    return str(path)


def run(*args) -> Result:
    """`softmaxce ARGS` in this process (click's CliRunner), stdout and stderr kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_png(path, min_size=(100, 100)) -> None:
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()  # checks the chunks and CRCs
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        im.load()


def assert_bad_data(result, *fragments) -> None:
    """Exit status 2, exactly one line on stderr, naming everything in `fragments`, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output


def no_temp_files(directory) -> list[str]:
    return [name for name in os.listdir(directory) if ".tmp" in name]
