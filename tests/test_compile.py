"""libra_fx.compile, the fast ops and the pruned backward (issue 6).

Cheap tests (eager, or ``aot_eager``/recording backends: no inductor) check the fast ops against the
``swap_backward`` forms and inspect the backward graphs. Two tests compile with inductor (tens of
seconds each on CPU): a one-block ViT-tiny and a one-block EVA02-tiny (SwiGLU + RoPE).
"""
from __future__ import annotations

import collections

import pytest
import timm
import torch
import torch.nn.functional as F
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.utils import counters

import libra_fx
from libra_fx import fast_ops
from libra_fx.compilation import compile as libra_compile
from libra_fx.compilation import lower
from libra_fx.graph_copy import copy_graph_module
from libra_fx.functional import GATES, balanced_activation, balanced_layer_norm, balanced_rms_norm
from libra_fx.ops import const, swap_backward

RTOL = 1e-5


# ---------------------------------------------------------------- reference (swap_backward) forms
def swap_layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
    """The ``swap_backward`` LayerNorm that ``balanced_layer_norm`` used before fast_ops."""
    dims = tuple(range(-len(shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    rstd = const(torch.rsqrt(centred.pow(2).mean(dims, keepdim=True) + eps))
    y = centred * rstd
    y = y * weight if weight is not None else y
    y = y + bias if bias is not None else y
    return swap_backward(F.layer_norm(x, shape, weight, bias, eps), y)


def swap_rms_norm(x, shape, weight=None, eps=None):
    dims = tuple(range(-len(shape), 0))
    eps_value = torch.finfo(x.dtype).eps if eps is None else eps
    y = x * const(torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps_value))
    return swap_backward(F.rms_norm(x, shape, weight, eps), y * weight if weight is not None else y)


def swap_activation(x, kind):
    return swap_backward(GATES[kind].activation(x), x * const(GATES[kind].formula(x)))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def grads(out, wrt, seed=0):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, wrt, g, allow_unused=True)


def leaf(*shape):
    return torch.randn(*shape).requires_grad_()


# ---------------------------------------------------------------- fast ops == swap forms (eager)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_fast_equals_swap(affine):
    x, w, b = leaf(3, 5, 16), leaf(16), leaf(16)
    w, b = (w, b) if affine else (None, None)
    fast, ref = balanced_layer_norm(x, (16,), w, b, 1e-6), swap_layer_norm(x, (16,), w, b, 1e-6)
    assert torch.equal(fast, F.layer_norm(x, (16,), w, b, 1e-6))
    wrt = [t for t in (x, w, b) if t is not None]
    for a, r in zip(grads(fast, wrt), grads(ref, wrt)):
        assert rel_err(a, r) <= RTOL


def test_layer_norm_fast_under_autocast():
    """Autocast runs ``F.layer_norm`` in float32: the fast op takes that path too (same value)."""
    x, w, b = leaf(2, 5, 16), leaf(16), leaf(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, ref = balanced_layer_norm(x, (16,), w, b), swap_layer_norm(x, (16,), w, b)
        assert torch.equal(fast, F.layer_norm(x, (16,), w, b))
    for a, r in zip(grads(fast, (x, w, b)), grads(ref, (x, w, b))):
        assert rel_err(a, r) <= RTOL


def test_rms_norm_fast_equals_swap():
    x, w = leaf(2, 7, 12), leaf(12)
    fast, ref = balanced_rms_norm(x, (12,), w), swap_rms_norm(x, (12,), w)
    assert torch.equal(fast, F.rms_norm(x, (12,), w))
    for a, r in zip(grads(fast, (x, w)), grads(ref, (x, w))):
        assert rel_err(a, r) <= RTOL


@pytest.mark.parametrize("kind", sorted(GATES))
def test_activation_fast_equals_swap(kind):
    x = leaf(4, 33)
    value = GATES[kind].activation(x)
    fast = balanced_activation(x, kind, value)
    assert torch.equal(fast, value)
    assert rel_err(grads(fast, x)[0], grads(swap_activation(x, kind), x)[0]) <= RTOL


@pytest.mark.parametrize("case", ["plain", "causal", "bool_mask", "float_mask", "scale", "gqa"])
def test_value_only_sdpa_equals_detached_sdpa(case):
    q, k, v = leaf(2, 4, 6, 8), leaf(2, 4, 6, 8), leaf(2, 4, 6, 8)
    keep = torch.rand(6, 6) > 0.3
    keep[:, 0] = True  # no fully masked row
    kwargs = {"plain": {}, "causal": {"is_causal": True}, "bool_mask": {"attn_mask": keep},
              "float_mask": {"attn_mask": torch.randn(6, 6)}, "scale": {"scale": 0.2},
              "gqa": {"enable_gqa": True}}[case]
    if case == "gqa":
        k, v = leaf(2, 2, 6, 8), leaf(2, 2, 6, 8)
    fast = fast_ops.value_only_sdpa(q, k, v, **kwargs)
    ref = F.scaled_dot_product_attention(const(q), const(k), v, **kwargs)
    assert torch.equal(fast, ref)
    fast_grads, ref_grads = grads(fast, (q, k, v)), grads(ref, (q, k, v))
    assert fast_grads[0] is None and fast_grads[1] is None
    assert rel_err(fast_grads[2], ref_grads[2]) <= RTOL


def test_fast_ops_same_gradients_compiled():
    """The autograd.Functions trace under dynamo + AOT autograd and give the eager gradients."""
    def block(x, w, b, v):
        h = balanced_layer_norm(x, (16,), w, b, 1e-6)
        h = balanced_activation(h, "silu", F.silu(h)) + balanced_rms_norm(h, (16,), w)
        q = h.unflatten(-1, (2, 8)).transpose(1, 2)
        return fast_ops.value_only_sdpa(q, q, v * q, is_causal=True)

    x, w, b, v = leaf(2, 5, 16), leaf(16), leaf(16), leaf(2, 2, 5, 8)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    eager_out, compiled_out = block(x, w, b, v), compiled(x, w, b, v)
    assert torch.allclose(eager_out, compiled_out, rtol=RTOL, atol=1e-6)
    for a, r in zip(grads(compiled_out, (x, w, b, v)), grads(eager_out, (x, w, b, v))):
        assert rel_err(a, r) <= RTOL


# ---------------------------------------------------------------- lowering and pruned backward graphs
def tiny_vit(fused_attn: bool = True, frozen: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=10).eval()
    model.blocks[0].attn.fused_attn = fused_attn
    for p in model.parameters():
        p.requires_grad_(not frozen)  # attribution: input gradients only
    return model


def test_lower_keeps_values_and_gradients():
    gm = libra_fx.transform(tiny_vit(frozen=False), torch.randn(2, 3, 32, 32))
    lowered = copy_graph_module(gm)
    assert lower(lowered) == 1
    assert "value_only_sdpa" in lowered.code and "value_only_sdpa" not in gm.code
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    assert torch.equal(lowered(x), gm(x))
    assert rel_err(grads(lowered(x), x)[0], grads(gm(x), x)[0]) <= RTOL


def backward_ops(module: torch.nn.Module) -> collections.Counter:
    """aten ops of the AOT-autograd backward graph of ``module`` for an input-gradient call."""
    store = {}

    def keep(name):
        def compiler(graph, example_inputs):
            store[name] = graph
            return make_boxed_func(graph)
        return compiler

    torch._dynamo.reset()
    compiled = torch.compile(module, backend=aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw")))
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    torch.autograd.grad(compiled(x)[:, 0].sum(), x)
    torch._dynamo.reset()
    return collections.Counter(str(n.target).replace("aten.", "").split(".")[0]
                               for n in store["bw"].graph.nodes if n.op == "call_function")


def test_backward_graph_pruned_explicit_attention():
    """``q@kᵀ → softmax → @v``: 4 bmm in the plain backward, 1 (dV = Pᵀ·dO) in the balanced one.

    Gone: dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q, the softmax backward, all three LayerNorm backwards
    and the GELU backward. The 5 ``mm`` (input gradients of qkv, proj, fc1, fc2, head) stay.
    """
    model = tiny_vit(fused_attn=False)
    plain = backward_ops(model)
    libra = backward_ops(libra_fx.transform(model, torch.randn(2, 3, 32, 32)))
    assert (plain["bmm"], libra["bmm"]) == (4, 1)
    assert plain["mm"] == libra["mm"] == 5
    assert plain["_softmax_backward_data"] == 1 and libra["_softmax_backward_data"] == 0
    assert plain["native_layer_norm_backward"] == 3 and libra["native_layer_norm_backward"] == 0
    assert plain["gelu_backward"] == 1 and libra["gelu_backward"] == 0


def test_backward_graph_pruned_fused_attention():
    """Fused SDPA: its backward kernel computes dQ, dK and dV together; lowering removes it.

    Plain and (unlowered) balanced backward both call ``_scaled_dot_product_*_backward``; the
    lowered balanced backward instead has 2 bmm (recompute ``q·kᵀ``, then ``Pᵀ·dO``) and no
    LayerNorm or GELU backward.
    """
    model = tiny_vit(fused_attn=True)
    gm = libra_fx.transform(model, torch.randn(2, 3, 32, 32))
    lowered = copy_graph_module(gm)
    lower(lowered)
    sdpa_backward = lambda ops: sum(n for op, n in ops.items() if op.startswith("_scaled_dot_product"))
    plain, unlowered, fast = backward_ops(model), backward_ops(gm), backward_ops(lowered)
    assert sdpa_backward(plain) == 1 and sdpa_backward(unlowered) == 1 and sdpa_backward(fast) == 0
    assert fast["bmm"] == 2 and fast["mm"] == plain["mm"]
    assert plain["native_layer_norm_backward"] == 3 and fast["native_layer_norm_backward"] == 0
    assert fast["gelu_backward"] == 0


# ---------------------------------------------------------------- inductor: gradients and recompiles
def input_grad(module, x, target):
    x = x.clone().requires_grad_()
    return torch.autograd.grad(module(x)[:, target].sum(), x)[0]


def unique_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_vit_gradients_no_recompile_on_batch_change():
    """Batch dim marked dynamic up front: batch sizes 2, 3, 5 and new targets compile once."""
    gm = libra_fx.transform(tiny_vit(frozen=False), torch.randn(2, 3, 32, 32))
    torch._dynamo.reset()
    counters.clear()
    compiled = libra_compile(gm)
    torch.manual_seed(1)
    for step, (batch, target) in enumerate([(2, 0), (3, 1), (5, 2), (4, 7)]):
        x = torch.randn(batch, 3, 32, 32)
        assert rel_err(input_grad(compiled, x, target), input_grad(gm, x, target)) <= RTOL
        if step == 0:
            first = unique_graphs()
    assert first == 1 and unique_graphs() == 1
    assert compiled.libra_report is gm.libra_report
    torch._dynamo.reset()


def test_compiled_eva02_gradients():
    """EVA02-tiny (SwiGLU, RoPE, fused attention) under inductor: eager gradients, one graph."""
    torch.manual_seed(0)
    model = timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=1, num_classes=10).eval()
    gm = libra_fx.transform(model, torch.randn(2, 3, 28, 28))
    torch._dynamo.reset()
    counters.clear()
    compiled = libra_compile(gm)
    for batch, target in [(2, 0), (3, 4)]:
        x = torch.randn(batch, 3, 28, 28)
        assert rel_err(input_grad(compiled, x, target), input_grad(gm, x, target)) <= RTOL
    assert unique_graphs() == 1
    torch._dynamo.reset()
