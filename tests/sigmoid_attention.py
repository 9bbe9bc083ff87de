"""Sigmoid attention: ``A = σ(S); A·V  →  [A]cst·V`` (the README's "Writing your own pass" example).

Attention with sigmoid weights (instead of a softmax) is a product ``σ(S)·V`` whose first factor is
not FullGrad-complete; the built-in passes leave it unbalanced. Detaching the weights makes the
output linear in V, as the attention rule does for a softmax.
"""
from __future__ import annotations

from libra_fx.analysis import is_product
from passes.api import Pass, detach_output


def weights_a_product(facts, node) -> bool:
    """The sigmoid's value is one factor of a product (``A @ V``)."""
    return any(is_product(facts, user) for user in facts.grad_users(node))


def rewrite(facts, node) -> None:
    detach_output(node, PASS.name)  # every user now reads const(σ(S))


PASS = Pass(name="sigmoid_attention", group="attention", ops=("sigmoid",),
            applies=weights_a_product, rewrite=rewrite, doc=__doc__)
