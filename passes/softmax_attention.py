"""Explicit attention: ``A = w(softmax(S)); A·V  →  [A]cst·V``.

A softmax is an attention (or attention-pool) weighting when some value computed from its weights
*alone* — through reshapes, masking, dropout, talking-heads projections over the head axis (CaiT),
gated mixing with a constant positional attention and renormalisation by its own sum (ConViT's
GPSA) — is one factor of a product (``@``, ``matmul``, ``bmm``, ``einsum``, ``mul``) whose other
factor depends on the input through something else (V). Its output is detached, so everything
computed from the weights is constant and the weighted sum is linear in V. Scores,
relative-position biases, RoPE and q/k-norm before it lose their gradient; the forward is
unchanged. A softmax that is the model's output (class probabilities) is left alone.
"""
from __future__ import annotations

import heapq

import torch.fx as fx

from libra_fx.analysis import Facts, is_product

from .api import Pass, detach_output

#: how far (in nodes) past the softmax the weighting region is followed
_MAX_REGION = 64


def weighting_region(facts: Facts, softmax: fx.Node) -> set[fx.Node]:
    """Nodes whose every live input is the softmax or another node of the region.

    Visited in graph order, so a node's inputs are decided before the node (``A / A.sum()`` joins
    once ``A.sum()`` has).
    """
    order = {n: i for i, n in enumerate(facts.gm.graph.nodes)}
    region, heap, seen = {softmax}, [], set()
    for user in facts.flow.successors(softmax):
        heapq.heappush(heap, (order[user], user.name, user))
    while heap and len(region) < _MAX_REGION:
        _, _, node = heapq.heappop(heap)
        if node in seen:
            continue
        seen.add(node)
        live_inputs = [a for a in node.all_input_nodes if facts.is_live(a)]
        if node.op == "output" or not all(a in region for a in live_inputs):
            continue
        region.add(node)
        for user in facts.flow.successors(node):
            heapq.heappush(heap, (order[user], user.name, user))
    return region


def _weights_a_product(facts: Facts, node: fx.Node) -> bool:
    region = weighting_region(facts, node)
    return any(is_product(facts, user) for member in region for user in facts.grad_users(member)
               if user not in region)


def applies(facts: Facts, node: fx.Node) -> bool:
    return _weights_a_product(facts, node)


def rewrite(facts: Facts, node: fx.Node) -> None:
    detach_output(node, PASS.name)


PASS = Pass(name="softmax_attention", group="attention", ops=("softmax",), applies=applies, rewrite=rewrite,
            doc=__doc__)
