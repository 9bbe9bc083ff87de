"""Gated activations: ``act(x) = x·gate(x)  →  x·[gate(x)]cst``.

GELU (gate Φ(x), or ½(1+tanh(√(2/π)(x+0.044715x³))) for ``approximate="tanh"``), SiLU (σ(x)),
hard-swish (relu6(x+3)/6) and Mish (tanh(softplus(x))), in functional form and in module form
(modules are traced through to the functional call). The original op's output is kept as the value;
``balanced_activation`` gives it the gradient of ``x * const(gate(x))``. QuickGELU and other
hand-written ``x * gate(x)`` are handled by ``multiplicative_gate``.
"""
from __future__ import annotations

import torch.fx as fx

from libra_fx.analysis import Facts
from libra_fx.functional import balanced_activation
from libra_fx.opset import arg, set_arg

from .api import Pass, substitute

KNOWN = ("gelu", "silu", "hardswish", "mish")


def gate_kind(facts: Facts, node: fx.Node) -> str:
    name = facts.name(node)
    if name == "gelu" and arg(node, "approximate", "none") == "tanh":
        return "gelu_tanh"
    return name


def rewrite(facts: Facts, node: fx.Node) -> None:
    if arg(node, "inplace"):  # the gate reads x after the op, so x must not be overwritten
        set_arg(node, "inplace", False)
    substitute(node, balanced_activation, (arg(node, "input"), gate_kind(facts, node), node), None, PASS.name)


PASS = Pass(name="gated_activation", group="activation", ops=KNOWN, rewrite=rewrite, doc=__doc__)
