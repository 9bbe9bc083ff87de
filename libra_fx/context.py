"""What an attribution method runs on: :class:`Context` and :func:`run_graph` (spec §5).

A method is a function of a :class:`Context` (the graph, its analysis, the inputs, the blocks and
the model geometry). :func:`run_graph` is its one way to run the graph: the call's
:class:`~libra_fx.runner.GraphRunner` plus the geometry taps that teach the context the patch grid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.fx as fx

from .analysis import Facts
from .blocks import Block
from .errors import LibraError
from .geometry import Geometry, locations
from .runner import FullGradTerms, GraphRunner
from .targets import Target


@dataclass
class Context:
    """Everything a method needs: the graph, its analysis, the inputs and the model geometry.

    ``runner`` holds this call's instrumented (and maybe compiled) graphs so that integrated
    gradients' chunks reuse one; it lives and dies with the call (no global cache).
    """

    gm: fx.GraphModule
    facts: Facts
    inputs: tuple
    target: Optional[Target]
    blocks: list[Block]
    geo: Geometry
    compiled: bool
    options: dict
    runner: Optional[GraphRunner] = field(default=None, repr=False)

    def __post_init__(self):
        if self.runner is None:
            self.runner = GraphRunner(self.gm, self.facts, self.compiled)

    def block_nodes(self, last_only: bool = False) -> list[fx.Node]:
        if not self.blocks:
            raise LibraError("this method needs block boundaries and none were found in the model; "
                             "pass blocks=[module names] (e.g. ['layer1.0', 'layer1.1'])")
        chosen = self.blocks[-1:] if last_only else self.blocks
        return [b.input for b in chosen]

    def geometry_taps(self) -> dict[str, fx.Node]:
        """Nodes read only for their shapes: the first live convolution (a ViT's patch embedding,
        a CNN's stem: gives the grid) and the first block input (token sequence or feature map)."""
        patch = next((n for n in self.facts.relevant if self.facts.name(n) == "conv"), None)
        taps = {"patch": patch, "block": self.blocks[0].input if self.blocks else None}
        return {role: node for role, node in taps.items() if node is not None}


def _learn_geometry(ctx: Context, values: dict[str, torch.Tensor]) -> None:
    """Set the patch grid and whether block inputs are token sequences from the geometry taps."""
    patch, block = values.get("patch"), values.get("block")
    if ctx.geo.grid is None and patch is not None and patch.dim() == 4:
        ctx.geo.grid = tuple(patch.shape[-2:])
    if ctx.geo.tokens is None:
        ctx.geo.tokens = block is not None and block.dim() == 3 and locations(block, ctx.geo) is not None


def run_graph(ctx: Context, inputs: tuple, target: Optional[Target], taps: Sequence[fx.Node] = (),
              bias: bool = False, grad: bool = True, raw_grad: bool = False) -> FullGradTerms:
    """One forward and (when ``grad``) one ``torch.autograd.grad`` of ``ctx.gm`` on ``inputs``.

    :meth:`libra_fx.runner.GraphRunner.run` with the geometry taps added (and consumed by
    :func:`_learn_geometry`). With ``bias`` it gives :func:`libra_fx.runner.fullgrad_terms`' terms.

    Args:
        ctx: the call's context.
        inputs, target, taps, bias, grad, raw_grad: as for :meth:`libra_fx.runner.GraphRunner.run`.

    Returns:
        :class:`~libra_fx.runner.FullGradTerms` with ``taps`` for the requested nodes only.
    """
    extra = ctx.geometry_taps()
    taps = tuple(taps) + tuple(extra.values())
    terms = ctx.runner.run(inputs, target, taps, bias=bias, grad=grad, raw_grad=raw_grad, batch=ctx.geo.batch)
    cut = len(terms.taps) - len(extra)
    _learn_geometry(ctx, {role: v for role, (v, _) in zip(extra, terms.taps[cut:])})
    terms.taps = terms.taps[:cut]
    return terms
