"""Unknown activations with f(0)=0: ``f(x)  →  x·[f(x)/x]cst`` (slope 0 where x = 0).

Any elementwise function through the origin is a gated activation with gate f(x)/x, so the
activation rule applies to it: ``tanh``, ``elu``, ``selu``, ``erf``, ``sin``, and GELU/SiLU/Mish
spellings that the specific pass did not catch. The value is the original op's output
(``libra_fx.functional.linearized``). Functions with f(0)≠0 (``sigmoid``, ``exp``, ``softplus``)
cannot be balanced this way and stay in the audit.
"""
from __future__ import annotations

import torch.fx as fx

from libra_fx.analysis import Facts
from libra_fx.functional import linearized
from libra_fx.opset import arg

from .api import Pass, substitute

ZERO_AT_ZERO = ("tanh", "elu", "selu", "erf", "sin", "gelu", "silu", "mish", "hardswish")


def _single_live_input(facts: Facts, node: fx.Node):
    live = [a for a in node.all_input_nodes if facts.is_live(a)]
    return live[0] if len(live) == 1 and arg(node, "input") is live[0] else None


def applies(facts: Facts, node: fx.Node) -> bool:
    return not facts.verdicts[node].balanced and _single_live_input(facts, node) is not None


def rewrite(facts: Facts, node: fx.Node) -> None:
    substitute(node, linearized, (node, arg(node, "input")), None, PASS.name)


PASS = Pass(name="linearize_activation", group="generic", ops=ZERO_AT_ZERO, applies=applies, rewrite=rewrite,
            doc=__doc__)
