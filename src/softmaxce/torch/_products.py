"""The fused head's three matrix products on torch's BLAS, for calls that come through softmaxce.torch.

The NumPy engine (`softmaxce._fused.forward_linear`) forms each chunk's logits and gradients with
three products; by default on scipy's BLAS. Inside a torch program that would start a second BLAS
thread pool beside torch's own, and the two contend for the cores (a small training step measured
up to 2x slower than torch eager). Here the same products run as torch.mm on zero-copy views of the
NumPy arrays (`torch.from_numpy`), in torch's pool and thread count:

    logits:          out (n, V)  = xc (n, D) @ W (V, D)^T
    grad_x:          out (n, D)  = G (n, V) @ W (V, D)
    grad_weight:     gW  (V, D) += G (n, V)^T @ xc (n, D)     (in place: addmm_, beta = 1; the first
                                                               chunk writes gW: mm)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TorchProducts"]


class TorchProducts:
    """`softmaxce._fused.ScipyProducts`'s three methods on torch's BLAS (the arrays are shared, not copied)."""

    def logits(self, xc: np.ndarray, W: np.ndarray, out: np.ndarray) -> None:
        torch.mm(torch.from_numpy(xc), torch.from_numpy(W).T, out=torch.from_numpy(out))

    def grad_x(self, G: np.ndarray, W: np.ndarray, out: np.ndarray) -> None:
        torch.mm(torch.from_numpy(G), torch.from_numpy(W), out=torch.from_numpy(out))

    def grad_weight(self, G: np.ndarray, xc: np.ndarray, gW: np.ndarray, accumulate: bool) -> None:
        if accumulate:
            torch.from_numpy(gW).addmm_(torch.from_numpy(G).T, torch.from_numpy(xc))
        else:
            torch.mm(torch.from_numpy(G).T, torch.from_numpy(xc), out=torch.from_numpy(gW))
