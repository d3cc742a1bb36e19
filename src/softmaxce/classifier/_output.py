"""The output layer: z = h W_out + b_out, its softmax cross-entropy, and the gradients it sends back.

    loss, dJ/dz = softmaxce's cross-entropy and its exact gradient (s_n (a_n - y_n) / sum s per row)
    dJ/dW_out = h^T dJ/dz,   dJ/db_out = sum_n dJ/dz,   dJ/dh = dJ/dz W_out^T

The loss is computed by the engine behind `softmaxce.cross_entropy_and_grad` on the batch's
logits, or by the fused head behind `softmaxce.linear_cross_entropy_and_grad`, which forms the
logits a chunk of rows at a time (for many classes). Every option travels in one `CEOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .. import _engine, _fused
from .._options import CEOptions
from ._network import NetworkParameters

__all__ = ["CHUNK_ELEMENTS", "FUSED_HEAD_MIN_CLASSES", "OutputLoss", "chunk_rows"]

FUSED_HEAD_MIN_CLASSES = 4096  # fused_head="auto" uses the fused head from this many classes on
CHUNK_ELEMENTS = 2**22  # predict() and the fused training head form at most this many logits at a time


def chunk_rows(n_classes: int) -> int:
    """Rows per chunk so that a chunk's logits hold at most CHUNK_ELEMENTS numbers."""
    return max(1, CHUNK_ELEMENTS // max(1, n_classes))


@dataclass(frozen=True)
class OutputLoss:
    """The output layer's loss for one fit: softmaxce's options, class weights, logits or fused path."""

    options: CEOptions
    class_weight: np.ndarray | None
    fused: bool
    chunk_size: int  # rows per chunk of the fused head

    def backward(self, h, target: np.ndarray, grad_output, network: NetworkParameters) -> tuple:
        """(loss, dJ/dh) for the last hidden output h; writes the output layer's gradients into
        `network`. dJ/dh is None when there is no hidden layer (logits path)."""
        if self.fused:
            x = np.ascontiguousarray(h.toarray() if sp.issparse(h) else h, dtype=network.dtype)
            r = _fused.forward_linear(
                x,
                network.out_weight,
                target,
                network.intercepts[-1],
                self.class_weight,
                self.options,
                self.chunk_size,
                want_grad=True,
                want_stats=False,
                grad_output=grad_output,
            )
            network.grad_out_weight[...] = r.grad_weight  # (V, D): the transpose of dJ/dcoefs_[-1]
            network.grad_intercepts[-1][...] = r.grad_bias
            return r.loss, r.grad_x
        z = h @ network.coefs[-1]
        z += network.intercepts[-1]
        r = _engine.forward_logits(
            z, target, self.class_weight, self.options, want_grad=True, want_stats=False, grad_output=grad_output, out=z
        )
        delta = r.grad_logits  # dJ/dz (n, V), written over z
        if sp.issparse(h):
            network.grad_out_weight[...] = (h.T @ delta).T
        else:
            np.matmul(delta.T, h, out=network.grad_out_weight)  # (V, D) = delta^T h
        np.sum(delta, axis=0, out=network.grad_intercepts[-1])
        return r.loss, (delta @ network.coefs[-1].T if len(network.coefs) > 1 else None)
