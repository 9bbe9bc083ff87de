"""Hugging Face ``transformers`` architectures, built from tiny random configs, through libra_fx.

For every entry of :data:`benchmarks.hf_zoo.HF_ZOO`: the forward is bit-identical, the model is
untouched, and FullGrad is complete — measured the independent way, from ``.grad`` of the inputs
and of every additive parameter found by name (:func:`libra_fx.grad_completeness.grad_completeness`), and
agreeing with libra_fx's own ``completeness_error``. Where balance is impossible the audit names
the ops and ``strict=True`` raises. An entry with a known engine defect would be
``xfail(strict=True)`` with the cause (``HFEntry.defect``); none has one now.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn as nn

from benchmarks.hf_zoo import BY_KEY, HF_ZOO, HFEntry, check, model_and_inputs
from libra_fx.grad_completeness import grad_completeness
from tests.zoo_checks import strict_raises

pytest.importorskip("transformers")

TOLERANCE = 1e-5  # the target (it asks for fp32; the check runs in float64 where it can)

@pytest.fixture(autouse=True, scope="module")
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _param(entry: HFEntry):
    marks = [pytest.mark.xfail(strict=True, reason=entry.defect)] if entry.defect else []
    return pytest.param(entry, marks=marks, id=f"{entry.name}-{entry.attn or 'none'}")


def _assert_balanced(entry: HFEntry, result) -> None:
    assert not result.error, f"{entry.name}: {result.error}"
    assert result.forward_equal, f"{entry.name}: forward not bit-identical"
    assert result.untouched, f"{entry.name}: the original model changed"
    reported = {f.op for f in result.unbalanced}
    if entry.expect_unbalanced:
        assert set(entry.expect_unbalanced) <= reported, f"{entry.name}: audit did not name {entry.expect_unbalanced}"
        assert strict_raises(*model_and_inputs(entry, entry.dtype), **entry.transform_kwargs), (
            f"{entry.name}: strict=True did not raise")
        return
    assert not reported, f"{entry.name}: left unbalanced: {[str(f) for f in result.unbalanced]}"
    assert result.ce_before_grad > 1e-3, f"{entry.name}: plain gradient already complete: the check is vacuous"
    assert result.ce_after_grad <= TOLERANCE, f"{entry.name}: .grad completeness error {result.ce_after_grad:.2e}"
    assert abs(result.ce_after - result.ce_after_grad) <= TOLERANCE, (
        f"{entry.name}: libra_fx's completeness_error {result.ce_after:.2e} disagrees with .grad "
        f"{result.ce_after_grad:.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("entry", [_param(e) for e in HF_ZOO])
def test_hf_zoo(entry: HFEntry):
    _assert_balanced(entry, check(entry))


#: float32 too (the issue's target), for one model per failure mode: a float64 run can hide one —
#: T5's RMSNorm casts to float32, which is a no-op ``aten.to`` in a float32 model and a real cast in
#: a float64 one, and only the former once stopped the RMSNorm rule.
FP32 = [("t5", "eager"), ("llama", "sdpa"), ("gpt2", "sdpa"), ("bert", "sdpa")]


@pytest.mark.slow
@pytest.mark.parametrize("entry", [_param(BY_KEY[k]) for k in FP32])
def test_hf_zoo_float32(entry: HFEntry):
    _assert_balanced(entry, check(entry, torch.float32))


def test_hf_zoo_size():
    """The issue's target: ≥ 20 architectures meant to balance (the rest named by the audit)."""
    balanced = {e.name for e in HF_ZOO if not e.expect_unbalanced}
    assert len({e.name for e in HF_ZOO}) >= 25 and len(balanced) >= 20
    assert {"sdpa", "eager"} <= {e.attn for e in HF_ZOO if e.name == "llama"}


# ---------------------------------------------------------------------------------------------
# token ids, KV caches and sequence lengths


@pytest.mark.filterwarnings("ignore::libra_fx.errors.LibraWarning")  # the audit's warning: expected here
class _EmbeddingsToLastLogits(nn.Module):
    """A causal LM on ``inputs_embeds`` of any length, no mask: the last position's logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, embeds):
        return self.model(inputs_embeds=embeds, use_cache=False).logits[:, -1]


def _tiny_llama() -> nn.Module:
    from libra_fx.hf import tiny_model
    return tiny_model("tiny-llama")[0].double()


def test_one_capture_serves_other_sequence_lengths():
    import libra_fx
    llama = _tiny_llama()
    model, hidden = _EmbeddingsToLastLogits(llama).eval(), llama.config.hidden_size
    gm = libra_fx.transform(model, (torch.randn(2, 8, hidden, dtype=torch.float64),), dynamic_shapes="auto")
    longer = torch.randn(2, 12, hidden, dtype=torch.float64)
    assert torch.equal(gm(longer), model(longer))


def test_token_ids_with_a_cache_output_get_a_clear_error():
    import libra_fx
    with pytest.raises(libra_fx.TraceError, match="use_cache"):
        libra_fx.transform(_tiny_llama(), (torch.randint(0, 64, (2, 8)),))


# ---------------------------------------------------------------------------------------------
# minimal repros of the engine defects found by the zoo (issue 11), now regression tests (export captures: each model has
# a ``range()`` over a size, which symbolic tracing cannot follow and torch.export can)


def _needs_export(x: torch.Tensor) -> torch.Tensor:
    return x + 0 * len(range(x.size(1)))


class _LastPosition(nn.Module):
    """``y[arange(B), last]``: how people pick each row's last real token (an ``aten.index``)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("last", torch.tensor([2, 1]))

    def forward(self, x):
        y = nn.functional.gelu(self.lin(_needs_export(x)))
        return y[torch.arange(y.shape[0]), self.last]


@pytest.mark.filterwarnings("ignore::libra_fx.errors.LibraWarning")  # the audit's warning: expected here
def test_repro_advanced_index_is_known():
    import libra_fx
    gm = libra_fx.transform(_LastPosition().eval(), (torch.randn(2, 3, 4),))
    assert not gm.libra_report.unbalanced


class _ChainedGates(nn.Module):
    """``x·g₁(x)·g₂(x)`` with casts in the gates: Mamba's selective scan, reduced."""

    def forward(self, x):
        x = _needs_export(x)
        a = x * torch.exp(x).to(torch.float32)
        return a * torch.exp(x).to(torch.float32)


def test_repro_chained_gates_do_not_insert_const_none():
    import libra_fx
    model, x = _ChainedGates(), torch.randn(2, 4)
    gm = libra_fx.transform(model, (x,))  # raised ForwardMismatchError
    assert torch.equal(gm(x), model(x))


class _AttentionPool(nn.Module):
    """A learned query attending over the tokens (SigLIP's MAP head), then a linear head."""

    def __init__(self):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, 8))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)
        nn.init.normal_(self.attn.in_proj_bias)
        nn.init.normal_(self.attn.out_proj.bias)

    def forward(self, x):
        x = _needs_export(x)
        return self.head(self.attn(self.probe.expand(x.shape[0], -1, -1), x, x)[0][:, 0])


def test_repro_seq_first_bias_site_is_counted_per_sample():
    import libra_fx
    torch.manual_seed(0)
    model, x = _AttentionPool().eval().double(), torch.randn(2, 5, 8, dtype=torch.float64)
    gm = libra_fx.transform(model, (x,))
    independent = grad_completeness(gm, (x,), lambda out: out[:, 0], per_sample=True).error
    assert independent.max() < 1e-10  # the transform balanced it: only the accounting is in question
    assert libra_fx.completeness_error(gm, (x,), 0).max() < 1e-10


@torch.library.custom_op("libra_fx_hfzoo_test::scale", mutates_args=())
def _scale(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * w


_scale.register_fake(lambda x, w: torch.empty_like(x))
_scale.register_autograd(lambda ctx, grad: (grad * ctx.w, None),
                         setup_context=lambda ctx, inputs, output: setattr(ctx, "w", inputs[1]))


class _CustomOp(nn.Module):
    """A ``torch.library`` custom op with a registered backward (transformers' ``grouped_mm_fallback``)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return _scale(_needs_export(x), self.w)


def test_repro_custom_op_is_reported_as_an_op_not_an_inlined_function():
    import libra_fx
    gm = libra_fx.transform(_CustomOp(), (torch.randn(2, 4),))
    reported = [f.op for f in gm.libra_report.unbalanced]
    assert reported == ["scale"], reported  # the op itself is opaque to the engine: named, once
