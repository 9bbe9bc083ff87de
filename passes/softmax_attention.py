"""Explicit attention: ``A = softmax(S); A·V  →  [A]cst·V``.

A softmax whose weights reach, through reshapes/dropout/masking, one factor of a product
(``@``, ``matmul``, ``bmm``, ``einsum``, ``mul``) whose other factor also depends on the input is an
attention (or attention-pool) weighting: its output is detached, so the weighted sum is linear in V.
Scores, relative-position biases, RoPE and q/k-norm before it lose their gradient; the forward is
unchanged. A softmax that is the model's output (class probabilities) is left alone.
"""
from __future__ import annotations

import torch.fx as fx

from libra_fx.analysis import Facts, is_product
from libra_fx.opset import Kind

from ._graph import Pass, detach_output, relevant_nodes

_PASS_THROUGH = (Kind.STRUCTURAL,)


def _weights_a_product(facts: Facts, node: fx.Node, depth: int = 6) -> bool:
    for user in facts.grad_users(node):
        if is_product(facts, user):
            return True
        if depth and facts.kind(user) in _PASS_THROUGH and _weights_a_product(facts, user, depth - 1):
            return True
    return False


def match(facts: Facts):
    return [n for n in relevant_nodes(facts, ("softmax",)) if _weights_a_product(facts, n)]


def rewrite(facts: Facts, node: fx.Node) -> None:
    detach_output(node, PASS.name)


PASS = Pass("softmax_attention", "attention", match, rewrite, __doc__)
