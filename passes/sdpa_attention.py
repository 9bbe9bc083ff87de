"""Fused attention: ``softmax(QKᵀ/√d + mask)·V  →  [softmax(·)]cst·V``.

Rewrite ``F.scaled_dot_product_attention(q, k, v, ...)`` into
``F.scaled_dot_product_attention(const(q), const(k), v, ...)``: the same kernel on the same values
(bit-identical forward, masks, ``is_causal``, ``scale`` and GQA untouched), with gradient only
through V. RoPE and q/k-norm, upstream of q and k, fall inside the detached branch. q and k are
detached whenever they can carry any gradient, parameters included: in an attention pool with a
learned query (SigLIP's MAP head) q does not depend on the input, yet without ``const`` the query
projection's weights and bias would get gradient through the softmax. An additive ``attn_mask``
built from parameters (MaxViT's relative-position MLP) is a score term too; it is blocked with
``block_gradient``, which keeps ``requires_grad`` so that the CPU kernel takes the same path.
"""
from __future__ import annotations

from libra_fx.analysis import Facts
from libra_fx.ops import block_gradient, const
from libra_fx.opset import arg

from .api import Pass, detach_input


#: the arguments that only reach the output through the softmax
SCORE_ARGS = ("query", "key", "attn_mask")


def _scores_inputs(facts: Facts, node) -> list:
    """q, k and the mask where they carry gradient (once each: self-attention passes x twice)."""
    return list(dict.fromkeys(v for v in (arg(node, a) for a in SCORE_ARGS) if facts.carries_gradient(v)))


def applies(facts: Facts, node) -> bool:
    return bool(_scores_inputs(facts, node))


def rewrite(facts: Facts, node) -> None:
    mask = arg(node, "attn_mask")
    for value in _scores_inputs(facts, node):
        detach_input(node, value, PASS.name, block_gradient if value is mask else const)


PASS = Pass(name="sdpa_attention", group="attention", ops=("sdpa",), applies=applies, rewrite=rewrite,
            doc=__doc__)
