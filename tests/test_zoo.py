"""Generic coverage: libra_fx on a zoo of architectures beyond the paper's families.

For every entry of :data:`benchmarks.zoo.ZOO` (small random-weight models, float64 so the check is
about the maths, not round-off): the forward is bit-identical, FullGrad is complete with every bias
term (eval BatchNorm's implied bias included), and the original model is untouched (state and its
own input gradient). Where an op cannot be balanced, the audit must name it and ``strict=True``
must raise — never a silent pass.
"""
from __future__ import annotations

import pytest
import torch

import libra_fx
from benchmarks.zoo import ZOO, Entry, check
from libra_fx.errors import UnbalancedError
from tests.zoo_checks import strict_raises

TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_zoo(entry: Entry):
    result = check(entry)
    assert result.forward_equal, f"{entry.name}: forward not bit-identical"
    assert result.untouched, f"{entry.name}: the original model changed"
    reported = {f.op for f in result.unbalanced}
    if entry.expect_unbalanced:
        assert set(entry.expect_unbalanced) <= reported, f"{entry.name}: audit did not name {entry.expect_unbalanced}"
        model, x = entry.build()
        assert strict_raises(model, x if isinstance(x, tuple) else (x,), **entry.transform_kwargs), (
            f"{entry.name}: strict=True did not raise")
        return
    assert not reported, f"{entry.name}: left unbalanced: {[str(f) for f in result.unbalanced]}"
    # (nan before is fine: a -inf causal mask is an additive constant, and 0·(-inf) = nan)
    assert not result.ce_before <= 1e-3, f"{entry.name}: plain gradient already complete: the check is vacuous"
    assert result.ce_after <= TOLERANCE, f"{entry.name}: completeness error {result.ce_after:.2e}"
    # the user's way: Σ x·x.grad + Σ b·b.grad over the additive parameters, and agreement with ours
    assert result.grad_ce_after <= TOLERANCE, f"{entry.name}: .grad completeness error {result.grad_ce_after:.2e}"
    assert result.own_vs_grad <= 1e-5, f"{entry.name}: libra_fx and .grad decompositions differ"


def test_zoo_size():
    balanced = [e for e in ZOO if not e.expect_unbalanced]
    assert len(ZOO) >= 28 and len(balanced) >= 24


def test_fx_wrapped_function_is_reported_without_example_inputs():
    """Without example inputs there is no export capture: the opaque function is named, strict raises."""
    entry = next(e for e in ZOO if e.name == "torchvision_swin_t")
    model, _ = entry.build()
    with pytest.raises(UnbalancedError, match="shifted_window_attention"):
        libra_fx.transform(model, strict=True)
