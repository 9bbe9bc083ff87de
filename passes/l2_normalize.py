"""L2 normalisation: ``x/‖x‖  →  x·[1/‖x‖]cst`` (a general case of the LayerNorm rule).

``F.normalize(x, p, dim, eps)`` — e.g. CLIP's final image/text embeddings — becomes
``balanced_normalize``: the same value, gradient ``(1/‖x‖)·dx``. The hand-written
``x / x.norm(dim=-1, keepdim=True)`` is handled by the ``divisor`` pass.
"""
from __future__ import annotations

import torch.fx as fx

from libra_fx.analysis import Facts
from libra_fx.functional import balanced_normalize

from ._graph import Pass, relevant_nodes, substitute, value_arg


def match(facts: Facts):
    return relevant_nodes(facts, ("normalize",))


def rewrite(facts: Facts, node: fx.Node) -> None:
    args = (value_arg(node, 0, "input"), value_arg(node, 1, "p", 2.0), value_arg(node, 2, "dim", 1),
            value_arg(node, 3, "eps", 1e-12))
    substitute(node, balanced_normalize, args, None, PASS.name)


PASS = Pass("l2_normalize", "norm", match, rewrite, __doc__)
