"""FullGrad (input×gradient plus every bias×gradient) and FullGrad+ (block inputs instead of the input)."""
from __future__ import annotations

from ..context import Context, run_graph
from .block_inputs import as_grid, block_terms, blocks_used
from .pieces import input_piece, site_pieces
from .registry import Partial, register


@register("fullgrad")
def fullgrad(ctx: Context) -> Partial:
    """FullGrad: x⊙∇ₓf plus every bias×gradient; bias maps are summed per location into the map."""
    terms = run_graph(ctx, ctx.inputs, ctx.target, bias=True)
    attr = terms.input_attr[0]
    pieces = input_piece(ctx, attr) + site_pieces(ctx, terms)
    return Partial(terms.score, pieces, input_attr=attr, bias_attr=terms.bias_attr,
                   completeness_error=terms.completeness_error)


@register("fullgrad+")
def fullgrad_plus(ctx: Context) -> Partial:
    """FullGrad+: Σ over blocks of h_l⊙∇h_l at each block input, plus every bias×gradient."""
    terms, located = block_terms(ctx)
    pieces = [as_grid((h * g).sum(-1), size) for h, g, size in located] + site_pieces(ctx, terms)
    return Partial(terms.score, pieces, bias_attr=terms.bias_attr, blocks=blocks_used(ctx, False))
