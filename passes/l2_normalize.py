"""L2 normalisation: ``x/‖x‖  →  x·[1/‖x‖]cst`` (a general case of the LayerNorm rule).

``F.normalize(x, p, dim, eps)`` — e.g. CLIP's final image/text embeddings — becomes
``balanced_normalize``: the same value, gradient ``(1/‖x‖)·dx``. The hand-written
``x / x.norm(dim=-1, keepdim=True)`` is handled by the ``divisor`` pass.
"""
from __future__ import annotations

import torch.fx as fx

from libra_fx.analysis import Facts

from .api import Pass, substitute_twin


def rewrite(facts: Facts, node: fx.Node) -> None:
    substitute_twin(facts, node, PASS.name)  # balanced_normalize(x, p, dim, eps)


PASS = Pass(name="l2_normalize", group="norm", ops=("normalize",), rewrite=rewrite, doc=__doc__)
