"""Input-dependent divisors: ``a / d(x)  →  a / [d(x)]cst``.

The general form of the LayerNorm and L2 rules: hand-written LayerNorm ``(x−μ)/sqrt(var+ε)``,
``x / x.norm(dim=-1, keepdim=True)``, attention normalised by a sum. Dividing by a detached divisor
is the same division on the same values (bit-identical forward) with gradient ``da / d``.
"""
from __future__ import annotations

import torch.fx as fx

from libra_fx.analysis import Facts
from libra_fx.opset import arg

from .api import Pass, detach_input


def _divisor(node: fx.Node):
    return arg(node, "other")


def applies(facts: Facts, node: fx.Node) -> bool:
    return facts.is_live(_divisor(node))


def rewrite(facts: Facts, node: fx.Node) -> None:
    detach_input(node, _divisor(node), PASS.name)


PASS = Pass(name="divisor", group="norm", ops=("div",), applies=applies, rewrite=rewrite, doc=__doc__)
