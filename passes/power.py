"""Powers: ``p = x**k  →  swap_backward(p, p/k)`` for a balanced x and a constant k > 0.

``x**k`` is homogeneous of degree k, so its Jacobian applied to x gives k·xᵏ: a k-th power is a
product of k equal factors and takes the product rule's 1/k (``libra_fx.ops.scale_grad``).
StarReLU's ``s·relu(x)**2 + b`` (MetaFormer) and squared-ReLU MLPs are the cases that matter;
``torch.square`` is ``x**2``. A power of a value that is not yet balanced waits for the pass that
balances it, and a power already scaled is balanced, so repeated rounds never scale twice.
Powers inside a detached gate or norm (``x.pow(2).mean()`` under ``rsqrt``) carry no gradient and
are left alone.
"""
from __future__ import annotations

import torch.fx as fx

from libra_fx.analysis import Facts, power_exponent
from libra_fx.ops import scale_grad
from libra_fx.opset import arg

from .api import Pass, substitute


def _balanced_base(facts: Facts, node: fx.Node) -> bool:
    verdict = facts.verdicts.get(arg(node, "input"))
    return verdict is None or verdict.balanced


def applies(facts: Facts, node: fx.Node) -> bool:
    return (not facts.verdicts[node].balanced and power_exponent(facts, node) is not None
            and _balanced_base(facts, node))


def rewrite(facts: Facts, node: fx.Node) -> None:
    substitute(node, scale_grad, (node, 1.0 / power_exponent(facts, node)), None, PASS.name)


PASS = Pass(name="power", group="gate", ops=("pow", "square"), applies=applies, rewrite=rewrite, doc=__doc__)
