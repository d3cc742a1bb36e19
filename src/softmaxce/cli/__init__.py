"""The `softmaxce` command line (needs the `[cli]` extra): demo, train, predict, evaluate, gradcheck.

`main` is the click group (console script `softmaxce`, and `python -m softmaxce`). Each command
lives in its own module; the helpers they share sit below them:

- `_app`: the group, one-line errors (exit status 2), --quiet, JSON output;
- `_data` and `_csv`: CSV, Parquet and .npz input (pyarrow), errors naming file, row and column;
- `_model`: building, training, loading and predicting with `SoftmaxClassifier`;
- `_finite_diff`: the float64 reference loss and finite differences (`gradcheck`, `demo`);
- `_plots`: the PNGs (matplotlib, Agg).
"""

from .._extras import require

require("cli", "click", "tqdm", "matplotlib", "pyarrow", "sklearn")

from ._app import main  # noqa: E402
from ._demo import demo  # noqa: E402
from ._evaluate import evaluate  # noqa: E402
from ._gradcheck import gradcheck  # noqa: E402
from ._predict import predict  # noqa: E402
from ._train import train  # noqa: E402

for _command in (demo, train, predict, evaluate, gradcheck):
    main.add_command(_command)

__all__ = ["main"]
