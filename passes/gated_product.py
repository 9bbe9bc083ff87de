"""Self-gating products: ``p = f₁(x)·…·f_k(x)  →  swap_backward(p, p/k)``.

A product of k input-dependent, FullGrad-complete factors — SwiGLU ``act(xW₁)·(xW₂)`` (after the
activation pass), GLU-style MLPs, MambaOut's gated conv ``act(g)·cat(i, conv(c))`` — is
homogeneous of degree k, so its Jacobian applied to the factors gives k·p. Scaling the backward by
1/k (``libra_fx.ops.scale_grad``) restores completeness (the paper's proposition on products).
Nested products (``a*b*c``) are one tree with k leaves; the scale sits on the outermost product.
Products whose factor is a softmax weighting are attention and are left to the attention passes;
products with a factor not yet balanced wait for the pass that balances it (passes repeat).
"""
from __future__ import annotations

import torch.fx as fx

from libra_fx.analysis import Facts, is_product, product_leaves, product_root
from libra_fx.opset import Kind
from libra_fx.ops import scale_grad

from .api import Pass, substitute

#: how many structural ops (reshapes, masking) past a softmax a factor still counts as its weighting
SOFTMAX_DEPTH = 6


def _from_softmax(facts: Facts, node: fx.Node, depth: int = SOFTMAX_DEPTH) -> bool:
    if facts.name(node) == "softmax":
        return True
    if depth == 0 or facts.kind(node) is not Kind.STRUCTURAL:
        return False
    return any(_from_softmax(facts, a, depth - 1) for a in node.all_input_nodes if facts.is_live(a))


def unscaled_root(facts: Facts, node: fx.Node) -> bool:
    if not is_product(facts, node) or product_root(facts, node) is not node:
        return False
    verdict = facts.verdicts.get(node)
    leaves = product_leaves(facts, node)
    return (verdict is not None and not verdict.balanced and all(_balanced(facts, f) for f in leaves)
            and not any(_from_softmax(facts, f) for f in leaves))


def _balanced(facts: Facts, factor: fx.Node) -> bool:
    """The 1/k rule needs FullGrad-complete factors; an unbalanced one is a gate for another pass."""
    verdict = facts.verdicts.get(factor)
    return verdict is None or verdict.balanced


def rewrite(facts: Facts, node: fx.Node) -> None:
    k = len(product_leaves(facts, node))
    substitute(node, scale_grad, (node, 1.0 / k), None, PASS.name)


PASS = Pass(name="gated_product", group="gate", applies=unscaled_root, rewrite=rewrite, doc=__doc__)
