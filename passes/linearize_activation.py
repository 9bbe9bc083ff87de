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

from ._graph import Pass, relevant_nodes, substitute

ZERO_AT_ZERO = ("tanh", "elu", "selu", "erf", "sin", "gelu", "silu", "mish", "hardswish")


def _single_live_input(facts: Facts, node: fx.Node):
    live = [a for a in node.all_input_nodes if facts.is_live(a)]
    return live[0] if len(live) == 1 and node.args and node.args[0] is live[0] else None


def match(facts: Facts):
    return [n for n in relevant_nodes(facts, ZERO_AT_ZERO)
            if not facts.verdicts[n].balanced and _single_live_input(facts, n) is not None]


def rewrite(facts: Facts, node: fx.Node) -> None:
    # args[0], not _single_live_input: an earlier rewrite in this pass may have replaced the input
    # by a new node the facts do not know (tanh(tanh(x)): fuzz counterexample, seed 0)
    substitute(node, linearized, (node, node.args[0]), None, PASS.name)


PASS = Pass("linearize_activation", "generic", match, rewrite, __doc__)
