"""Each pass alone, on the smallest module that shows its pattern: forward bit-identical, the pass
rewrote what it should, input gradients equal the hand-written Libra formula, FullGrad complete."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import libra_fx
import passes
from libra_fx.runner import fullgrad_terms

from .archgen import StarReLU, gelu_new
from .reference import ReferenceModel, gradient_mismatches, input_gradient, relative_difference

torch.manual_seed(0)
D = 8


class SDPA(nn.Module):
    def __init__(self, causal=False, gqa=False):
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.causal, self.gqa = causal, gqa

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, 2, D // 2).permute(2, 0, 3, 1, 4).unbind(0)
        if self.gqa:
            k, v = k[:, :1], v[:, :1]
        mask = torch.zeros(x.shape[1], x.shape[1]) if not self.causal else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal, enable_gqa=self.gqa)
        return self.proj(y.transpose(1, 2).reshape(x.shape)).sum(1)


class ExplicitAttention(nn.Module):
    def __init__(self, einsum=False):
        super().__init__()
        self.qkv, self.proj, self.einsum = nn.Linear(D, 3 * D), nn.Linear(D, D), einsum

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(D)).softmax(dim=-1)
        y = torch.einsum("bij,bjd->bid", attn, v) if self.einsum else attn @ v
        return self.proj(y).sum(1)


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0].sum(1)


class Norms(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.fc = nn.Linear(D, D)
        self.norm = {"layer": nn.LayerNorm(D), "rms": nn.RMSNorm(D), "group": nn.GroupNorm(2, D)}[kind]
        self.kind = kind

    def forward(self, x):
        h = self.fc(x)
        if self.kind == "group":
            return self.norm(h.transpose(1, 2)).sum(-1)
        return self.norm(h).sum(1)


class LayerNorm2d(nn.Module):
    """timm-style channels-first LayerNorm: permute, layer_norm, permute back."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, D, 1), nn.LayerNorm(D)

    def forward(self, x):
        return self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2).mean((2, 3))


class HandNorm(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.fc, self.kind = nn.Linear(D, D), kind

    def forward(self, x):
        h = self.fc(x)
        if self.kind == "layer":
            mu = h.mean(-1, keepdim=True)
            return ((h - mu) / torch.sqrt(h.var(-1, keepdim=True, unbiased=False) + 1e-5)).sum(1)
        if self.kind == "rms":
            return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).sum(1)
        return (h / h.norm(dim=-1, keepdim=True)).sum(1)


class Activation(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(D, 2 * D), nn.Linear(2 * D, D), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))).sum(1)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class SwiGLU(nn.Module):
    def __init__(self, factors=2):
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(D, D) for _ in range(factors))
        self.out = nn.Linear(D, D)

    def forward(self, x):
        product = F.silu(self.fcs[0](x))
        for fc in self.fcs[1:]:
            product = product * fc(x)
        return self.out(product).sum(1)


class L2(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(D, D)

    def forward(self, x):
        return F.normalize(self.fc(x), dim=-1).sum(1)


def _detached_gate(gate):
    return lambda x: x * gate(x).detach()


def _ref_swiglu(m: SwiGLU, factors: int):
    def forward(x):
        product = _detached_gate(torch.sigmoid)(m.fcs[0](x))
        for fc in m.fcs[1:]:
            product = product * fc(x)
        scale = 1.0 / factors
        return m.out(product * scale + (product * (1 - scale)).detach()).sum(1)
    return forward


def _ref_quick_gelu(m: Activation):
    return lambda x: m.fc2(_detached_gate(lambda h: torch.sigmoid(1.702 * h))(m.fc1(x))).sum(1)


def _ref_tanh(m: Activation):
    return lambda x: m.fc2(_detached_gate(lambda h: torch.where(h == 0, torch.zeros_like(h), torch.tanh(h) / h))(m.fc1(x))).sum(1)


def _ref_hand_norm(m: HandNorm):
    def forward(x):
        h = m.fc(x)
        if m.kind == "layer":
            c = h - h.mean(-1, keepdim=True)
            return (c / torch.sqrt(h.var(-1, keepdim=True, unbiased=False) + 1e-5).detach()).sum(1)
        if m.kind == "rms":
            return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6).detach()).sum(1)
        return (h / h.norm(dim=-1, keepdim=True).detach()).sum(1)
    return forward


def _ref_gelu_new(m: Activation):
    gate = lambda h: 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
    return lambda x: m.fc2(_detached_gate(gate)(m.fc1(x))).sum(1)


def _ref_star_relu(m: Activation):
    def forward(x):
        squared = F.relu(m.fc1(x)) ** 2
        halved = 0.5 * squared + (0.5 * squared).detach()
        return m.fc2(m.act.scale * halved + m.act.bias).sum(1)
    return forward


def _via_mode(m):
    return ReferenceModel(m)


# (case id, module factory, input shape, pass expected to fire, reference factory)
CASES = [
    ("sdpa_mask", lambda: SDPA(), (2, 5, D), "sdpa_attention", _via_mode),
    ("sdpa_causal", lambda: SDPA(causal=True), (2, 5, D), "sdpa_attention", _via_mode),
    ("sdpa_gqa", lambda: SDPA(gqa=True), (2, 5, D), "sdpa_attention", _via_mode),
    ("softmax_matmul", lambda: ExplicitAttention(), (2, 5, D), "softmax_attention", None),
    ("softmax_einsum", lambda: ExplicitAttention(einsum=True), (2, 5, D), "softmax_attention", None),
    ("multihead_attention", MHA, (2, 5, D), "multihead_attention", _via_mode),
    ("layer_norm", lambda: Norms("layer"), (2, 5, D), "normalization", _via_mode),
    ("rms_norm", lambda: Norms("rms"), (2, 5, D), "normalization", _via_mode),
    ("group_norm", lambda: Norms("group"), (2, 5, D), "normalization", _via_mode),
    ("layer_norm_2d", LayerNorm2d, (2, 3, 4, 4), "normalization", _via_mode),
    ("l2_normalize", L2, (2, 5, D), "l2_normalize", _via_mode),
    ("gelu", lambda: Activation(nn.GELU()), (2, 5, D), "gated_activation", _via_mode),
    ("gelu_tanh", lambda: Activation(nn.GELU(approximate="tanh")), (2, 5, D), "gated_activation", _via_mode),
    ("silu_functional", lambda: Activation(Lambda(F.silu)), (2, 5, D), "gated_activation", _via_mode),
    ("hardswish", lambda: Activation(nn.Hardswish()), (2, 5, D), "gated_activation", _via_mode),
    ("quick_gelu_hand", lambda: Activation(Lambda(quick_gelu)), (2, 5, D), "multiplicative_gate", _ref_quick_gelu),
    ("rms_norm_hand", lambda: HandNorm("rms"), (2, 5, D), "multiplicative_gate", _ref_hand_norm),
    ("layer_norm_hand", lambda: HandNorm("layer"), (2, 5, D), "divisor", _ref_hand_norm),
    ("l2_hand", lambda: HandNorm("l2"), (2, 5, D), "divisor", _ref_hand_norm),
    ("swiglu", lambda: SwiGLU(2), (2, 5, D), "gated_product", lambda m: _ref_swiglu(m, 2)),
    ("triple_product", lambda: SwiGLU(3), (2, 5, D), "gated_product", lambda m: _ref_swiglu(m, 3)),
    ("tanh_unknown", lambda: Activation(nn.Tanh()), (2, 5, D), "linearize_activation", _ref_tanh),
    ("gelu_new_hand", lambda: Activation(Lambda(gelu_new)), (2, 5, D), "multiplicative_gate", _ref_gelu_new),
    ("star_relu_power", lambda: Activation(StarReLU()), (2, 5, D), "power", _ref_star_relu),
]


def _explicit_reference(m: ExplicitAttention):
    def forward(x):
        q, k, v = m.qkv(x).chunk(3, -1)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(D)).softmax(dim=-1).detach()
        return m.proj(attn @ v).sum(1)
    return forward


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pass(case):
    name, factory, shape, expected_pass, reference = case
    torch.manual_seed(0)
    model = factory().double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    balanced = libra_fx.transform(model, x, strict=True)
    assert expected_pass in balanced.libra_report.counts(), balanced.libra_report.counts()
    with torch.no_grad():
        assert torch.equal(balanced(x), model(x))
    ref = (reference or _explicit_reference)(model)
    expected = input_gradient(lambda t: ref(t), x, 0)
    assert relative_difference(input_gradient(balanced, x, 0), expected) <= 1e-5
    assert gradient_mismatches(balanced, ref, model, x, 0) == []  # every parameter's .grad is the Libra one
    assert fullgrad_terms(balanced, (x,), 0).completeness_error.max().item() <= 1e-8


def test_every_pass_has_a_case_and_a_formula():
    covered = {c[3] for c in CASES}
    assert covered == set(passes.REGISTRY)
    for p in passes.REGISTRY.values():
        assert "→" in p.doc, f"{p.name}: docstring must give the formula"


@pytest.mark.parametrize("group", ["attention", "norm", "activation", "gate"])
def test_ablation_leaves_its_group_unbalanced(group):
    """``passes=`` without one group leaves exactly that group's pattern reported (paper's ablation)."""
    import timm
    model = timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=1, num_classes=3).eval()
    others = [g for g in ("attention", "norm", "activation", "gate") if g != group]
    with pytest.warns(UserWarning):
        partial = libra_fx.transform(model, passes=others)
    assert partial.libra_report.unbalanced
    assert not set(partial.libra_report.counts()) & set(passes.GROUPS[group])


def test_unknown_pass_name_is_reported():
    with pytest.raises(ValueError, match="unknown pass"):
        libra_fx.transform(nn.Linear(2, 2), passes=["nope"])
