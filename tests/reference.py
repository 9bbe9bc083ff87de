"""Hand-patched LibraGrad reference models, written from the spec's formulas (spec §3).

Independent of libra_fx's machinery: no graph, no passes. A ``TorchFunctionMode`` re-implements the
functional ops of a model's forward with the Libra formulas (attention on detached q and k as an
explicit softmax, LayerNorm with a detached std, gated activations with a detached gate, ...), and
the self-gating products of GLU/SwiGLU MLPs and MambaOut's gated conv are replaced by modules that
halve the product's gradient (``0.5·p + [0.5·p]cst``). Tests compare the input gradients of
``libra_fx.transform(model)`` against ``reference_model(model)``.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        repeat = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(repeat, -3), v.repeat_interleave(repeat, -3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.detach() @ k.detach().transpose(-2, -1)) * scale
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        # the whole softmax is constant: a mask built from parameters (relative position) included
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask.detach()
    return torch.softmax(scores, -1) @ v


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    std = torch.sqrt(centred.pow(2).mean(dims, keepdim=True) + eps)
    y = centred / std.detach()
    return (y * weight if weight is not None else y) + (bias if bias is not None else 0)


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    dims = tuple(range(-len(normalized_shape), 0))
    y = x / torch.sqrt(x.pow(2).mean(dims, keepdim=True) + eps).detach()
    return y * weight if weight is not None else y


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    g = x.reshape(x.shape[0], num_groups, -1)
    centred = g - g.mean(-1, keepdim=True)
    y = (centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps).detach()).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return y * weight.view(shape) + bias.view(shape)


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        gate = 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    else:
        gate = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    return x * gate.detach()


def _silu(x, inplace=False):
    return x * torch.sigmoid(x).detach()


def _hardswish(x, inplace=False):
    return x * (F.relu6(x + 3) / 6).detach()


def _normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    return x / x.norm(p, dim, keepdim=True).clamp_min(eps).detach()


def _mha(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k, bias_v,
         add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True, key_padding_mask=None,
         need_weights=True, attn_mask=None, **unused):
    """Sequence-first MHA (as nn.MultiheadAttention calls it), q and k detached."""
    length, batch, dim = query.shape
    head = dim // num_heads
    w_q, w_k, w_v = in_proj_weight.chunk(3)
    b_q, b_k, b_v = in_proj_bias.chunk(3)
    split = lambda t: t.reshape(t.shape[0], batch * num_heads, head).transpose(0, 1)
    q, k, v = split(F.linear(query, w_q, b_q)), split(F.linear(key, w_k, b_k)), split(F.linear(value, w_v, b_v))
    attended = _sdpa(q, k, v, attn_mask=attn_mask)
    merged = attended.transpose(0, 1).reshape(length, batch, dim)
    return F.linear(merged, out_proj_weight, out_proj_bias), None


RULES = {
    F.scaled_dot_product_attention: _sdpa, F.layer_norm: _layer_norm, F.rms_norm: _rms_norm,
    F.group_norm: _group_norm, F.gelu: _gelu, F.silu: _silu, F.hardswish: _hardswish,
    F.normalize: _normalize, F.multi_head_attention_forward: _mha,
}


class LibraReferenceMode(TorchFunctionMode):
    """Runs the functional ops of a forward with the Libra formulas of spec §3."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        rule = RULES.get(func)
        return (rule or func)(*args, **(kwargs or {}))


def halve_grad(product: torch.Tensor) -> torch.Tensor:
    """Value ``p`` (exactly: 0.5·p + 0.5·p), gradient ``p/2``."""
    half = 0.5 * product
    return half + half.detach()


class RefGluMlp(nn.Module):
    """timm GluMlp / SwiGLU with the product's gradient halved."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        m = self.mlp
        if hasattr(m, "fc1_g"):
            product = m.act(m.fc1_g(x)) * m.fc1_x(x)
        else:
            x1, x2 = m.fc1(x).chunk(2, dim=m.chunk_dim)
            product = x1 * m.act(x2) if m.gate_last else m.act(x1) * x2
        return m.drop2(m.fc2(m.norm(m.drop1(halve_grad(product)))))


class RefGatedConvBlock(nn.Module):
    """MambaOut's gated conv block with the gate product's gradient halved."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        b = self.block
        shortcut = x
        g, i, c = torch.split(b.fc1(b.norm(x)), b.split_indices, dim=-1)
        c = b.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = b.fc2(halve_grad(b.act(g) * torch.cat((i, c), dim=-1)))
        return b.drop_path(b.ls(y)) + shortcut


def _replacements():
    from timm.layers.mlp import GluMlp, SwiGLU
    from timm.models.mambaout import GatedConvBlock
    return {GluMlp: RefGluMlp, SwiGLU: RefGluMlp, GatedConvBlock: RefGatedConvBlock}


def _replace_products(module: nn.Module) -> None:
    table = _replacements()
    for name, child in module.named_children():
        wrapper = table.get(type(child))
        if wrapper is not None:
            setattr(module, name, wrapper(child))
        else:
            _replace_products(child)


class ReferenceModel(nn.Module):
    """A copy of ``model`` whose forward follows the Libra formulas."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model)
        _replace_products(self.model)

    def forward(self, *args, **kwargs):
        with LibraReferenceMode():
            return self.model(*args, **kwargs)


def input_gradient(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """∇ₓ of the target score (class index or callable) summed over the batch."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    score = target(out) if callable(target) else out[:, target]
    (grad,) = torch.autograd.grad(score.sum(), x)
    return grad


def all_gradients(forward, x: torch.Tensor, target, parameters: list) -> list[torch.Tensor]:
    """∇ of the target score (summed over the batch) w.r.t. ``x`` and each of ``parameters``
    (zeros where a parameter gets none): the gradients a user reads from ``.grad``."""
    x = x.detach().clone().requires_grad_(True)
    out = forward(x)
    score = target(out) if callable(target) else out[:, target]
    grads = torch.autograd.grad(score.sum(), [x, *parameters], allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip([x, *parameters], grads)]


def reference_parameters(reference, model: nn.Module) -> list[nn.Parameter]:
    """``model``'s parameters as ``reference`` uses them, in ``model.parameters()`` order: a
    :class:`ReferenceModel` holds a copy (its wrappers keep the order), a hand-written reference
    function uses the model's own."""
    return list(reference.parameters()) if isinstance(reference, nn.Module) else list(model.parameters())


def gradient_mismatches(balanced, reference, model: nn.Module, x: torch.Tensor, target,
                        tolerance: float = 1e-5) -> list[str]:
    """Names of the inputs/parameters whose gradient in ``balanced`` differs from ``reference``'s
    (relative difference above ``tolerance``, beyond round-off of the largest gradient; where the
    reference gradient is exactly zero, any non-zero gradient is a mismatch: q/k projections behind
    a detached softmax get none)."""
    names = ["input"] + [n for n, _ in model.named_parameters()]
    actual = all_gradients(balanced, x, target, list(model.parameters()))
    expected = all_gradients(reference, x, target, reference_parameters(reference, model))
    round_off = 1e-10 * max(e.norm().item() for e in expected)
    wrong = []
    for name, a, e in zip(names, actual, expected):
        zero = not e.any()
        if (zero and a.any()) or (a - e).norm().item() > tolerance * e.norm().item() + round_off:
            wrong.append(name)
    return wrong


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
