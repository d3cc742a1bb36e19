"""`softmaxce gradcheck`: the analytic gradients of a softmax layer against finite differences."""

from __future__ import annotations

import math
import sys
from typing import Any

import click
import numpy as np

from .. import cross_entropy_and_grad, linear_cross_entropy_and_grad
from ._app import CONTEXT, one_line_errors, quiet_option
from ._finite_diff import fd_entry, reference_loss

__all__ = ["gradcheck", "layer_gradcheck"]


@click.command(context_settings=CONTEXT)
@click.option("--classes", default=10, type=click.IntRange(2), help="Number of classes C.")
@click.option("--batch", default=8, type=click.IntRange(1), help="Number of positions N.")
@click.option("--features", default=6, type=click.IntRange(1), help="Input size D.")
@click.option("--seed", default=0, type=int, help="Random seed of W, b, x and the targets.")
@click.option(
    "--dtype",
    type=click.Choice(["float64", "float32"]),
    default="float64",
    help="Precision of the analytic gradient (finite differences are always float64).",
)
@click.option("--reduction", type=click.Choice(["mean", "sum"]), default="mean")
@click.option("--label-smoothing", default=0.0, type=click.FloatRange(0, 1))
@click.option(
    "--max-entries",
    default=400,
    type=click.IntRange(1),
    help="Entries checked per tensor (a random sample when the tensor is larger).",
)
@click.option(
    "--tol",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Largest allowed max|error| / max|gradient| (default 1e-7 for float64, 1e-5 for float32).",
)
@quiet_option
@one_line_errors
def gradcheck(
    classes: int,
    batch: int,
    features: int,
    seed: int,
    dtype: str,
    reduction: str,
    label_smoothing: float,
    max_entries: int,
    tol: float | None,
    quiet: bool,
) -> None:
    """Check the analytic gradient of a softmax layer z = W x + b against finite differences.

    The loss is the softmax cross-entropy of z; its analytic gradients are dL/dz = a - y (scaled
    by 1/N for --reduction mean), dL/dW = dz^T x, dL/db = sum_n dz, dL/dx = dz W. Each is compared
    with 4th-order central finite differences of the loss in float64; the fused head
    (`linear_cross_entropy_and_grad`, which never forms the logits) is checked the same way. Prints
    a table of max errors and exits with status 1 when any error exceeds --tol.

    \b
    Examples:
      softmaxce gradcheck
      softmaxce gradcheck --classes 1000 --batch 32 --features 16 --seed 3
      softmaxce gradcheck --dtype float32 --label-smoothing 0.1
    """
    tol = tol if tol is not None else (1e-7 if dtype == "float64" else 1e-5)
    rows = layer_gradcheck(
        classes,
        batch,
        features,
        seed=seed,
        dtype=np.dtype(dtype),
        reduction=reduction,
        label_smoothing=label_smoothing,
        max_entries=max_entries,
    )
    if not quiet:
        click.echo(
            f"softmax layer z = W x + b: N={batch} positions, D={features} features, C={classes} classes, "
            f"{dtype} analytic gradient, reduction={reduction}, label_smoothing={label_smoothing}"
        )
        click.echo(
            f"{'quantity':<18}{'shape':<14}{'checked':>8}{'max|ours-ref|':>18}{'max|ref|':>11}{'scaled':>10}  status"
        )
        click.echo("(ref: a float64 NumPy loss written from the math, and its 4th-order central finite differences)")
    worst = 0.0
    for r in rows:
        scaled = r["max_err"] / max(r["max_fd"], 1e-300)
        worst = max(worst, scaled)
        if not quiet:
            ok = click.style("ok", fg="green") if scaled <= tol else click.style("FAIL", fg="red", bold=True)
            click.echo(
                f"{r['name']:<18}{str(r['shape']):<14}{r['checked']:>8}{r['max_err']:>18.2e}"
                f"{r['max_fd']:>11.2e}{scaled:>10.1e}  {ok}"
            )
    if worst > tol:
        click.echo(f"FAILED: largest scaled error {worst:.1e} exceeds the tolerance {tol:.0e}", err=True)
        sys.exit(1)
    click.echo(f"passed: largest scaled error {worst:.1e} <= tolerance {tol:.0e}")


def layer_gradcheck(
    C: int,
    N: int,
    D: int,
    *,
    seed: int,
    dtype: np.dtype,
    reduction: str,
    label_smoothing: float,
    max_entries: int,
) -> list[dict[str, Any]]:
    """Analytic gradients of CE(W x + b, y) (plain and fused head) vs float64 finite differences.

    Returns one row per quantity: name, shape, checked (entries compared), max_err, max_fd.
    """
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((C, D)) / math.sqrt(D)  # (C, D)
    b = 0.1 * rng.standard_normal(C)  # (C,)
    x = rng.standard_normal((N, D))  # (N, D)
    y = rng.integers(0, C, N)  # (N,)
    opts = {"reduction": reduction, "label_smoothing": label_smoothing}

    def loss64(W_: np.ndarray, b_: np.ndarray, x_: np.ndarray) -> float:
        return reference_loss(x_ @ W_.T + b_, y, **opts)

    z = x @ W.T + b  # (N, C)
    loss, dz = cross_entropy_and_grad(z.astype(dtype), y, **opts)
    loss_ref = loss64(W, b, x)
    dz = dz.astype(np.float64)  # dL/dz = a - y (over N for "mean")
    analytic = {"dL/dz": dz, "dL/dW": dz.T @ x, "dL/db": dz.sum(axis=0), "dL/dx": dz @ W}
    fds = {
        "dL/dz": lambda idx: fd_entry(lambda zz: reference_loss(zz, y, **opts), z, idx),
        "dL/dW": lambda idx: fd_entry(lambda WW: loss64(WW, b, x), W, idx),
        "dL/db": lambda idx: fd_entry(lambda bb: loss64(W, bb, x), b, idx),
        "dL/dx": lambda idx: fd_entry(lambda xx: loss64(W, b, xx), x, idx),
    }
    samples = {name: _sample_indices(g.shape, max_entries, rng) for name, g in analytic.items()}
    fd_values = {name: np.array([fds[name](idx) for idx in samples[name]]) for name in analytic}
    rows = [_err_row("loss L", (), np.array([float(loss)]), np.array([loss_ref]))]
    for name, g in analytic.items():
        got = np.array([g[idx] for idx in samples[name]])
        rows.append(_err_row(name, g.shape, got, fd_values[name]))
    lin_loss, gx, gW, gb = linear_cross_entropy_and_grad(
        x.astype(dtype), W.astype(dtype), y, bias=b.astype(dtype), **opts
    )
    rows.append(_err_row("fused loss L", (), np.array([float(lin_loss)]), np.array([loss_ref])))
    for name, g in (("fused dL/dW", gW), ("fused dL/db", gb), ("fused dL/dx", gx)):
        key = name.split()[1]
        got = np.array([np.float64(g[idx]) for idx in samples[key]])
        rows.append(_err_row(name, g.shape, got, fd_values[key]))
    return rows


def _err_row(name: str, shape: tuple[int, ...], got: np.ndarray, fd: np.ndarray) -> dict[str, Any]:
    return {
        "name": name,
        "shape": tuple(shape),
        "checked": len(fd),
        "max_err": float(np.max(np.abs(got - fd))),
        "max_fd": float(np.max(np.abs(fd))),
    }


def _sample_indices(shape: tuple[int, ...], limit: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= limit else np.sort(rng.choice(size, limit, replace=False))
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]
