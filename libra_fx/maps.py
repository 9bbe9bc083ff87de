"""Token, patch and pixel map utilities shared by attribution methods and metrics.

Shapes used throughout: ``B`` batch, ``T`` tokens (prefix + patches), ``N`` patch
tokens, ``D`` hidden size, ``C`` channels, ``(H, W)`` a spatial grid.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "token_scores",
    "tokens_to_grid",
    "upsample_map",
    "pixel_scores",
    "patch_scores",
]

Size2 = Union[int, Sequence[int]]

# align_corners is only meaningful (and only accepted) for the interpolating modes.
_ALIGN_CORNERS = {
    "nearest": None,
    "nearest-exact": None,
    "area": None,
    "bilinear": False,
    "bicubic": False,
}


def _pair(size: Size2) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def token_scores(hidden_attr: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Per-token relevance: signed sum over the hidden dimension, prefix tokens dropped.

    Args:
        hidden_attr: ``(B, T, D)`` per-feature attribution of a token sequence
            (e.g. ``h * grad_h`` at a block input).
        num_prefix_tokens: number of leading non-patch tokens (CLS, registers,
            distillation token) to drop. timm exposes it as ``model.num_prefix_tokens``.

    Returns:
        ``(B, N)`` tensor, ``N = T - num_prefix_tokens``.

    Example::

        >>> h = torch.randn(2, 1 + 196, 192)
        >>> token_scores(h, num_prefix_tokens=1).shape
        torch.Size([2, 196])
    """
    if hidden_attr.dim() != 3:
        raise ValueError(f"expected (B, T, D), got shape {tuple(hidden_attr.shape)}")
    if not 0 <= num_prefix_tokens < hidden_attr.shape[1]:
        raise ValueError(
            f"num_prefix_tokens={num_prefix_tokens} leaves no patch tokens out of {hidden_attr.shape[1]}"
        )
    # Signed on purpose: the paper's token scores keep negative evidence.
    return hidden_attr[:, num_prefix_tokens:].sum(dim=-1)


def tokens_to_grid(scores: torch.Tensor, grid_size: Optional[Size2] = None) -> torch.Tensor:
    """Reshape per-patch scores ``(B, N)`` to the patch grid ``(B, H, W)`` (row-major).

    Args:
        scores: ``(B, N)`` patch scores in raster order (the order ViT patch embeddings use).
        grid_size: ``int`` or ``(H, W)``; when ``None`` the grid must be square and
            ``H = W = sqrt(N)``.

    Returns:
        ``(B, H, W)`` tensor sharing storage with ``scores`` when possible.

    Example::

        >>> tokens_to_grid(torch.randn(2, 196)).shape
        torch.Size([2, 14, 14])
        >>> tokens_to_grid(torch.randn(2, 12), grid_size=(3, 4)).shape
        torch.Size([2, 3, 4])
    """
    if scores.dim() != 2:
        raise ValueError(f"expected (B, N), got shape {tuple(scores.shape)}")
    n = scores.shape[1]
    if grid_size is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} tokens do not form a square grid; pass grid_size=(H, W)")
        grid_size = side
    h, w = _pair(grid_size)
    if h * w != n:
        raise ValueError(f"grid {h}x{w} does not hold {n} tokens")
    return scores.reshape(scores.shape[0], h, w)


def upsample_map(
    grid: torch.Tensor, image_size: Size2, mode: str = "bilinear"
) -> torch.Tensor:
    """Upsample a ``(B, h, w)`` map to image resolution ``(B, H_img, W_img)``.

    Args:
        grid: ``(B, h, w)`` map, e.g. from :func:`tokens_to_grid`.
        image_size: ``int`` or ``(H_img, W_img)``.
        mode: any :func:`torch.nn.functional.interpolate` mode for 2-D inputs
            (``"bilinear"``, ``"bicubic"``, ``"nearest"``, ``"nearest-exact"``, ``"area"``).

    Returns:
        ``(B, H_img, W_img)`` tensor in the dtype of ``grid`` (integer maps are promoted
        to the default float dtype, which interpolation requires).

    Example::

        >>> upsample_map(torch.randn(2, 14, 14), 224).shape
        torch.Size([2, 224, 224])
    """
    if grid.dim() != 3:
        raise ValueError(f"expected (B, h, w), got shape {tuple(grid.shape)}")
    if mode not in _ALIGN_CORNERS:
        raise ValueError(f"unknown mode {mode!r}; choose from {sorted(_ALIGN_CORNERS)}")
    x = grid if grid.is_floating_point() else grid.to(torch.get_default_dtype())
    out = F.interpolate(
        x.unsqueeze(1), size=_pair(image_size), mode=mode, align_corners=_ALIGN_CORNERS[mode]
    )
    return out.squeeze(1)


def pixel_scores(input_attr: torch.Tensor) -> torch.Tensor:
    """Collapse an input-space attribution ``(B, C, H, W)`` to a pixel map by summing channels.

    Summing (not averaging or taking norms) keeps the map's total equal to the
    attribution's total, so completeness survives the reduction.

    Args:
        input_attr: ``(B, C, H, W)`` attribution, e.g. ``x * grad_x``.

    Returns:
        ``(B, H, W)`` tensor.

    Example::

        >>> pixel_scores(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 224, 224])
    """
    if input_attr.dim() != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(input_attr.shape)}")
    return input_attr.sum(dim=1)


def patch_scores(pixel_map: torch.Tensor, patch_size: Size2) -> torch.Tensor:
    """Sum a pixel map over non-overlapping patches: ``(B, H, W)`` -> ``(B, N)``.

    Used to rank patches (e.g. for deletion curves) from a pixel-level map. Patches
    are in raster order, matching :func:`tokens_to_grid`.

    Args:
        pixel_map: ``(B, H, W)`` map; ``H`` and ``W`` must be multiples of the patch size.
        patch_size: ``int`` or ``(ph, pw)``.

    Returns:
        ``(B, N)`` tensor with ``N = (H // ph) * (W // pw)``.

    Example::

        >>> patch_scores(torch.randn(2, 224, 224), 16).shape
        torch.Size([2, 196])
    """
    if pixel_map.dim() != 3:
        raise ValueError(f"expected (B, H, W), got shape {tuple(pixel_map.shape)}")
    b, h, w = pixel_map.shape
    ph, pw = _pair(patch_size)
    if h % ph or w % pw:
        raise ValueError(f"map {h}x{w} is not divisible into {ph}x{pw} patches")
    blocks = pixel_map.reshape(b, h // ph, ph, w // pw, pw)
    return blocks.sum(dim=(2, 4)).reshape(b, -1)
