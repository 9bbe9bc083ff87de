"""FullGrad decomposition of a graph's output: input×gradient plus every bias×gradient (spec §1).

:func:`instrument` copies a GraphModule so that it also returns the tensors where bias terms enter
and those biases laid out against them; one ``torch.autograd.grad`` call then gives every term —
no weight gradient is computed. The completeness error is ``|f − Σ terms| / |f|``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.fx as fx

from collections.abc import Mapping

from .analysis import Facts, analyse
from .bias import BiasSite, bias_sites
from .errors import TargetError
from .outputs import flatten_value, structured_output
from .validation import check_target

Target = Union[int, torch.Tensor, Callable[[Any], torch.Tensor]]


def first_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a model output: itself, its ``logits`` field, or the first tensor in it.

    Handles tensors nested in tuples, lists, namedtuples, dicts (and ``OrderedDict`` subclasses such
    as Hugging Face's ``ModelOutput``) and dataclasses; a ``logits`` key or attribute wins.

    Args:
        output: a model output.

    Returns:
        The tensor to explain.

    Raises:
        TargetError: the output holds no tensor.

    Example:
        >>> first_tensor({"hidden": torch.zeros(1), "logits": torch.ones(1)})
        tensor([1.])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    _, leaves = flatten_value(output, leaf=lambda v: isinstance(v, torch.Tensor))
    if not leaves:
        raise TargetError(f"cannot find a tensor in model output of type {type(output).__name__}; "
                          "pass a callable target that picks the score")
    return leaves[0]


def target_score(output: Any, target: Target) -> torch.Tensor:
    """Per-sample scalar to explain: a class logit, per-sample classes, or ``target(output)``.

    Args:
        output: the model output.
        target: an int class index into :func:`first_tensor` of the output (``logits`` for
            dict-likes and dataclasses), a (B,) tensor of indices, or a callable returning (B,)
            scores — e.g. ``lambda out: out["pooler"][:, 0]`` to pick another field.

    Returns:
        A (B,) tensor.

    Raises:
        TargetError: an index out of range, or a target of the wrong type or shape.

    Example:
        >>> target_score(torch.eye(3), 1)
        tensor([0., 1., 0.])
    """
    if callable(target) and not isinstance(target, torch.Tensor):
        score = target(output)
        if not isinstance(score, torch.Tensor) or score.dim() != 1:
            raise TargetError(f"a callable target must return a (B,) tensor of scores, got "
                              f"{tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__}")
        return score
    logits = first_tensor(output)
    check_target(target, logits)
    if isinstance(target, int):
        return logits[:, target]
    return logits.gather(1, target.view(-1, 1).to(logits.device)).squeeze(1)


def instrument(gm: fx.GraphModule, sites: Sequence[BiasSite], taps: Sequence[fx.Node] = ()) -> fx.GraphModule:
    """A copy of ``gm`` returning ``(output, site outputs, site biases, tapped values)``.

    Args:
        gm: the GraphModule to copy (not modified; parameters shared).
        sites: bias sites from :func:`libra_fx.bias.bias_sites`.
        taps: further nodes whose values to return (e.g. block inputs for FullGrad+).

    Returns:
        A GraphModule with the same inputs.
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    output = graph.graph_copy(gm.graph, env)
    remap = lambda value: fx.map_arg(value, lambda n: env[n])
    biases = [graph.call_function(s.combine, (env[s.node], *remap(s.args))) for s in sites]
    graph.output((output, tuple(env[s.node] for s in sites), tuple(biases), tuple(env[n] for n in taps)))
    return fx.GraphModule(gm, graph, "Instrumented" + type(gm).__name__)


@dataclass
class FullGradTerms:
    """The terms of f(x) = Σ x⊙∇ₓf + Σ b⊙∇_b f for each sample.

    Attributes:
        score: (B,) the explained output f.
        input_attr: x⊙∇ₓf for each attributed input, shaped like it.
        bias_attr: (B,) per-sample sum of every bias×gradient term.
        site_attr: per bias site, the (B, ...) map ∇_y f ⊙ bias (summed over nothing).
        sites: the bias sites, in the order of ``site_attr``.
        taps: values and gradients of the tapped nodes: list of (value, grad).
    """

    score: torch.Tensor
    input_attr: list[torch.Tensor]
    bias_attr: torch.Tensor
    site_attr: list[torch.Tensor]
    sites: list[BiasSite]
    taps: list[tuple[torch.Tensor, Optional[torch.Tensor]]]

    @property
    def total(self) -> torch.Tensor:
        inputs = sum(a.flatten(1).sum(1) for a in self.input_attr)
        return inputs + self.bias_attr

    @property
    def completeness_error(self) -> torch.Tensor:
        """(B,) relative error ``|f − Σ terms| / |f|``."""
        return (self.score - self.total).abs() / self.score.abs().clamp_min(1e-12)


def _site_attribution(grad: Optional[torch.Tensor], y: torch.Tensor, bias) -> torch.Tensor:
    if grad is None:
        return torch.zeros_like(y)
    return grad * bias


def _probe_run(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], target: Target, facts: Optional[Facts],
               taps: Sequence[fx.Node]):
    """One forward of the instrumented copy: (score, attributed inputs, site values, biases, taps, sites)."""
    facts = facts or analyse(gm)
    sites = bias_sites(facts)
    probe = instrument(gm, sites, taps)
    inputs = tuple(x.detach().requires_grad_(x.is_floating_point()) for x in inputs)
    output, site_values, biases, tapped = probe(*inputs)
    output = structured_output(gm, output)  # the probe's copy of the graph returns the flat leaves
    score = target_score(output, target)
    return score, [x for x in inputs if x.requires_grad], site_values, biases, tapped, sites


def _bias_by_rows(score: torch.Tensor, site_values: Sequence[torch.Tensor], biases: Sequence) -> torch.Tensor:
    """(B,) Σ bias×gradient for each output row, one backward per row (the graph is kept)."""
    totals = []
    for row in range(score.shape[0]):
        grads = torch.autograd.grad(score[row], list(site_values), allow_unused=True, retain_graph=True)
        with torch.no_grad():
            totals.append(sum((_site_attribution(g, y, b).sum() for g, y, b in zip(grads, site_values, biases)
                               if g is not None), score.new_zeros(())))
    return torch.stack(totals).detach()


def fullgrad_terms(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], target: Target,
                   facts: Optional[Facts] = None, taps: Sequence[fx.Node] = ()) -> FullGradTerms:
    """Compute FullGrad's terms for ``gm`` on ``inputs`` with one forward and one backward.

    Each sample's terms are read from its own rows of the inputs and bias sites, which assumes the
    model treats the rows of a batch independently; where a bias site is not laid out batch-first,
    its per-sample totals take one backward per row. See :func:`row_completeness_error` for outputs
    that mix rows (CLIP's contrastive logits).

    Args:
        gm: a GraphModule (plain trace or transformed).
        inputs: positional inputs; floating tensors are attributed.
        target: what to explain (see :func:`target_score`).
        facts: a precomputed analysis of ``gm``.
        taps: nodes whose values and gradients to return as well.

    Returns:
        :class:`FullGradTerms`.

    Example:
        >>> import libra_fx
        >>> gm = libra_fx.transform(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.GELU()))
        >>> terms = fullgrad_terms(gm, (torch.randn(2, 4),), 0)
        >>> bool(terms.completeness_error.max() < 1e-5)
        True
    """
    with torch.enable_grad():
        score, attributed, site_values, biases, tapped, sites = _probe_run(gm, inputs, target, facts, taps)
        wanted = [*attributed, *site_values, *tapped]
        batch = score.shape[0]
        laid_out = all(y.dim() > 0 and y.shape[0] == batch for y in site_values)
        # a site whose values are not laid out batch-first (an exported nn.MultiheadAttention works
        # on (L, B, D) and (L·B, D)) cannot be split by rows: one backward per row for those
        row_bias = None if laid_out else _bias_by_rows(score, site_values, biases)
        grads = torch.autograd.grad(score.sum(), wanted, allow_unused=True)
    n_in, n_sites = len(attributed), len(site_values)
    input_attr = [x.detach() * (g if g is not None else 0) for x, g in zip(attributed, grads)]
    site_attr = [_site_attribution(g, y, b).detach() for g, y, b in zip(grads[n_in:n_in + n_sites], site_values, biases)]
    bias_attr = row_bias if row_bias is not None else \
        sum((s.reshape(batch, -1).sum(1) for s in site_attr), torch.zeros_like(score))
    taps_out = [(v.detach(), g) for v, g in zip(tapped, grads[n_in + n_sites:])]
    return FullGradTerms(score.detach(), input_attr, bias_attr.detach(), site_attr, sites, taps_out)


def row_completeness_error(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], target: Target) -> torch.Tensor:
    """(B,) relative completeness error with one backward per output row, each row's terms summed
    over *every* input row and bias site.

    Exact whatever the model does across the batch: CLIP's image-text logits make row i's score
    depend on other rows' text, which :func:`fullgrad_terms`' per-row reading would misattribute.
    Costs B backward passes (used by :func:`libra_fx.audit` on example inputs).

    Args:
        gm: a GraphModule (plain trace or transformed).
        inputs: positional inputs; floating tensors are attributed.
        target: what to explain (see :func:`target_score`).

    Returns:
        A (B,) tensor of ``|f_i − Σ terms_i| / |f_i|``.

    Example:
        >>> import libra_fx
        >>> gm = libra_fx.transform(torch.nn.Linear(4, 3))
        >>> bool(row_completeness_error(gm, (torch.randn(2, 4),), 0).max() < 1e-6)
        True
    """
    with torch.enable_grad():
        score, attributed, site_values, biases, _, _ = _probe_run(gm, inputs, target, None, ())
        wanted = [*attributed, *site_values]
        errors = []
        for row in range(score.shape[0]):
            grads = torch.autograd.grad(score[row], wanted, allow_unused=True, retain_graph=True)
            with torch.no_grad():
                terms = sum(float((x * g).sum()) for x, g in zip(attributed, grads) if g is not None)
                terms += sum(float(_site_attribution(g, y, b).sum())
                             for g, y, b in zip(grads[len(attributed):], site_values, biases) if g is not None)
            f = float(score[row].detach())
            errors.append(abs(f - terms) / max(abs(f), 1e-12))
    return torch.tensor(errors)


def completeness_error(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], target: Target) -> torch.Tensor:
    """(B,) relative FullGrad completeness error of ``gm`` (see :class:`FullGradTerms`)."""
    return fullgrad_terms(gm, inputs, target).completeness_error
