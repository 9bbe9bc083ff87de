"""Cheaper formulations of the balanced ops, as custom ``torch.autograd.Function``s.

The ``swap_backward`` forms in :mod:`libra_fx.functional` are exact but do extra work: the forward
computes the original op *and* the Libra expression (``x·gate(x)``, ``(x−μ)·rstd·γ+β``) only to
subtract it again, and autograd keeps the intermediates alive for the backward. Each function here
computes the original op once in the forward (bit-identical values in eager mode: it *is* the same
call) and writes the Libra backward by hand:

=====================  ==========================================  ==================================
op                      forward                                     backward (what is computed)
=====================  ==========================================  ==================================
gated activation        ``act(x)`` (the graph's own value)          ``g·gate(x)``
LayerNorm               ``F.layer_norm`` (``native_layer_norm``)     ``(g·γ − mean(g·γ))·rstd``, Σ g·x̂, Σ g
RMSNorm                 ``F.rms_norm``                              ``g·γ·s``, Σ g·x·s  (s = rsqrt(mean x²+ε))
attention, value-only   ``F.scaled_dot_product_attention``          ``softmax(q·kᵀ·scale+mask)ᵀ·g`` only
=====================  ==========================================  ==================================

The gradients equal those of the ``swap_backward`` forms (up to float round-off: ``rstd`` comes from
the fused kernel, not from a second ``rsqrt(mean(...))``); ``tests/test_compile.py``
checks this in eager mode and under ``torch.compile``. Weight and bias gradients are only computed
when those tensors require grad (``ctx.needs_input_grad``).

Why the value-only attention matters: with ``q`` and ``k`` detached, PyTorch's fused attention
backward (``_scaled_dot_product_*_backward``) still computes dQ and dK (it has no output mask) and
throws them away; :func:`value_only_sdpa` computes dV alone, with two matmuls instead of five.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["gated_activation", "layer_norm_const_std", "rms_norm_const_scale", "value_only_sdpa"]

def _opmath(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype for the reductions in a backward (float32 for half types)."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _leading_sum(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Sum over every dimension but the last ``ndim`` (the normalised ones): a weight's gradient."""
    return t.sum(tuple(range(t.dim() - ndim))) if t.dim() > ndim else t


class _GatedActivation(torch.autograd.Function):
    """Value ``act(x)``, backward ``g·gate(x)`` (the Jacobian of ``x·[gate(x)]cst``)."""

    @staticmethod
    def forward(ctx, x, value, gate):
        ctx.save_for_backward(x)
        ctx.gate = gate
        # a clone, not ``value`` itself: returning an input makes the output a view of it, and a
        # later in-place op on a custom Function's view output is an error.
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # the gate is a constant: computed on a detached x, so a double backward sees it as one too
        return grad * ctx.gate(x.detach()), None, None


def gated_activation(x: torch.Tensor, value: torch.Tensor, gate) -> torch.Tensor:
    """``value`` (= ``x·gate(x)``) with the gradient of ``x·[gate(x)]cst``.

    Args:
        x: the activation's input.
        value: the activation's output, computed by the caller (so it is bit-identical to it).
        gate: ``x -> gate(x)``, e.g. ``torch.sigmoid`` for SiLU.

    Returns:
        A copy of ``value`` whose backward is ``grad · gate(x)``.

    Example:
        >>> x = torch.randn(5, requires_grad=True)
        >>> y = gated_activation(x, F.silu(x), torch.sigmoid)
        >>> torch.allclose(torch.autograd.grad(y.sum(), x)[0], torch.sigmoid(x))
        True
    """
    return _GatedActivation.apply(x, value.detach(), gate)


class _LayerNormConstStd(torch.autograd.Function):
    """``F.layer_norm`` value; backward of ``(x−μ)·[rstd]cst·γ+β``."""

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):
        ctx.ndim, ctx.eps = len(normalized_shape), eps
        if torch.is_autocast_enabled(x.device.type):
            # autocast runs F.layer_norm in float32 but not native_layer_norm: call the former for
            # the model's exact value, and recompute the statistics in the backward.
            ctx.save_for_backward(x, weight, None, None)
            return F.layer_norm(x, normalized_shape, weight, bias, eps)
        # what F.layer_norm dispatches to (same values), and it hands us mean and rstd for free
        out, mean, rstd = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        dims = tuple(range(-ctx.ndim, 0))
        g = grad.to(_opmath(x))
        if rstd is None:
            var, mean = torch.var_mean(x.to(g.dtype), dims, unbiased=False, keepdim=True)
            rstd = torch.rsqrt(var + ctx.eps)
        gw = g if weight is None else g * weight.to(g.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # d/dx of (x − mean(x))·rstd·γ with rstd constant: only the centring remains.
            grad_x = ((gw - gw.mean(dims, keepdim=True)).mul_(rstd)).to(x.dtype)
        if weight is not None and ctx.needs_input_grad[2]:
            x_hat = (x.to(g.dtype) - mean) * rstd
            grad_w = _leading_sum(g * x_hat, ctx.ndim).to(weight.dtype)
        if ctx.needs_input_grad[3]:
            grad_b = _leading_sum(g, ctx.ndim).to(grad.dtype)
        return grad_x, None, grad_w, grad_b, None


def layer_norm_const_std(x: torch.Tensor, normalized_shape: Sequence[int] | int,
                         weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                         eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm whose standard deviation is a constant in the backward (spec §3).

    Args:
        x, normalized_shape, weight, bias, eps: as for :func:`torch.nn.functional.layer_norm`.

    Returns:
        ``F.layer_norm(x, ...)`` in value; gradient ``(g·γ − mean(g·γ))·rstd`` for ``x``,
        ``Σ g·x̂`` for ``weight`` and ``Σ g`` for ``bias``.

    Example:
        >>> x = torch.randn(2, 5)
        >>> torch.equal(layer_norm_const_std(x, (5,)), F.layer_norm(x, (5,)))
        True
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return _LayerNormConstStd.apply(x, shape, weight, bias, eps)


class _RMSNormConstScale(torch.autograd.Function):
    """``F.rms_norm`` value; backward of ``x·[rsqrt(mean x²+ε)]cst·γ``."""

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, eps):
        ctx.save_for_backward(x, weight)
        ctx.shape, ctx.eps = normalized_shape, eps
        return F.rms_norm(x, normalized_shape, weight, eps)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        dims = tuple(range(-len(ctx.shape), 0))
        xf = x.to(_opmath(x))
        eps = torch.finfo(x.dtype).eps if ctx.eps is None else ctx.eps
        scale = torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + eps)
        g = grad.to(xf.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            gw = g if weight is None else g * weight.to(g.dtype)
            grad_x = (gw * scale).to(x.dtype)
        if weight is not None and ctx.needs_input_grad[2]:
            grad_w = _leading_sum(g * xf * scale, len(ctx.shape)).to(weight.dtype)
        return grad_x, None, grad_w, None


def rms_norm_const_scale(x: torch.Tensor, normalized_shape: Sequence[int] | int,
                         weight: Optional[torch.Tensor] = None, eps: Optional[float] = None) -> torch.Tensor:
    """RMSNorm whose scale ``rsqrt(mean x²+ε)`` is a constant in the backward.

    Args:
        x, normalized_shape, weight, eps: as for :func:`torch.nn.functional.rms_norm`.

    Returns:
        ``F.rms_norm(x, ...)`` in value; gradient ``g·γ·s`` for ``x`` and ``Σ g·x·s`` for ``weight``.

    Example:
        >>> x = torch.randn(2, 5)
        >>> torch.equal(rms_norm_const_scale(x, (5,)), F.rms_norm(x, (5,)))
        True
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return _RMSNormConstScale.apply(x, shape, weight, eps)


def _attention_bias(attn_mask, is_causal: bool, n_q: int, n_k: int, like: torch.Tensor):
    """The additive score bias that ``F.scaled_dot_product_attention`` applies, or ``None``."""
    bias = None
    if is_causal:
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=like.device).tril()
        bias = torch.zeros(n_q, n_k, dtype=like.dtype, device=like.device).masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        mask = attn_mask
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(~mask, float("-inf"))
        bias = mask.to(like.dtype) if bias is None else bias + mask.to(like.dtype)
    return bias


class _ValueOnlySDPA(torch.autograd.Function):
    """Attention with constant weights: value of SDPA, gradient for ``value`` only."""

    @staticmethod
    def forward(ctx, query, key, value, attn_mask, is_causal, scale, enable_gqa):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0,
                                             is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        ctx.save_for_backward(query, key, attn_mask)
        ctx.is_causal, ctx.scale, ctx.value_shape = is_causal, scale, value.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, attn_mask = ctx.saved_tensors
        dtype = _opmath(query)
        q, k = query.to(dtype), key.to(dtype)
        groups = q.shape[-3] // k.shape[-3] if q.dim() >= 3 and k.dim() >= 3 else 1
        if groups > 1:  # grouped-query attention: each key head serves `groups` query heads
            k = k.repeat_interleave(groups, dim=-3)
        scale = ctx.scale if ctx.scale is not None else q.shape[-1] ** -0.5
        scores = q @ k.transpose(-2, -1) * scale
        bias = _attention_bias(attn_mask, ctx.is_causal, q.shape[-2], k.shape[-2], scores)
        probs = (scores if bias is None else scores + bias).softmax(-1)
        # dV = Pᵀ·dO: the only gradient a constant-weight attention passes on (no dP, dQ, dK).
        grad_v = probs.transpose(-2, -1) @ grad.to(dtype)
        if groups > 1:
            grad_v = grad_v.unflatten(-3, (-1, groups)).sum(-3)
        grad_v = grad_v.sum_to_size(ctx.value_shape).to(grad.dtype)
        return None, None, grad_v, None, None, None, None


def value_only_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                    is_causal: bool = False, scale: Optional[float] = None,
                    enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with constant attention weights: ``[softmax(·)]cst·V``.

    Same value as ``F.scaled_dot_product_attention(const(q), const(k), v, ...)`` (it is that call);
    the backward recomputes the attention weights ``P`` and returns ``Pᵀ·g`` for ``value`` only.

    Args:
        query, key, value, attn_mask, is_causal, scale, enable_gqa: as for
            :func:`torch.nn.functional.scaled_dot_product_attention`.
        dropout_p: must be 0 (attribution runs in eval mode); otherwise the fused op is used with
            detached ``query`` and ``key``.

    Returns:
        The attention output; no gradient reaches ``query`` or ``key``.

    Example:
        >>> q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
        >>> v.requires_grad_()
        >>> out = value_only_sdpa(q, k, v)
        >>> torch.equal(out, F.scaled_dot_product_attention(q, k, v))
        True
    """
    if dropout_p != 0.0:  # random masks would have to be replayed in the backward: keep the fused op
        return F.scaled_dot_product_attention(query.detach(), key.detach(), value, attn_mask=attn_mask,
                                              dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                                              enable_gqa=enable_gqa)
    return _ValueOnlySDPA.apply(query.detach(), key.detach(), value, attn_mask, is_causal, scale, enable_gqa)
