"""Balanced (LibraGrad) versions of the ops the passes rewrite.

Each function returns *exactly* the value of the original op (it calls that op) and carries the
gradient of the Libra form of spec §3 through :func:`libra_fx.ops.swap_backward` (or, for the
activations and norms, through the equivalent hand-written backward of :mod:`libra_fx.fast_ops`,
which skips computing the Libra expression in the forward). A pass replaces a
node by one call to one of these, so the rewritten graph stays readable: ``balanced_layer_norm``
where ``layer_norm`` stood.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import fast_ops
from .ops import const, swap_backward
from .opset import Kind, register_function

__all__ = [
    "Gate", "GATES", "balanced_activation", "balanced_layer_norm", "balanced_rms_norm",
    "balanced_group_norm", "balanced_normalize", "linearized", "balanced_multihead_attention",
    "BALANCED_OPS",
]


def _gelu_tanh_gate(x: torch.Tensor) -> torch.Tensor:
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))
    return 0.5 * (1.0 + torch.tanh(inner))


@dataclass(frozen=True)
class Gate:
    """A gated activation ``act(x) = x·gate(x)`` (spec §3).

    Attributes:
        activation: ``x -> act(x)``, the op itself (the value when the graph did not compute it).
        formula: ``x -> gate(x)``, spelled out.
        kernel: a single-kernel ``gate`` with the same values where the formula takes several
            (``ndtr(x) = ½(1+erf(x/√2))``), or ``None``; the backward uses it when present.
    """

    activation: Callable[[torch.Tensor], torch.Tensor]
    formula: Callable[[torch.Tensor], torch.Tensor]
    kernel: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    @property
    def gate(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The gate the backward computes: ``kernel`` if there is one, else ``formula``."""
        return self.kernel if self.kernel is not None else self.formula


#: every gated activation the passes know, by the ``kind`` :func:`balanced_activation` takes.
GATES: dict[str, Gate] = {
    "gelu": Gate(F.gelu, lambda x: 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0)))), torch.special.ndtr),
    "gelu_tanh": Gate(lambda x: F.gelu(x, approximate="tanh"), _gelu_tanh_gate),
    "silu": Gate(F.silu, torch.sigmoid),
    "quick_gelu": Gate(lambda x: x * torch.sigmoid(1.702 * x), lambda x: torch.sigmoid(1.702 * x)),
    "hardswish": Gate(F.hardswish, lambda x: F.relu6(x + 3.0) / 6.0),
    "mish": Gate(F.mish, lambda x: torch.tanh(F.softplus(x))),
}


@register_function(Kind.BALANCED, gradient_arg="x")
def balanced_activation(x: torch.Tensor, kind: str, value: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x * [gate(x)]cst`` in gradient, ``act(x)`` in value.

    Args:
        x: the activation's input.
        kind: a key of :data:`GATES` (``"gelu"``, ``"gelu_tanh"``, ``"silu"``, ``"quick_gelu"``,
            ``"hardswish"``, ``"mish"``).
        value: the original op's output when the graph already computed it (keeps the value
            bit-identical to the op the model used); computed from ``kind`` otherwise.

    Returns:
        The activation with a linear-in-x backward.

    Example:
        >>> x = torch.randn(4, requires_grad=True)
        >>> y = balanced_activation(x, "gelu"); torch.equal(y, F.gelu(x))
        True
    """
    gate = GATES[kind]
    out = gate.activation(x) if value is None else value
    # same gradient as swap_backward(out, x * const(gate(x))), without computing x·gate(x) forward
    return fast_ops.gated_activation(x, out, gate.gate)


def _affine(y: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> torch.Tensor:
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


@register_function(Kind.BALANCED, twin_of=("layer_norm",), bias_rule="bias")
def balanced_layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """LayerNorm with a constant standard deviation: ``(x−μ)/[√(σ²+ε)]cst·γ+β``.

    Args:
        x, normalized_shape, weight, bias, eps: as for :func:`torch.nn.functional.layer_norm`.

    Returns:
        ``F.layer_norm(x, ...)`` in value; mean-centring keeps its gradient, the std does not.

    Example:
        >>> x = torch.randn(2, 5)
        >>> torch.equal(balanced_layer_norm(x, (5,)), F.layer_norm(x, (5,)))
        True
    """
    # = swap_backward(F.layer_norm(...), (x−μ)·const(rstd)·γ+β), with a hand-written backward
    return fast_ops.layer_norm_const_std(x, normalized_shape, weight, bias, eps)


@register_function(Kind.BALANCED, twin_of=("rms_norm",))
def balanced_rms_norm(x, normalized_shape, weight=None, eps: Optional[float] = None):
    """RMSNorm with a constant scale: ``x·[rsqrt(mean x²+ε)]cst·γ``.

    Args:
        x, normalized_shape, weight, eps: as for :func:`torch.nn.functional.rms_norm`.

    Returns:
        ``F.rms_norm(x, ...)`` in value, gradient of ``x * const(rsqrt(...)) * weight``.

    Example:
        >>> x = torch.randn(2, 5)
        >>> torch.equal(balanced_rms_norm(x, (5,)), F.rms_norm(x, (5,)))
        True
    """
    # = swap_backward(F.rms_norm(...), x·const(rsqrt(mean x²+ε))·γ), with a hand-written backward
    return fast_ops.rms_norm_const_scale(x, normalized_shape, weight, eps)


def _channel_view(param: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    return None if param is None else param.view(1, -1, *([1] * (x.dim() - 2)))


@register_function(Kind.BALANCED, twin_of=("group_norm",), bias_rule="channel_bias")
def balanced_group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """GroupNorm with a constant per-group std (the LayerNorm rule per group).

    Args:
        x, num_groups, weight, bias, eps: as for :func:`torch.nn.functional.group_norm`.

    Returns:
        ``F.group_norm(x, ...)`` in value; per-group centring keeps its gradient.

    Example:
        >>> x = torch.randn(2, 4, 3, 3)
        >>> torch.equal(balanced_group_norm(x, 2), F.group_norm(x, 2))
        True
    """
    grouped = x.reshape(x.shape[0], num_groups, -1)
    centred = grouped - grouped.mean(-1, keepdim=True)
    rstd = const(torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps))
    normalised = (centred * rstd).reshape(x.shape)
    value = F.group_norm(x, num_groups, weight, bias, eps)
    return swap_backward(value, _affine(normalised, _channel_view(weight, x), _channel_view(bias, x)))


@register_function(Kind.BALANCED, twin_of=("normalize",))
def balanced_normalize(x, p: float = 2.0, dim: int = 1, eps: float = 1e-12):
    """L2 (or Lp) normalisation with a constant norm: ``x·[1/‖x‖]cst``.

    Args:
        x, p, dim, eps: as for :func:`torch.nn.functional.normalize`.

    Returns:
        ``F.normalize(x, p, dim, eps)`` in value.

    Example:
        >>> x = torch.randn(3, 8)
        >>> torch.equal(balanced_normalize(x, dim=-1), F.normalize(x, dim=-1))
        True
    """
    norm = const(x.norm(p, dim, keepdim=True).clamp_min(eps))
    return swap_backward(F.normalize(x, p, dim, eps), x / norm)


@register_function(Kind.BALANCED, gradient_arg="x")
def linearized(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x·[f(x)/x]cst`` for an elementwise ``f`` with ``f(0)=0``: balanced, value unchanged.

    Where ``x == 0`` the slope is taken as 0 (the term contributes ``0·slope = 0`` either way).

    Args:
        value: ``f(x)``, the original op's output.
        x: its input (same shape).

    Returns:
        ``value`` with a gradient linear in ``x``.

    Example:
        >>> x = torch.randn(5, requires_grad=True)
        >>> y = linearized(torch.tanh(x), x); torch.equal(y, torch.tanh(x))
        True
    """
    safe_x = torch.where(x == 0, torch.ones_like(x), x)
    slope = torch.where(x == 0, torch.zeros_like(x), value / safe_x)
    return swap_backward(value, x * const(slope))


def _value_only_projections(in_proj_weight, in_proj_bias, q_proj_weight, k_proj_weight, v_proj_weight):
    """The q/k/v projections with the q and k parts constant: their weights and biases reach the
    output only through the softmax, so in the balanced graph they get no gradient."""
    if in_proj_weight is not None:
        q_proj_weight, k_proj_weight, v_proj_weight = in_proj_weight.chunk(3)
    if in_proj_bias is not None:
        q_bias, k_bias, v_bias = in_proj_bias.chunk(3)
        in_proj_bias = torch.cat((const(q_bias), const(k_bias), v_bias))
    return const(q_proj_weight), const(k_proj_weight), v_proj_weight, in_proj_bias


@register_function(Kind.BALANCED, twin_of=("multihead_attention",), bias_rule="multihead_attention")
def balanced_multihead_attention(query, key, value, in_proj_weight, in_proj_bias, q_proj_weight,
                                 k_proj_weight, v_proj_weight, bias_k, bias_v, out_proj_weight,
                                 out_proj_bias, num_heads: int, add_zero_attn: bool,
                                 batch_first: bool, attn_mask=None, key_padding_mask=None,
                                 is_causal: bool = False):
    """``nn.MultiheadAttention`` output with constant attention weights (q and k detached).

    Only the value path carries gradient: q, k, their projection weights and biases and ``bias_k``
    are constants, so no parameter gets gradient through the softmax. The caller swaps this in as the backward of the module's
    own output, so the forward value stays the module's.

    Returns:
        The attention output (first element of ``nn.MultiheadAttention``'s result).
    """
    query, key = const(query), const(key)
    if batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    q_proj_weight, k_proj_weight, v_proj_weight, in_proj_bias = _value_only_projections(
        in_proj_weight, in_proj_bias, q_proj_weight, k_proj_weight, v_proj_weight)
    out, _ = F.multi_head_attention_forward(
        query, key, value, query.shape[-1], num_heads, None, in_proj_bias,
        None if bias_k is None else const(bias_k), bias_v,
        add_zero_attn, 0.0, out_proj_weight, out_proj_bias, training=False,
        key_padding_mask=key_padding_mask, need_weights=False, attn_mask=attn_mask,
        use_separate_proj_weight=True, q_proj_weight=q_proj_weight, k_proj_weight=k_proj_weight,
        v_proj_weight=v_proj_weight, is_causal=is_causal)
    return out.transpose(0, 1) if batch_first else out


#: every function above, for the analysis: they are balanced by construction.
BALANCED_OPS = (balanced_activation, balanced_layer_norm, balanced_rms_norm, balanced_group_norm,
                balanced_normalize, linearized, balanced_multihead_attention)
