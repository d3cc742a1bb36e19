"""tests/cli: puts this folder on sys.path so test files can `import _cli_helpers`, and trains the
model that the predict / evaluate tests share."""

from __future__ import annotations

import pathlib
import sys

import pytest

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _cli_helpers import blobs, run, write_csv  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained once by `softmaxce train` on string-labelled blobs, plus its data files."""
    d = tmp_path_factory.mktemp("trained")
    X, y = blobs()
    data = write_csv(d / "train.csv", X, y)
    model = str(d / "model.npz")
    args = ["--hidden", "16", "--epochs", "15", "--batch-size", "16", "--lr", "0.01", "--out", model, "-q"]
    result = run("train", data, "--target", "label", *args, "--metrics", d / "metrics.json", "--plots", d / "plots")
    assert result.exit_code == 0, result.output
    return {"dir": d, "data": data, "model": model, "X": X, "y": y}
