"""Input-dependent divisors: ``a / d(x)  →  a / [d(x)]cst``.

The general form of the LayerNorm and L2 rules: hand-written LayerNorm ``(x−μ)/sqrt(var+ε)``,
``x / x.norm(dim=-1, keepdim=True)``, attention normalised by a sum. Dividing by a detached divisor
is the same division on the same values (bit-identical forward) with gradient ``da / d``.
"""
from __future__ import annotations

import torch.fx as fx

from libra_fx.analysis import Facts

from ._graph import Pass, detach_input, relevant_nodes, value_arg


def _divisor(node: fx.Node):
    return value_arg(node, 1, "other")


def match(facts: Facts):
    return [n for n in relevant_nodes(facts, ("div",)) if facts.is_live(_divisor(n))]


def rewrite(facts: Facts, node: fx.Node) -> None:
    detach_input(node, _divisor(node), PASS.name)


PASS = Pass("divisor", "norm", match, rewrite, __doc__)
