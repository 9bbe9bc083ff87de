"""Attention baselines (non-gradient): the last layer's raw attention and attention rollout."""
from __future__ import annotations

import torch

from ..attention_maps import attention_maps
from ..context import Context
from .registry import Partial, register


def _query_row(matrix: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The CLS row over patch columns (mean over query rows when there is no prefix token)."""
    prefix = ctx.geo.token_prefix(matrix.shape[-1]) or 0
    rows = matrix[:, 0] if prefix > 0 else matrix.mean(1)
    return rows[:, prefix:]


def _token_partial(ctx: Context, score: torch.Tensor, scores: torch.Tensor) -> Partial:
    grid = ctx.geo.grid
    pieces = [scores.reshape(scores.shape[0], *grid)] if grid and grid[0] * grid[1] == scores.shape[1] else []
    return Partial(score, pieces, token_scores=scores)


def rollout_matrix(maps: list[torch.Tensor]) -> torch.Tensor:
    """Π_l normalise(0.5·mean_heads A_l + 0.5·I) over ``(B, heads, T, T)`` maps: ``(B, T, T)``."""
    eye = torch.eye(maps[0].shape[-1], dtype=maps[0].dtype, device=maps[0].device)
    joint = eye.expand_as(maps[0][:, 0]).clone()
    for attn in maps:
        mixed = 0.5 * attn.mean(1) + 0.5 * eye
        joint = (mixed / mixed.sum(-1, keepdim=True)) @ joint
    return joint


@register("raw_attention")
def raw_attention(ctx: Context) -> Partial:
    """Last layer's attention, averaged over heads, CLS row (non-gradient baseline)."""
    readout = attention_maps(ctx)
    return _token_partial(ctx, readout.score, _query_row(readout.maps[-1].mean(1), ctx))


@register("rollout")
def rollout(ctx: Context) -> Partial:
    """Attention rollout: Π_l normalise(0.5·mean_heads A_l + 0.5·I), CLS row (non-gradient baseline)."""
    readout = attention_maps(ctx)
    return _token_partial(ctx, readout.score, _query_row(rollout_matrix(readout.maps), ctx))
