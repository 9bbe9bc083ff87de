"""Bias terms (spec §1): every constant that enters the output additively.

One rule per kind of bias (a registry, Zennit-style), found through the op's schema
(``libra_fx.opset.schema(op).bias_rule``, see :func:`bias_rule`): given a relevant node, the rule names the constant
tensors it adds and how to lay them out against the node's output ``y``, so that the bias
contribution of that node is ``Σ ∂f/∂y ⊙ bias``. Linear/conv/norm biases, position embeddings and
class/register tokens (``add``/``cat`` with a constant), and an eval BatchNorm's implied bias
``β − γ·μ/√(σ²+ε)`` are covered; weights and layer-scale factors are multiplicative and are not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.fx as fx

from .analysis import Facts
from .opset import arg, schema


@dataclass(frozen=True)
class BiasSite:
    """A node that adds constants: ``combine(y, *args)`` is its bias, broadcastable to ``y``."""

    node: fx.Node
    args: tuple
    combine: Callable[..., torch.Tensor]


def _as_is(y, bias):
    return bias


def _negated(y, bias):
    return -bias


def _per_channel(y, bias):
    return bias.view(1, -1, *([1] * (y.dim() - 2)))


def _batch_norm_bias(y, mean, var, weight, bias, eps):
    scale = torch.rsqrt(var + eps) if weight is None else weight * torch.rsqrt(var + eps)
    implied = -mean * scale if bias is None else bias - mean * scale
    return _per_channel(y, implied)


def _clamped_part(y, x):
    return torch.where(y == x, torch.zeros_like(y), y)


def _cat_bias(y, live_mask: tuple, dim: int, *members):
    parts = [torch.zeros_like(m) if live else m for m, live in zip(members, live_mask)]
    return torch.cat(parts, dim)


def _mha_bias(y, in_proj_bias, out_proj_weight, out_proj_bias):
    """Attention rows sum to 1, so V's bias reaches the output as ``W_o·b_v`` on every token."""
    total = y.new_zeros(y.shape[-1])
    if in_proj_bias is not None:
        b_v = in_proj_bias[2 * y.shape[-1]:]
        total = total + out_proj_weight @ b_v
    return total if out_proj_bias is None else total + out_proj_bias


def _constant(facts: Facts, value) -> bool:
    if isinstance(value, fx.Node):
        return not facts.is_live(value)
    return isinstance(value, (int, float)) and value != 0


def _named_bias(name: str, combine) -> Callable[[Facts, fx.Node], Optional[BiasSite]]:
    def rule(facts: Facts, node: fx.Node) -> Optional[BiasSite]:
        bias = arg(node, name)
        return BiasSite(node, (bias,), combine) if isinstance(bias, fx.Node) and _constant(facts, bias) else None
    return rule


def _add_rule(facts: Facts, node: fx.Node) -> Optional[BiasSite]:
    a, b = arg(node, "input"), arg(node, "other")
    for live, other in ((a, b), (b, a)):
        if facts.is_live(live) and _constant(facts, other):
            return BiasSite(node, (other,), _as_is)
    return None


def _sub_rule(facts: Facts, node: fx.Node) -> Optional[BiasSite]:
    a, b = arg(node, "input"), arg(node, "other")
    if facts.is_live(a) and _constant(facts, b):
        return BiasSite(node, (b,), _negated)
    if facts.is_live(b) and _constant(facts, a):
        return BiasSite(node, (a,), _as_is)
    return None


def _cat_rule(facts: Facts, node: fx.Node) -> Optional[BiasSite]:
    members = arg(node, "tensors")
    dim = arg(node, "dim", 0)
    live_mask = tuple(facts.is_live(m) for m in members)
    if all(live_mask) or not any(live_mask):
        return None
    return BiasSite(node, (live_mask, dim, *members), _cat_bias)


def _batch_norm_rule(facts: Facts, node: fx.Node) -> Optional[BiasSite]:
    names = ("running_mean", "running_var", "weight", "bias", "eps")
    values = tuple(arg(node, n) for n in names)
    if values[0] is None:
        return None
    eps = values[4] if values[4] is not None else 1e-5
    return BiasSite(node, values[:4] + (eps,), _batch_norm_bias)


def _clamp_rule(facts: Facts, node: fx.Node) -> Optional[BiasSite]:
    return BiasSite(node, (arg(node, "input"),), _clamped_part)


def _mha_rule(facts: Facts, node: fx.Node) -> Optional[BiasSite]:
    values = tuple(arg(node, name) for name in ("in_proj_bias", "out_proj_weight", "out_proj_bias"))
    return BiasSite(node, values, _mha_bias)


#: rule name (``OpSchema.bias_rule``) -> rule
BIAS_RULES: dict[str, Callable[[Facts, fx.Node], Optional[BiasSite]]] = {
    "bias": _named_bias("bias", _as_is),                  # linear, layer_norm
    "channel_bias": _named_bias("bias", _per_channel),    # conv, group_norm
    "batch_norm": _batch_norm_rule,
    "add": _add_rule,
    "sub": _sub_rule,
    "cat": _cat_rule,
    "clamp": _clamp_rule,                                 # clamp, hardtanh, relu6
    "multihead_attention": _mha_rule,                     # balanced_multihead_attention
    # fused "constant + product" ops: the first operand is added as is (beta = 1 by default)
    "added_input": _named_bias("input", _as_is),          # addcmul, linear_addmm, baddbmm
}


def bias_rule(op: str) -> Optional[Callable[[Facts, fx.Node], Optional[BiasSite]]]:
    """The bias rule of canonical op ``op`` (its schema's ``bias_rule``), or ``None``.

    Example:
        >>> bias_rule("linear") is BIAS_RULES["bias"]
        True
    """
    op_schema = schema(op)
    return BIAS_RULES.get(op_schema.bias_rule) if op_schema is not None and op_schema.bias_rule else None


def bias_sites(facts: Facts) -> list[BiasSite]:
    """Every relevant node that adds a constant, with how to read its bias.

    Args:
        facts: the analysis of the (rewritten or plain) graph.

    Returns:
        One :class:`BiasSite` per node that adds bias terms, in graph order.

    Example:
        >>> import torch, libra_fx
        >>> gm = libra_fx.trace(torch.nn.Linear(3, 2))
        >>> [s.node.name for s in bias_sites(libra_fx.analysis.analyse(gm))]
        ['linear']
    """
    sites = []
    for node in facts.relevant:
        rule = bias_rule(facts.name(node))
        site = rule(facts, node) if rule and node.op == "call_function" else None
        if site is not None:
            sites.append(site)
    return sites
