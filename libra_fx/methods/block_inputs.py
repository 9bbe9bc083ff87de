"""Block inputs as located ``(B, L, D)`` values and gradients: what FullGrad+ and the CAMs read."""
from __future__ import annotations

import torch

from ..context import Context, run_graph
from ..errors import LibraError
from ..geometry import locations
from ..runner import FullGradTerms


def block_terms(ctx: Context, last_only: bool = False) -> tuple[FullGradTerms, list[tuple]]:
    """FullGrad terms plus (value, grad, (h, w)) of each block input as ``(B, L, D)`` located tensors."""
    nodes = ctx.block_nodes(last_only)
    terms = run_graph(ctx, ctx.inputs, ctx.target, taps=nodes, bias=True)
    located = []
    for value, grad in terms.taps:
        grad = grad if grad is not None else torch.zeros_like(value)
        lv, lg = locations(value, ctx.geo), locations(grad, ctx.geo)
        if lv is None:
            raise LibraError(f"block input of shape {tuple(value.shape)} is not a token sequence or a "
                             "feature map; pass grid_size=/num_prefix_tokens= or other blocks=")
        located.append((lv[0], lg[0], lv[1]))
    return terms, located


def as_grid(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, L)`` per-location values as a ``(B, h, w)`` piece."""
    return cam.reshape(cam.shape[0], *size)


def blocks_used(ctx: Context, last_only: bool) -> list[str]:
    """Module paths of the blocks a method read."""
    return [b.name for b in (ctx.blocks[-1:] if last_only else ctx.blocks)]
