"""PyTorch front ends: change one import, keep your code.

    import softmaxce.torch as sce
    loss = sce.cross_entropy(logits, target)                 # torch.nn.functional.cross_entropy
    loss = sce.linear_cross_entropy(h, W, target)            # torch.nn.functional.linear_cross_entropy
    crit = sce.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-4)

Same signatures, results, gradients and errors as PyTorch 2.13, plus keyword-only z_loss, softcap
and backend (and inplace_backward for cross_entropy). float32/float64 CPU tensors run on softmaxce's
NumPy/numba engine without copies (bfloat16/float16 CPU logits of cross_entropy too, read and
written as 16-bit values); CUDA tensors on Triton kernels (`_triton/`, the `[gpu]` extra);
everything else on the same chunked algorithm in torch ops with float32 accumulation. The ops are
torch.library custom ops, so models using them work under torch.compile(fullgraph=True); second
derivatives, torch.func and autocast behave as PyTorch's.

Layers: the front ends (`_functional.py`, `_modules.py`, `distributed.py`) validate and reshape; the
ops (`_ops.py`) dispatch to the NumPy engine or to the chunked torch path (`_chunked.py`, and
`_vocab_parallel.py` for the sharded head); the row math in torch primitives is `_rowmath.py`."""

from .._extras import require

require("torch", "torch")  # one ImportError naming the extra, before anything imports torch

from .._sparse import register_torch_pytree  # noqa: E402
from ._functional import cross_entropy, linear_cross_entropy  # noqa: E402
from ._modules import CrossEntropyLoss, LinearCrossEntropyLoss  # noqa: E402

register_torch_pytree()  # SparseTarget as a pytree node (torch.compile, torch.func)

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss", "cross_entropy", "linear_cross_entropy"]
