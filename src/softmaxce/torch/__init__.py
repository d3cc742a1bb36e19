"""PyTorch front ends: change one import, keep your code.

    import softmaxce.torch as sce
    loss = sce.cross_entropy(logits, target)                 # torch.nn.functional.cross_entropy
    loss = sce.linear_cross_entropy(h, W, target)            # torch.nn.functional.linear_cross_entropy
    crit = sce.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-4)

Same signatures, results, gradients and errors as PyTorch 2.13, plus keyword-only z_loss and
softcap. float32/float64 CPU tensors run on softmaxce's NumPy/numba engine without copies; float16,
bfloat16 and other devices run the same chunked algorithm in torch ops with float32 accumulation.
The ops are torch.library custom ops, so models using them work under torch.compile(fullgraph=True).
"""

from ._functional import cross_entropy, linear_cross_entropy
from ._modules import CrossEntropyLoss, LinearCrossEntropyLoss

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss", "cross_entropy", "linear_cross_entropy"]
