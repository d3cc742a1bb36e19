"""SoftmaxClassifier against scikit-learn and PyTorch: fit time, accuracy, peak memory.

Every contender runs with 1 BLAS thread (threadpoolctl), softmaxce.set_num_threads(1) and
torch.set_num_threads(1), in the same process and run. Problems:

- digits (load_digits, 80/20 split, random_state=0): SoftmaxClassifier() defaults,
  MLPClassifier(hidden_layer_sizes=(100,), random_state=0), LogisticRegression, and a PyTorch MLP of
  the same size (64-100-10, Adam, batch 200, MLPClassifier's stopping rule). Fit time is the median
  of --repeats runs; the target is accuracy >= 0.975 at <= 0.5x MLPClassifier's fit time.
- 1000 classes (synthetic Gaussian clusters): SoftmaxClassifier vs MLPClassifier, a few epochs.
- 100k classes (synthetic): SoftmaxClassifier with the fused head vs its logits path (and
  MLPClassifier unless --quick), one epoch of partial_fit(classes=all 100k) over 2000 samples.
Peak memory is tracemalloc's peak of the NumPy allocations made during the fit (not for PyTorch).

Prints a table and writes benchmarks/results/classifier.csv.
Usage: python benchmarks/bench_classifier.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

import softmaxce
from _common import write_csv  # benchmarks/_common.py (this folder is on sys.path)
from softmaxce.classifier import SoftmaxClassifier

RESULTS = Path(__file__).parent / "results" / "classifier.csv"


def _timed(fit, repeats) -> tuple[float, object]:
    times, model = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        model = fit()
        times.append(time.perf_counter() - t)
    return statistics.median(times), model


def _peak_mib(fit) -> tuple[float, object]:
    tracemalloc.start()
    try:
        model = fit()
        return tracemalloc.get_traced_memory()[1] / 2**20, model
    finally:
        tracemalloc.stop()


class TorchMLP:
    """A PyTorch 64-100-10 ReLU MLP trained as MLPClassifier trains (Adam 1e-3, batch 200, L2 1e-4,
    stop when the epoch loss has not improved by 1e-4 for 10 epochs)."""

    def __init__(self, hidden=100, lr=1e-3, alpha=1e-4, max_iter=200, seed=0) -> None:
        self.hidden, self.lr, self.alpha, self.max_iter, self.seed = hidden, lr, alpha, max_iter, seed

    def fit(self, X, y) -> TorchMLP:
        import torch

        torch.manual_seed(self.seed)
        Xt = torch.as_tensor(X, dtype=torch.float64)
        yt = torch.as_tensor(y, dtype=torch.int64)
        C = int(yt.max()) + 1
        self.net = torch.nn.Sequential(
            torch.nn.Linear(X.shape[1], self.hidden), torch.nn.ReLU(), torch.nn.Linear(self.hidden, C)
        ).double()
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        n, best, stall = len(yt), np.inf, 0
        for epoch in range(1, self.max_iter + 1):
            self.n_iter_ = epoch
            total = 0.0
            for idx in torch.randperm(n, generator=g).split(200):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(self.net(Xt[idx]), yt[idx])
                l2 = sum((p**2).sum() for name, p in self.net.named_parameters() if name.endswith("weight"))
                loss = loss + 0.5 * self.alpha * l2 / len(idx)
                loss.backward()
                opt.step()
                total += float(loss) * len(idx)
            total /= n
            stall = stall + 1 if total > best - 1e-4 else 0
            best = min(best, total)
            if stall > 10:
                break
        return self

    def score(self, X, y) -> float:
        import torch

        with torch.no_grad():
            pred = self.net(torch.as_tensor(X, dtype=torch.float64)).argmax(1).numpy()
        return float(np.mean(pred == y))


def digits(repeats, rows) -> None:
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
    contenders = {
        "SoftmaxClassifier()": lambda: SoftmaxClassifier(random_state=0).fit(Xtr, ytr),
        "MLPClassifier((100,))": lambda: MLPClassifier(hidden_layer_sizes=(100,), random_state=0).fit(Xtr, ytr),
        "LogisticRegression": lambda: LogisticRegression(max_iter=5000).fit(Xtr, ytr),
    }
    try:
        import torch

        torch.set_num_threads(1)
        contenders["PyTorch MLP 64-100-10"] = lambda: TorchMLP().fit(Xtr, ytr)
    except ImportError:
        pass
    contenders["SoftmaxClassifier()"]()  # warm up numba's kernels (compiled and cached on first call)
    timings = {}
    for name, fit in contenders.items():
        timings[name] = _timed(fit, repeats)
    base = timings["MLPClassifier((100,))"][0]
    for name, (t, model) in timings.items():
        rows.append(
            dict(
                problem="digits",
                model=name,
                fit_s=t,
                ratio_vs_mlp=t / base,
                test_accuracy=model.score(Xte, yte),
                n_iter=getattr(model, "n_iter_", ""),
                peak_mib="",
            )
        )


def _clusters(n, n_classes, d, seed=0, noise=0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, d))
    y = (
        rng.integers(0, n_classes, n)
        if n < n_classes
        else np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    )
    X = centers[y] + noise * rng.standard_normal((n, d))
    return X, y


def synthetic(name, n, n_classes, d, contenders, rows, *, one_epoch=False) -> None:
    """fit(X, y); with one_epoch, partial_fit(X, y, classes=all n_classes) (n may be < n_classes)."""
    X, y = _clusters(n, n_classes, d)
    classes = np.arange(n_classes)
    base = None
    for label, make in contenders.items():

        def fit(make=make) -> object:
            return make().partial_fit(X, y, classes=classes) if one_epoch else make().fit(X, y)

        t0 = time.perf_counter()
        peak, model = _peak_mib(fit)
        t = time.perf_counter() - t0
        base = base or t
        rows.append(
            dict(
                problem=name,
                model=label,
                fit_s=t,
                ratio_vs_mlp="",
                test_accuracy=model.score(X[:2000], y[:2000]),
                n_iter=model.n_iter_,
                peak_mib=peak,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip MLPClassifier on 100k classes")
    args = parser.parse_args()
    softmaxce.set_num_threads(1)
    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.simplefilter("ignore", UserWarning)  # sklearn: "more unique classes than 50% of samples"
    rows = []
    with threadpool_limits(1):
        digits(args.repeats, rows)
        synthetic(
            "1000 classes (n=20000, d=32, 5 epochs)",
            20_000,
            1000,
            32,
            {
                "SoftmaxClassifier((64,))": lambda: SoftmaxClassifier((64,), max_iter=5, random_state=0),
                "MLPClassifier((64,))": lambda: MLPClassifier((64,), max_iter=5, random_state=0),
            },
            rows,
        )
        big = {
            "SoftmaxClassifier((), fused head)": lambda: SoftmaxClassifier(
                (), max_iter=1, random_state=0, learning_rate_init=0.05
            ),
            "SoftmaxClassifier((), logits path)": lambda: SoftmaxClassifier(
                (), max_iter=1, random_state=0, learning_rate_init=0.05, fused_head=False
            ),
        }
        if not args.quick:
            big["MLPClassifier(())"] = lambda: MLPClassifier((), max_iter=1, random_state=0, learning_rate_init=0.05)
        synthetic("100k classes (n=2000, d=16, 1 epoch)", 2000, 100_000, 16, big, rows, one_epoch=True)

    header = f"{'problem':40} {'model':36} {'fit s':>9} {'vs MLP':>7} {'accuracy':>9} {'epochs':>6} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['ratio_vs_mlp']:.2f}x" if r["ratio_vs_mlp"] != "" else ""
        peak = f"{r['peak_mib']:.1f}" if r["peak_mib"] != "" else ""
        print(
            f"{r['problem']:40} {r['model']:36} {r['fit_s']:9.3f} {ratio:>7} {r['test_accuracy']:9.4f} "
            f"{r['n_iter']!s:>6} {peak:>9}"
        )
    write_csv(rows, RESULTS)


if __name__ == "__main__":
    main()
