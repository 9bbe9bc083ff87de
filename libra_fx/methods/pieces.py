"""Map pieces ``(B, h, w)`` from an input attribution and from FullGrad's bias terms."""
from __future__ import annotations

import torch

from ..context import Context
from ..geometry import spatial_sum
from ..runner import FullGradTerms


def input_piece(ctx: Context, attr: torch.Tensor) -> list[torch.Tensor]:
    """The per-location sum of an input attribution (no piece when the input is not spatial)."""
    piece = ctx.geo.input_piece(attr)
    return [] if piece is None else [piece]


def site_pieces(ctx: Context, terms: FullGradTerms) -> list[torch.Tensor]:
    """The per-location sums of every spatial bias×gradient map."""
    pieces = (spatial_sum(a, ctx.geo) for a in terms.site_attr)
    return [p for p in pieces if p is not None]
