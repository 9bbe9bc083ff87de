"""Multiplicative gates: ``x·g  →  x·[g]cst`` when g is a gate rather than a second factor.

For a product ``a·b`` of two input-dependent values, ``b`` is detached when

* it is an elementwise function of ``a`` alone — a self-gate, the hand-written gated activation:
  ``x*torch.sigmoid(1.702*x)`` (QuickGELU), ``x*sigmoid(x)``, ``x*relu6(x+3)/6``; or
* it is not FullGrad-complete while ``a`` is — a non-homogeneous scale such as
  ``x*torch.rsqrt(x.pow(2).mean(-1)+ε)`` (hand-written RMSNorm), ConvNeXt-v2's GRN response
  ``x*(gx/mean(gx))``, or a sigmoid gate ``σ(xW₁)·xW₂``.

Products of two balanced, distinct factors (SwiGLU) are left to ``gated_product``.
"""
from __future__ import annotations

from typing import Optional

import torch.fx as fx

from libra_fx.analysis import Facts, elementwise_of, is_product

from ._graph import Pass, detach_input, relevant_nodes


def _unbalanced(facts: Facts, node: fx.Node) -> bool:
    """Non-homogeneous (a gate candidate); an unscaled product is a factor, not a gate."""
    verdict = facts.verdicts.get(node)
    return verdict is not None and not verdict.balanced and not is_product(facts, node)


def gate_factor(facts: Facts, node: fx.Node) -> Optional[fx.Node]:
    """The factor of ``node`` (a two-factor mul) that acts as a gate, if one does."""
    live = [a for a in node.args[:2] if facts.is_live(a)]
    if len(live) != 2 or live[0] is live[1]:
        return None
    a, b = live
    for base, gate in ((a, b), (b, a)):
        if elementwise_of(facts, gate, base):
            return gate
    for base, gate in ((a, b), (b, a)):
        if _unbalanced(facts, gate) and not _unbalanced(facts, base):
            return gate
    return None


def match(facts: Facts):
    return [n for n in relevant_nodes(facts, ("mul",)) if gate_factor(facts, n) is not None]


def rewrite(facts: Facts, node: fx.Node) -> None:
    detach_input(node, gate_factor(facts, node), PASS.name)


PASS = Pass("multiplicative_gate", "activation", match, rewrite, __doc__)
