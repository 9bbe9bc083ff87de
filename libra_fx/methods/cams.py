"""Class activation maps at block inputs: GradCAM, HiResCAM and their every-block sums."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..context import Context
from .block_inputs import as_grid, block_terms, blocks_used
from .registry import Partial, register


def _gradcam_weights(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g.mean(1, keepdim=True)


def _xgradcam_weights(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    magnitude = h.abs()
    return (g * magnitude).sum(1, keepdim=True) / magnitude.sum(1, keepdim=True).clamp_min(1e-12)


def cam(ctx: Context, weights: Optional[Callable], last_only: bool) -> Partial:
    """Σ_d w_d·h_d per location at block inputs (``weights=None``: HiResCAM's elementwise g⊙h)."""
    terms, located = block_terms(ctx, last_only)
    pieces = []
    for h, g, size in located:
        w = g if weights is None else weights(h, g)
        pieces.append(as_grid((w * h).sum(-1), size))
    return Partial(terms.score, pieces, blocks=blocks_used(ctx, last_only))


@register("gradcam")
def gradcam(ctx: Context) -> Partial:
    """GradCAM at the last block input: weights = token-mean of the gradient (no ReLU: signed)."""
    return cam(ctx, _gradcam_weights, last_only=True)


@register("hirescam")
def hirescam(ctx: Context) -> Partial:
    """HiResCAM: h⊙∇h at the last block input, summed over the hidden dimension."""
    return cam(ctx, None, last_only=True)


@register("gradcam+")
def gradcam_plus(ctx: Context) -> Partial:
    """GradCAM summed over every block input."""
    return cam(ctx, _gradcam_weights, last_only=False)


@register("xgradcam+")
def xgradcam_plus(ctx: Context) -> Partial:
    """XGradCAM (weights Σ_t ∇h·|h| / Σ_t |h|) summed over every block input."""
    return cam(ctx, _xgradcam_weights, last_only=False)
