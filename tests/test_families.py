"""Issue 2: every paper family is balanced — forward bit-identical, input gradients equal to the
hand-patched reference, FullGrad completeness ≤ 1e-5, original model untouched."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import libra_fx
from libra_fx.grad_completeness import grad_completeness, randomise_bias_terms
from libra_fx.runner import fullgrad_terms

from .families import COMPLETE_CNNS, FAMILIES
from .reference import ReferenceModel, gradient_mismatches, input_gradient, relative_difference

TARGET = 1


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    model, x = FAMILIES[request.param]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a family must come out fully balanced: no warning
        balanced = libra_fx.transform(model, x, strict=True)
    return request.param, model, x, balanced


@pytest.fixture(scope="module")
def family64(family):
    name, model, x, _ = family
    model64 = randomise_bias_terms(copy.deepcopy(model).double())  # zero-initialised biases hide wrong .grads
    return name, model64, x.double(), libra_fx.transform(model64, x.double(), strict=True)


def test_forward_bit_identical(family):
    name, model, x, balanced = family
    with torch.no_grad():
        assert torch.equal(balanced(x), model(x)), name
        other_batch = torch.randn(3, *x.shape[1:])
        assert torch.equal(balanced(other_batch), model(other_batch)), name


def test_gradient_equals_reference(family64):
    name, model, x, balanced = family64
    expected = input_gradient(ReferenceModel(model), x, TARGET)
    actual = input_gradient(balanced, x, TARGET)
    assert relative_difference(actual, expected) <= 1e-5, name


def test_every_parameter_gradient_equals_reference(family64):
    """Every parameter's ``.grad`` is the Libra one: q/k projections get none, products are halved."""
    name, model, x, balanced = family64
    assert gradient_mismatches(balanced, ReferenceModel(model), model, x, TARGET) == [], name


def test_completeness_from_grad_agrees(family64):
    """FullGrad as a user computes it, ``Σ x·x.grad + Σ b·b.grad`` over the additive parameters,
    is complete and agrees with libra_fx's own decomposition."""
    name, model, x, balanced = family64
    target = lambda out: out[:, TARGET]
    independent = grad_completeness(balanced, (x,), target, model=model)
    terms = fullgrad_terms(balanced, (x,), TARGET)
    own = float((terms.score - terms.total).sum())
    assert independent.error <= 1e-5, (name, independent.error)
    assert abs(own - independent.residual) / independent.scale <= 1e-5, name
    plain = grad_completeness(balanced.libra_report.traced, (x,), target, model=model)
    assert plain.error > 10 * max(independent.error, 1e-12), f"{name}: the check must see plain gradients fail"


def test_fullgrad_completeness(family64):
    name, model, x, balanced = family64
    libra = fullgrad_terms(balanced, (x,), TARGET).completeness_error.max().item()
    plain = fullgrad_terms(balanced.libra_report.traced, (x,), TARGET).completeness_error.max().item()
    print(f"{name}: completeness error plain {plain:.3e}, libra {libra:.3e}")
    assert libra <= 1e-5, name
    assert plain > 10 * libra, f"{name}: plain gradients should be visibly incomplete"


def test_fullgrad_completeness_fp32(family):
    name, model, x, balanced = family
    libra = fullgrad_terms(balanced, (x,), TARGET).completeness_error.max().item()
    assert libra <= 1e-3, name  # fp32 round-off over a deep graph, relative to a random logit


def test_original_untouched(family):
    name, model, x, balanced = family
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = input_gradient(model, x, TARGET)
    again = libra_fx.transform(model, x)
    assert not hasattr(model, "libra_report")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(input_gradient(model, x, TARGET), before), name
    assert set(again.state_dict()) == set(model.state_dict())


def test_transform_twice_is_once(family):
    name, model, x, balanced = family
    assert libra_fx.transform(balanced) is balanced


@pytest.mark.parametrize("name", sorted(COMPLETE_CNNS))
def test_plain_cnn_gradients_unchanged(name):
    model, x = COMPLETE_CNNS[name]()
    balanced = libra_fx.transform(model, x, strict=True)
    assert balanced.libra_report.rewrites == []
    assert torch.equal(input_gradient(balanced, x, TARGET), input_gradient(model, x, TARGET))
    model64, x64 = copy.deepcopy(model).double(), x.double()
    error = fullgrad_terms(libra_fx.transform(model64), (x64,), TARGET).completeness_error.max().item()
    assert error <= 1e-8, "BatchNorm's implied bias must be counted"
