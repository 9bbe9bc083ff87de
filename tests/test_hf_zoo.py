"""Hugging Face ``transformers`` architectures, built from tiny random configs, through libra_fx.

For every entry of :data:`benchmarks.hf_zoo.HF_ZOO`: the forward is bit-identical, the model is
untouched, and FullGrad is complete — measured the independent way, from ``.grad`` of the inputs
and of every additive parameter found by name (:func:`benchmarks.hf_zoo.grad_completeness`), and
agreeing with libra_fx's own ``completeness_error``. Where balance is impossible the audit names
the ops and ``strict=True`` raises. Entries that fail today because of a known engine defect are
``xfail(strict=True)`` with the cause, so they flip when it is fixed.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from benchmarks.hf_zoo import BY_KEY, CAST, HF_ZOO, HFEntry, check, grad_completeness, is_additive, strict_raises

pytest.importorskip("transformers")

TOLERANCE = 1e-5  # the target (it asks for fp32; the check runs in float64 where it can)

#: failures that only show in float32
FP32_DEFECTS = {("t5", "eager"): CAST}


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
        assert strict_raises(entry), f"{entry.name}: strict=True did not raise"
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
#: a float64 one, and only the former stops the RMSNorm rule today.
FP32 = [("t5", "eager"), ("llama", "sdpa"), ("gpt2", "sdpa"), ("bert", "sdpa")]


@pytest.mark.slow
@pytest.mark.parametrize("entry", [_param(replace(BY_KEY[k], defect=BY_KEY[k].defect or FP32_DEFECTS.get(k, "")))
                                   for k in FP32])
def test_hf_zoo_float32(entry: HFEntry):
    _assert_balanced(entry, check(entry, torch.float32))


def test_hf_zoo_size():
    """The issue's target: ≥ 20 architectures meant to balance (the rest named by the audit)."""
    balanced = {e.name for e in HF_ZOO if not e.expect_unbalanced}
    assert len({e.name for e in HF_ZOO}) >= 25 and len(balanced) >= 20
    assert {"sdpa", "eager"} <= {e.attn for e in HF_ZOO if e.name == "llama"}


def test_grad_completeness_counts_biases_and_sees_imbalance():
    torch.manual_seed(0)
    affine = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(2, 4, dtype=torch.float64)
    complete = grad_completeness(affine.double(), (x,))
    assert complete.error.max() < 1e-12 and complete.bias_term.abs().min() > 0
    assert complete.names == ["0.bias", "2.bias"]
    gated = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3)).double()
    assert grad_completeness(gated, (x,)).error.max() > 1e-3
    no_bias = grad_completeness(affine, (x,), additive=lambda name, t: False)
    assert no_bias.error.max() > 1e-3  # the biases matter: without them the sum is short


def test_grad_completeness_leaves_the_module_alone():
    model = nn.Linear(3, 2).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grad_completeness(model, (torch.randn(2, 3, dtype=torch.float64),))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name, additive", [
    ("model.layers.0.self_attn.q_proj.bias", True), ("head.attention.in_proj_bias", True),
    ("model.logit_bias", True), ("bert.embeddings.position_embeddings.weight", True),
    ("transformer.wpe.weight", True), ("vit.embeddings.cls_token", True),
    ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True),
    ("model.layers.0.input_layernorm.weight", False), ("model.embed_tokens.weight", False),
    ("lm_head.weight", False), ("model.layers.0.mlp.bias_scale", False),
])
def test_is_additive(name, additive):
    assert is_additive(name, torch.zeros(1)) is additive


# ---------------------------------------------------------------------------------------------
# token ids, KV caches and sequence lengths: today's behaviour, pinned so that fixes show


@pytest.mark.xfail(strict=True, reason="torch.export specialises the sequence length: the captured module "
                   "raises 'Guard failed: e.size()[1] == 8' at another length (fix: export with Dim.AUTO on "
                   "non-batch dims, README.hfzoo.md)")
def test_one_capture_serves_other_sequence_lengths():
    import libra_fx
    from benchmarks.hf_zoo import EmbeddingsToLastLogits, tiny_llama
    model = EmbeddingsToLastLogits(tiny_llama()).eval()
    gm = libra_fx.transform(model, (torch.randn(2, 8, 32, dtype=torch.float64),))
    longer = torch.randn(2, 12, 32, dtype=torch.float64)
    assert torch.equal(gm(longer), model(longer))


@pytest.mark.xfail(strict=True, reason="with the default use_cache=True the output holds a DynamicCache: the "
                   "TraceError blames symbolic tracing ('co_varnames is too small') and export's pytree error "
                   "comes second; it should say to pass use_cache=False (or set it)")
def test_token_ids_with_a_cache_output_get_a_clear_error():
    import libra_fx
    from benchmarks.hf_zoo import tiny_llama
    with pytest.raises(libra_fx.TraceError, match="use_cache"):
        libra_fx.transform(tiny_llama(), (torch.randint(0, 64, (2, 8)),))
