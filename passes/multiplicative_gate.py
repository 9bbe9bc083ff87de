"""Multiplicative gates: ``x·g  →  x·[g]cst`` when g is a gate rather than a second factor.

For a product ``a·b`` of two input-dependent values, ``b`` is detached when

* it is an elementwise function of ``a`` alone, or of the x that ``a`` is a constant multiple of —
  a self-gate, the hand-written gated activation: ``x*torch.sigmoid(1.702*x)`` (QuickGELU),
  ``x*sigmoid(x)``, ``x*relu6(x+3)/6``, GPT-2's ``0.5*x*(1+tanh(√(2/π)(x+0.044715x³)))``; or
* it is not FullGrad-complete while ``a`` is — a non-homogeneous scale such as
  ``x*torch.rsqrt(x.pow(2).mean(-1)+ε)`` (hand-written RMSNorm), ConvNeXt-v2's GRN response
  ``x*(gx/mean(gx))``, or a sigmoid gate ``σ(xW₁)·xW₂``.

Products of two balanced, distinct factors (SwiGLU) are left to ``gated_product``.
"""
from __future__ import annotations

from typing import Optional

import torch.fx as fx

from libra_fx.analysis import Facts, elementwise_of, is_product
from libra_fx.opset import Kind, arg, factors

from .api import Pass, detach_input


def _unbalanced(facts: Facts, node: fx.Node) -> bool:
    """Non-homogeneous (a gate candidate); an unscaled product is a factor, not a gate."""
    verdict = facts.verdicts.get(node)
    return verdict is not None and not verdict.balanced and not is_product(facts, node)


_SCALINGS = ("mul", "div", "neg", "cast", "identity")


def scaled_source(facts: Facts, value: fx.Node) -> fx.Node:
    """The x that ``value`` is a constant multiple of (``0.5*x`` → x), or ``value`` itself."""
    while facts.name(value) in _SCALINGS and not is_product(facts, value):
        live = [a for a in value.all_input_nodes if facts.is_live(a)]
        divisor_live = facts.name(value) == "div" and facts.is_live(arg(value, "other"))
        if len(live) != 1 or divisor_live or facts.kind(live[0]) is Kind.CONST:
            break
        value = live[0]
    return value


def gate_factor(facts: Facts, node: fx.Node) -> Optional[fx.Node]:
    """The factor of ``node`` (a two-factor mul) that acts as a gate, if one does."""
    live = [a for a in factors(node) if facts.is_live(a)]
    if len(live) != 2 or live[0] is live[1]:
        return None
    a, b = live
    for base, gate in ((a, b), (b, a)):
        if elementwise_of(facts, gate, base) or elementwise_of(facts, gate, scaled_source(facts, base)):
            return gate
    for base, gate in ((a, b), (b, a)):
        if _unbalanced(facts, gate) and not _unbalanced(facts, base):
            return gate
    return None


def applies(facts: Facts, node: fx.Node) -> bool:
    return gate_factor(facts, node) is not None


def rewrite(facts: Facts, node: fx.Node) -> None:
    detach_input(node, gate_factor(facts, node), PASS.name)


PASS = Pass(name="multiplicative_gate", group="activation", ops=("mul",), applies=applies, rewrite=rewrite,
            doc=__doc__)
