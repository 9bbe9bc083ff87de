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
from libra_fx.functional import balanced_group_norm, balanced_layer_norm, balanced_rms_norm
from libra_fx.opset import arg

from ._graph import Pass, relevant_nodes, substitute

#: canonical op -> (balanced function, its parameters in order)
BALANCED_NORMS = {
    "layer_norm": (balanced_layer_norm, ("input", "normalized_shape", "weight", "bias", "eps")),
    "rms_norm": (balanced_rms_norm, ("input", "normalized_shape", "weight", "eps")),
    "group_norm": (balanced_group_norm, ("input", "num_groups", "weight", "bias", "eps")),
}
_DEFAULT_EPS = {"layer_norm": 1e-5, "group_norm": 1e-5, "rms_norm": None}


def match(facts: Facts):
    return relevant_nodes(facts, BALANCED_NORMS)


def rewrite(facts: Facts, node: fx.Node) -> None:
    name = facts.name(node)
    function, params = BALANCED_NORMS[name]
    args = tuple(arg(node, p, _DEFAULT_EPS[name] if p == "eps" else None) for p in params)
    substitute(node, function, args, None, PASS.name)


PASS = Pass("normalization", "norm", match, rewrite, __doc__)
