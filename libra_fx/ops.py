"""The two LibraGrad operators (spec §2). They change only the backward pass.

Both are plain functions so that a rewritten ``torch.fx`` graph shows each use as one readable
node (``const(q)``, ``swap_backward(gelu, mul)``), and so that ``torch.compile`` can inline them.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["const", "swap_backward", "scale_grad", "block_gradient", "contiguous_grad", "LIBRA_OPS"]


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


class _BlockGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return None


def block_gradient(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``const(x)`` that still *requires* grad when ``x`` does: value ``x``, Jacobian zero.

    Some kernels pick their algorithm from ``requires_grad``: CPU ``scaled_dot_product_attention``
    with an attention mask that requires grad takes another path than with a detached one, and the
    results differ in the last bit. A mask built from parameters (a relative-position MLP) is
    therefore blocked with this instead of ``const``, keeping the forward bit-identical.

    Args:
        x: any tensor, or ``None`` (an optional mask argument left at its default).

    Returns:
        ``x`` (a view of it) whose gradient is never propagated; ``None`` for ``None``.

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> y = block_gradient(x); y.requires_grad
        True
        >>> (x + y).sum().backward(); x.grad
        tensor([1., 1.])
    """
    return None if x is None else _BlockGradient.apply(x)


class _ContiguousGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous() if grad.device.type == "cpu" else grad


def contiguous_grad(x: torch.Tensor) -> torch.Tensor:
    """Identity whose backward hands a contiguous gradient to the op before it (on CPU).

    PyTorch's CPU eval-mode ``batch_norm`` backward returns a wrong input gradient at batch size 1
    when the incoming gradient is strided like a transposed ``(B, N, C)`` token tensor (XCiT's
    convolutional patch embedding followed by ``flatten(2).transpose(1, 2)``: errors of order 10);
    a contiguous gradient gives the right one. The transform puts this after every eval
    ``batch_norm``; forward values are untouched.

    Args:
        x: any tensor.

    Returns:
        ``x`` (a view of it).

    Example:
        >>> x = torch.randn(1, 4, 2, 2, requires_grad=True)
        >>> torch.equal(contiguous_grad(x), x)
        True
    """
    return _ContiguousGrad.apply(x)


LIBRA_OPS = (const, swap_backward, scale_grad, block_gradient, contiguous_grad)

# Their op schemas (libra_fx.opset): at the end, because opset imports this module back.
from .opset import Kind, register_function  # noqa: E402

register_function(Kind.CONST, view=True)(const)
register_function(Kind.CONST, name="const")(block_gradient)
register_function(Kind.SWAP, gradient_arg="backward")(swap_backward)
register_function(Kind.SCALE)(scale_grad)
register_function(Kind.STRUCTURAL, name="identity")(contiguous_grad)
