"""Fused attention: ``softmax(QKᵀ/√d + mask)·V  →  [softmax(·)]cst·V``.

Rewrite ``F.scaled_dot_product_attention(q, k, v, ...)`` into
``F.scaled_dot_product_attention(const(q), const(k), v, ...)``: the same kernel on the same values
(bit-identical forward, masks, ``is_causal``, ``scale`` and GQA untouched), with gradient only
through V. RoPE and q/k-norm, upstream of q and k, fall inside the detached branch. An attention
pool with a learned query (SigLIP's MAP head) is the same node with a constant q.
"""
from __future__ import annotations

from libra_fx.analysis import Facts
from libra_fx.opset import arg

from ._graph import Pass, detach_input, relevant_nodes


def match(facts: Facts):
    return [n for n in relevant_nodes(facts, ("sdpa",))
            if facts.is_live(arg(n, "query")) or facts.is_live(arg(n, "key"))]


def rewrite(facts: Facts, node) -> None:
    query, key = arg(node, "query"), arg(node, "key")
    for value in dict.fromkeys(v for v in (query, key) if facts.is_live(v)):
        detach_input(node, value, PASS.name)


PASS = Pass("sdpa_attention", "attention", match, rewrite, __doc__)
