"""The arrays a numba kernel takes besides the logits, targets and gradient, as the engine prepares them
for reduction "none": shared by the kernel tests (tests/core/test_small.py, test_axis1.py, test_half.py)."""

from __future__ import annotations

import numba
import numpy as np

import softmaxce


def kernel_arrays(
    P, *, weight=None, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=None, stats=False
):
    """((weight, eps, lam, cap, ignore_index, coef), (loss, lse, argmax, entropy)) for P positions.

    The weight is float64 or empty (no class weights), coef the upstream gradient (ones by default) as
    float64 (P,), or (1,) for a scalar grad_output (one coefficient for every position, as the engine
    passes a "mean" or "sum" loss's); the outputs are fresh, argmax and entropy empty unless `stats`."""
    w = np.empty(0) if weight is None else np.asarray(weight, np.float64)
    if grad_output is None:
        coef = np.ones(P)
    elif np.ndim(grad_output) == 0:  # one coefficient for every position, as the engine passes it
        coef = np.full(1, float(grad_output))
    else:
        coef = np.asarray(grad_output, np.float64).reshape(P)
    outputs = np.empty(P), np.empty(P), np.empty(P if stats else 0, np.int64), np.empty(P if stats else 0)
    return (w, label_smoothing, z_loss, softcap or 0.0, ignore_index, coef), outputs


def serial_one_thread_and_parallel(run, *args, **kwargs):
    """(run(..., parallel=False) on 1 thread, run(..., parallel=True) on 2 threads where numba has them),
    for the bit-for-bit comparison of the two; the thread count is restored afterwards."""
    before = softmaxce.get_num_threads()
    try:
        softmaxce.set_num_threads(1)
        one = run(*args, parallel=False, **kwargs)
        softmaxce.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = run(*args, parallel=True, **kwargs)
    finally:
        softmaxce.set_num_threads(before)
    return one, two
