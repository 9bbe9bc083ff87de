"""FullGrad completeness checks: does f equal input×gradient plus every bias×gradient? (spec §1)

The terms come from the one runner (:func:`libra_fx.runner.fullgrad_terms`); this module holds the
checks built on them. The completeness error is ``|f − Σ terms| / |f|``. (For the error of an
attribution you already computed, see :func:`libra_fx.metrics.decomposition_error`.)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.fx as fx

from .runner import GraphRunner, fullgrad_terms, site_attribution
from .targets import Target, explained_score

__all__ = ["fullgrad_completeness_error", "completeness_error", "row_completeness_error"]


def row_completeness_error(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], target: Target) -> torch.Tensor:
    """(B,) relative completeness error with one backward per output row, each row's terms summed
    over *every* input row and bias site.

    Exact whatever the model does across the batch: CLIP's image-text logits make row i's score
    depend on other rows' text, which :func:`fullgrad_terms`' per-row reading would misattribute.
    Costs B backward passes (used by :func:`libra_fx.audit` on example inputs).

    Args:
        gm: a GraphModule (plain trace or transformed).
        inputs: positional inputs; floating tensors are attributed.
        target: what to explain (see :func:`libra_fx.targets.target_score`).

    Returns:
        A (B,) tensor of ``|f_i − Σ terms_i| / |f_i|``.

    Example:
        >>> import libra_fx
        >>> gm = libra_fx.transform(torch.nn.Linear(4, 3))
        >>> bool(row_completeness_error(gm, (torch.randn(2, 4),), 0).max() < 1e-6)
        True
    """
    probe, _ = GraphRunner(gm).probe(bias=True, taps=())
    with torch.enable_grad():
        inputs = tuple(x.detach().requires_grad_(x.is_floating_point()) for x in inputs)
        attributed = [x for x in inputs if x.requires_grad]
        output, site_values, biases, _ = probe(*inputs)
        score = explained_score(gm, output, target)
        wanted = [*attributed, *site_values]
        errors = []
        for row in range(score.shape[0]):
            grads = torch.autograd.grad(score[row], wanted, allow_unused=True, retain_graph=True)
            with torch.no_grad():
                terms = sum(float((x * g).sum()) for x, g in zip(attributed, grads) if g is not None)
                terms += sum(float(site_attribution(g, y, b).sum())
                             for g, y, b in zip(grads[len(attributed):], site_values, biases) if g is not None)
            f = float(score[row].detach())
            errors.append(abs(f - terms) / max(abs(f), 1e-12))
    return torch.tensor(errors)


def fullgrad_completeness_error(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], target: Target) -> torch.Tensor:
    """(B,) relative FullGrad completeness error of ``gm`` on ``inputs`` (see :class:`~libra_fx.runner.FullGradTerms`).

    Example:
        >>> import libra_fx
        >>> gm = libra_fx.transform(torch.nn.Linear(4, 3))
        >>> bool(fullgrad_completeness_error(gm, (torch.randn(2, 4),), 0).max() < 1e-6)
        True
    """
    return fullgrad_terms(gm, inputs, target).completeness_error


#: the public name ``libra_fx.completeness_error`` (kept): :func:`fullgrad_completeness_error`
completeness_error = fullgrad_completeness_error
