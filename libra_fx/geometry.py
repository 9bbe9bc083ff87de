"""How activations of a graph map to image (or token) locations, and resampling of maps (spec §5).

Each method yields *pieces*: per-location attributions ``(B, h, w)`` at some resolution (the
image's, the patch grid's, a CNN stage's). :func:`locations` views an activation over the model's
locations, :func:`spatial_sum` sums an attribution per location and :func:`resample` brings a piece
to another resolution as a *density* (totals kept).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .maps import pixel_scores


@dataclass
class Geometry:
    """How tensors in the graph map to image locations.

    Attributes:
        batch: B.
        image_size: ``(H, W)`` of the image input, ``None`` when the input is not an image.
        grid: ``(h, w)`` patch grid of token models (from the patch-embedding conv or given).
        prefix: leading non-patch tokens (``None``: infer from each token count).
        tokens: whether block inputs are token sequences (a token model); learnt on the first run.
    """

    batch: int
    image_size: Optional[tuple[int, int]]
    grid: Optional[tuple[int, int]] = None
    prefix: Optional[int] = None
    tokens: Optional[bool] = None

    def token_prefix(self, tokens: int) -> Optional[int]:
        """Prefix tokens in a sequence of ``tokens`` tokens, ``None`` when it is not the patch grid."""
        if self.grid is None:
            return None
        extra = tokens - self.grid[0] * self.grid[1]
        if self.prefix is not None:
            return self.prefix if extra == self.prefix else None
        return extra if 0 <= extra < tokens else None

    def locate(self, value: torch.Tensor) -> Optional[tuple[torch.Tensor, tuple[int, int]]]:
        """See :func:`locations`; subclasses (text sequences) lay tensors out their own way."""
        return _image_locations(value, self)

    def input_piece(self, attr: torch.Tensor) -> Optional[torch.Tensor]:
        """``(B, h, w)`` per-location sum of an input attribution (images: per pixel), or ``None``."""
        return pixel_scores(attr) if attr.dim() == 4 else None


#: how far a feature map's aspect ratio h/w may be (relatively) from the image's H/W and still be
#: read as a spatial map of it. Strided convolutions and pooling round each side separately, so small
#: maps drift from the image's ratio (a 48×64 image through a stride-32 CNN gives a 2×2 map: ratio 1
#: for 0.75) and an exact match would reject them; 25% still tells the two sides of a channels-first
#: ``(B, C, h, w)`` map from the ``(w, C)`` sides of a channels-last one, whose ratio is far off.
ASPECT_RATIO_TOLERANCE = 0.25


def _ratio_matches(h: int, w: int, image_size: Optional[tuple[int, int]]) -> bool:
    if image_size is None:
        return True
    H, W = image_size
    return h <= H and w <= W and math.isclose(h / w, H / W, rel_tol=ASPECT_RATIO_TOLERANCE)


def locations(value: torch.Tensor, geo: Geometry) -> Optional[tuple[torch.Tensor, tuple[int, int]]]:
    """View an activation as ``(B, L, D)`` over the model's locations: ``geo.locate(value)``."""
    return geo.locate(value)


def _image_locations(value: torch.Tensor, geo: Geometry) -> Optional[tuple[torch.Tensor, tuple[int, int]]]:
    """View an activation as ``(B, L, D)`` over a spatial grid of ``L = h·w`` locations.

    Token sequences ``(B, T, D)`` (prefix dropped; also ``(T, B, D)`` and channel-major ``(B, D, N)``),
    channels-first ``(B, C, h, w)`` and channels-last ``(B, h, w, C)`` maps are spatial; anything
    else (pooled features, logits, attention-pool queries) is not, and gives ``None``.

    Args:
        value: an activation or attribution of the graph.
        geo: the model's :class:`Geometry`.

    Returns:
        ``(tensor (B, L, D), (h, w))`` or ``None``.
    """
    B = geo.batch
    if value.dim() == 3:
        if value.shape[0] != B and value.shape[1] == B:
            value = value.transpose(0, 1)  # sequence-first layout (nn.MultiheadAttention default)
        if value.shape[0] != B or geo.grid is None:
            return None
        prefix = geo.token_prefix(value.shape[1])
        if prefix is not None:
            return value[:, prefix:], geo.grid
        if value.shape[2] == geo.grid[0] * geo.grid[1]:  # (B, D, N): token-mixing MLPs
            return value.transpose(1, 2), geo.grid
        return None
    if value.dim() == 4 and value.shape[0] == B:
        _, a, b, c = value.shape
        if _ratio_matches(b, c, geo.image_size):
            return value.flatten(2).transpose(1, 2), (b, c)
        if _ratio_matches(a, b, geo.image_size):
            return value.flatten(1, 2), (a, b)
    return None


def spatial_sum(value: torch.Tensor, geo: Geometry) -> Optional[torch.Tensor]:
    """``(B, h, w)`` per-location sum of an attribution tensor, ``None`` when it is not spatial."""
    located = locations(value, geo)
    if located is None:
        return None
    tensor, (h, w) = located
    return tensor.sum(-1).reshape(tensor.shape[0], h, w)


def resample(piece: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resample a ``(B, h, w)`` attribution to ``size`` keeping its total (a density resampling).

    Exact sum-pooling when ``size`` divides the piece; otherwise interpolation scaled by the cell-area
    ratio, so totals are kept up to interpolation error.
    """
    h, w = piece.shape[-2:]
    H, W = size
    if (h, w) == (H, W):
        return piece
    if h % H == 0 and w % W == 0:
        return piece.reshape(piece.shape[0], H, h // H, W, w // W).sum((2, 4))
    align = None if mode in ("nearest", "area", "nearest-exact") else False
    out = F.interpolate(piece.unsqueeze(1), size=(H, W), mode=mode, align_corners=align).squeeze(1)
    return out * (h * w) / (H * W)
