"""Normalisation layers: ``(x−μ)/√(σ²+ε)·γ+β  →  (x−μ)/[√(σ²+ε)]cst·γ+β``.

``F.layer_norm`` (``nn.LayerNorm``, timm's ``LayerNorm``/``LayerNorm2d`` and channels-first
permuted forms all trace to it), ``F.rms_norm`` (``x·[rsqrt(mean x²+ε)]cst·γ``) and ``F.group_norm``
(the LayerNorm rule per group) are replaced by their ``libra_fx.functional.balanced_*`` versions:
the original op gives the value, mean-centring keeps its gradient, the std (or rms) is a constant.
Hand-written forms are caught by the ``divisor`` and ``multiplicative_gate`` passes.
"""
from __future__ import annotations

import torch.fx as fx

from libra_fx.analysis import Facts

from .api import Pass, substitute_twin

#: the norms this pass balances; each one's twin (``balanced_layer_norm``, ...) is in its op schema
NORMS = ("layer_norm", "rms_norm", "group_norm")


def rewrite(facts: Facts, node: fx.Node) -> None:
    substitute_twin(facts, node, PASS.name)


PASS = Pass(name="normalization", group="norm", ops=NORMS, rewrite=rewrite, doc=__doc__)
