"""One FullGrad runner (:mod:`libra_fx.runner`): the attribution methods and the completeness checks
read the same terms, on every path (eager, compiled, several targets per sample).

Regression tests for two bugs of the former second runner (``attribution._run_probe``): a bias site
that is the model's output (the head bias IS the logits) got no gradient under ``compiled=True``, and
bias sites not laid out batch-first (an exported ``nn.MultiheadAttention``, ``(L, B, D)``) crashed
``compiled=True`` and several-targets-per-sample runs instead of taking one backward per score."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import libra_fx
from libra_fx.attribution import attribute
from libra_fx.completeness import fullgrad_completeness_error
from libra_fx.runner import fullgrad_terms
from libra_fx.targets import RowTarget

from .conftest import random_timm

warnings.filterwarnings("ignore", message=".*unbalanced.*")


class _SequenceFirstAttention(nn.Module):
    """Patch tokens through an ``nn.MultiheadAttention`` in its default (L, B, D) layout."""

    def __init__(self):
        super().__init__()
        self.embed, self.attn = nn.Conv2d(3, 16, 8, 8), nn.MultiheadAttention(16, 2)
        self.norm, self.head = nn.LayerNorm(16), nn.Linear(16, 5)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).permute(2, 0, 1)
        mixed, _ = self.attn(tokens, tokens, tokens)
        return {"tokens": tokens, "logits": self.head(self.norm(tokens + mixed).mean(0))}


@pytest.fixture(scope="module")
def sequence_first():
    torch.manual_seed(0)
    model = _SequenceFirstAttention().eval().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    return libra_fx.transform(model, (x,), verify=False), x


class _TwoClasses(RowTarget):
    """Two scores per sample: the logits of classes 1 and 3."""

    per_row = 2

    def __call__(self, output):
        return output["logits"][:, [1, 3]]


def test_methods_and_checks_share_the_terms(sequence_first):
    gm, x = sequence_first
    terms = fullgrad_terms(gm, (x,), 1)
    result = attribute(gm, x, 1, method="fullgrad")
    assert torch.equal(result.bias_attr, terms.bias_attr) and torch.equal(result.score, terms.score)
    assert torch.equal(result.completeness_error, fullgrad_completeness_error(gm, (x,), 1))
    assert libra_fx.completeness_error is fullgrad_completeness_error
    assert result.completeness_error.max() < 1e-12


def test_several_targets_with_sequence_first_bias_sites(sequence_first):
    gm, x = sequence_first
    both = fullgrad_terms(gm, (x,), _TwoClasses())
    singles = [fullgrad_terms(gm, (x,), k) for k in (1, 3)]
    expected = torch.stack([s.bias_attr for s in singles], 1).reshape(-1)
    torch.testing.assert_close(both.bias_attr, expected, rtol=1e-12, atol=1e-14)
    assert both.completeness_error.max() < 1e-12


@pytest.mark.slow  # torch.compile on CPU
def test_compiled_fullgrad_counts_every_bias(sequence_first):
    """The head bias (a site that is the output) and (L, B, D) attention sites, compiled."""
    gm, x = sequence_first
    eager = attribute(gm, x, 1, method="fullgrad")
    compiled = attribute(gm, x, 1, method="fullgrad", compiled=True)
    torch.testing.assert_close(compiled.bias_attr, eager.bias_attr, rtol=1e-10, atol=1e-12)
    assert compiled.completeness_error.max() < 1e-12


@pytest.mark.slow  # torch.compile on CPU
def test_compiled_vit_counts_the_head_bias():
    model = random_timm("vit_tiny_patch16_224", dtype=torch.float64, img_size=32, patch_size=8, depth=1)
    torch.nn.init.normal_(model.get_classifier().bias, std=0.5)  # timm zero-inits it
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gm = libra_fx.transform(model)
    eager = attribute(gm, x, 1, method="fullgrad")
    compiled = attribute(gm, x, 1, method="fullgrad", compiled=True)
    torch.testing.assert_close(compiled.bias_attr, eager.bias_attr, rtol=1e-10, atol=1e-12)
    assert compiled.completeness_error.max() < 1e-10
