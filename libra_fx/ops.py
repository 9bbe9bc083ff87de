"""The two LibraGrad operators (spec §2). They change only the backward pass.

Both are plain functions so that a rewritten ``torch.fx`` graph shows each use as one readable
node (``const(q)``, ``swap_backward(gelu, mul)``), and so that ``torch.compile`` can inline them.
"""
from __future__ import annotations

import torch

__all__ = ["const", "swap_backward", "scale_grad", "LIBRA_OPS"]


def const(x: torch.Tensor) -> torch.Tensor:
    """Value ``x``, Jacobian zero: ``[x]cst`` in the paper's notation.

    Args:
        x: any tensor.

    Returns:
        ``x.detach()``; bit-identical to ``x``.

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> (x * const(x)).sum().backward(); x.grad
        tensor([1., 1.])
    """
    return x.detach()


def swap_backward(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Value of ``forward``, Jacobian of ``backward``: ``forward.detach() + (backward - backward.detach())``.

    The forward value is bit-identical to ``forward`` as long as ``backward`` is finite (the added
    term is an exact zero).

    Args:
        forward: the tensor whose value is returned.
        backward: a tensor of the same shape whose gradient is used.

    Returns:
        A tensor equal to ``forward`` whose gradient flows into ``backward``'s graph only.

    Example:
        >>> x = torch.tensor([2.0], requires_grad=True)
        >>> swap_backward(x ** 2, 3 * x).backward(); x.grad
        tensor([3.])
    """
    return forward.detach() + (backward - backward.detach())


def scale_grad(product: torch.Tensor, scale: float) -> torch.Tensor:
    """``swap_backward(p, p * scale)``: the value of ``p`` with its gradient scaled.

    Used for a product of k input-dependent factors with ``scale = 1/k`` (spec §3), which restores
    FullGrad-completeness (the paper's proposition on products).

    Args:
        product: the product tensor ``p``.
        scale: the factor applied to the gradient.

    Returns:
        ``p`` in value; ``scale * dp`` in gradient.

    Example:
        >>> a = torch.tensor([3.0], requires_grad=True); b = torch.tensor([4.0], requires_grad=True)
        >>> scale_grad(a * b, 0.5).backward(); a.grad, b.grad
        (tensor([2.]), tensor([1.5000]))
    """
    return swap_backward(product, product * scale)


LIBRA_OPS = (const, swap_backward, scale_grad)
