"""Option grids the tests parametrize over: keys are the test ids, "w" stands for class weights that
each test draws for its class count."""

from __future__ import annotations

# the class-index kernels (tests/core/test_small.py, test_half.py): ignored classes included
KERNEL_OPTIONS = {
    "plain": {},
    "ignore-weight": {"ignore_index": 1, "weight": "w"},
    "smooth": {"label_smoothing": 0.2},
    "smooth-weight": {"label_smoothing": 0.1, "weight": "w", "ignore_index": 0},
    "zloss": {"z_loss": 1e-3},
    "softcap": {"softcap": 5.0},
    "everything": {"label_smoothing": 0.1, "weight": "w", "ignore_index": 2, "z_loss": 1e-3, "softcap": 4.0},
}

# the NumPy front ends over index, probability and sparse targets (tests/core/test_fused.py, test_sparse.py)
FRONT_END_OPTIONS = {
    "plain": {},
    "weight": {"weight": "w"},
    "smooth": {"label_smoothing": 0.2},
    "weight-smooth": {"weight": "w", "label_smoothing": 0.1},
    "zloss": {"z_loss": 1e-2},
    "softcap": {"softcap": 3.0},
    "all": {"weight": "w", "label_smoothing": 0.15, "z_loss": 1e-2, "softcap": 4.0},
}
