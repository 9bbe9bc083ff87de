"""The one forward-and-backward runner behind every gradient method and completeness check.

:class:`GraphRunner` runs an instrumented copy of a graph (:func:`libra_fx.probes.instrument`),
eagerly or through ``torch.compile``, and returns :class:`FullGradTerms`: the explained score, the
input gradients (or input×gradient), every bias×gradient term and the tapped values with their
gradients — from ONE forward and ONE ``torch.autograd.grad`` call whatever the number of sites and
taps, never a weight gradient. :func:`fullgrad_terms` is its FullGrad reading and
:mod:`libra_fx.attribution`'s methods use it through :func:`libra_fx.context.run_graph`.

Rows. Each sample's terms are read from its own rows of the inputs and bias sites, which assumes
the model treats the rows of a batch independently. A bias site not laid out batch-first (an
exported ``nn.MultiheadAttention`` works on ``(L, B, D)`` and ``(L·B, D)``) cannot be split by
rows: its per-sample totals take one backward per explained score (:func:`bias_by_rows`), on every
path (eager, compiled, several targets per sample).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx

from .analysis import Facts, analyse
from .bias import BiasSite, bias_sites
from .errors import LibraError
from .probes import instrument, with_gradient_inputs
from .targets import Target, explained_score, repeat_rows, targets_per_row


@dataclass
class FullGradTerms:
    """The terms of f(x) = Σ x⊙∇ₓf + Σ b⊙∇_b f for each sample.

    Attributes:
        score: (B,) the explained output f.
        input_attr: x⊙∇ₓf for each attributed input, shaped like it (∇ₓf for a ``raw_grad`` run).
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


def site_attribution(grad: Optional[torch.Tensor], y: torch.Tensor, bias: Any) -> torch.Tensor:
    """∇_y f ⊙ bias of one bias site (zeros where f does not depend on it)."""
    if grad is None:
        return torch.zeros_like(y)
    return grad * bias


def bias_by_rows(score: torch.Tensor, site_values: Sequence[torch.Tensor], biases: Sequence,
                 grad_of: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Σ bias×gradient of each explained score, one backward per score (the graph is kept).

    Args:
        score: ``(B,)`` or ``(B, K)`` scores (rows come sample-major: ``B·K``).
        site_values: the bias sites' outputs.
        biases: the biases laid out against them.
        grad_of: the tensors whose gradients are the sites' (default ``site_values``; the zero
            gradient inputs of a compiled run).

    Returns:
        ``(B·K,)`` totals, detached.
    """
    scores = list(score) if score.dim() == 1 else [s for row in score for s in row]
    wrt = list(site_values if grad_of is None else grad_of)
    totals = []
    for value in scores:
        grads = torch.autograd.grad(value, wrt, allow_unused=True, retain_graph=True)
        with torch.no_grad():
            totals.append(sum((site_attribution(g, y, b).sum() for g, y, b in zip(grads, site_values, biases)
                               if g is not None), score.new_zeros(())))
    return torch.stack(totals).detach()


def batched_backward(score: torch.Tensor, wanted: list) -> list:
    """Gradients of each of the K columns of a ``(B, K)`` score, as ``(B·K, ...)`` rows.

    One backward per target, vmapped over the K one-hot output gradients (``is_grads_batched``);
    where an op's backward has no batching rule, K backwards through the same forward instead.
    """
    batch, per_row = score.shape
    onehot = torch.eye(per_row, dtype=score.dtype, device=score.device).unsqueeze(1).expand(per_row, batch, per_row)
    try:
        grads = torch.autograd.grad(score, wanted, onehot, is_grads_batched=True, allow_unused=True,
                                    retain_graph=True)
    except RuntimeError:
        per_target = [torch.autograd.grad(score[:, k].sum(), wanted, allow_unused=True, retain_graph=True)
                      for k in range(per_row)]
        grads = [None if parts[0] is None else torch.stack(parts) for parts in zip(*per_target)]
    return [_target_major_to_rows(g, batch) for g in grads]


def _target_major_to_rows(grad: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
    if grad is None:
        return None
    if grad.dim() < 2 or grad.shape[1] != batch:  # a value without a batch dimension: total over targets
        return grad.sum(0)
    return grad.transpose(0, 1).reshape(-1, *grad.shape[2:])


def _laid_out(values: Sequence[torch.Tensor], batch: int) -> bool:
    return all(y.dim() > 0 and y.shape[0] == batch for y in values)


@dataclass
class _Pass:
    """What one forward/backward gave, before it is laid out as :class:`FullGradTerms`."""

    attributed: list
    site_values: list
    biases: list
    tapped: list
    score: Optional[torch.Tensor]
    grads: list  # of attributed, then site values, then taps (None: no gradient)
    sites: list
    row_bias: Optional[torch.Tensor]  # bias terms summed per row, for sites not laid out batch-first

    def terms(self, rows_in: int, grad: bool, raw_grad: bool, batch: Optional[int]) -> FullGradTerms:
        # without a backward there is nothing per target: values keep their B rows
        per_row = self.score.shape[1] if grad and self.score.dim() == 2 else 1
        rows = lambda value: repeat_rows(value, rows_in, per_row)
        attributed, site_values = [rows(x) for x in self.attributed], [rows(y) for y in self.site_values]
        tapped = [rows(v) for v in self.tapped]
        biases = [rows(b) if isinstance(b, torch.Tensor) and b.dim() == y.dim() else b
                  for b, y in zip(self.biases, site_values)]
        n_in, n_sites = len(attributed), len(site_values)
        grads = self.grads
        zero = lambda g, like: g if g is not None else torch.zeros_like(like)
        input_attr = [zero(g, x) if raw_grad else x.detach() * zero(g, x) for x, g in zip(attributed, grads)]
        site_attr = [(zero(g, y) * b).detach() for g, y, b in zip(grads[n_in:n_in + n_sites], site_values, biases)]
        score = self.score.detach().reshape(-1) if self.score is not None else \
            torch.full((rows_in if batch is None else batch,), float("nan"))
        bias_attr = self.row_bias if self.row_bias is not None else \
            sum((s.reshape(s.shape[0], -1).sum(1) for s in site_attr), torch.zeros_like(score))
        # a tapped value may be None (an optional mask placeholder left at its default)
        taps_out = [(v.detach() if isinstance(v, torch.Tensor) else v, g)
                    for v, g in zip(tapped, grads[n_in + n_sites:])]
        return FullGradTerms(score, input_attr, bias_attr, site_attr, self.sites, taps_out)


class GraphRunner:
    """Forward and backward of one graph, with its instrumented copies cached per (bias, taps).

    One runner lives for one call (:class:`libra_fx.context.Context` holds it) so that integrated
    gradients' chunks reuse one instrumented (and maybe compiled) graph; nothing is cached globally.

    Args:
        gm: the graph (balanced, or the plain trace).
        facts: its analysis (computed when bias sites are first needed).
        compiled: run the instrumented graph through ``torch.compile``.
    """

    def __init__(self, gm: fx.GraphModule, facts: Optional[Facts] = None, compiled: bool = False):
        self.gm, self._facts, self.compiled = gm, facts, compiled
        self._probes: dict = {}

    @property
    def facts(self) -> Facts:
        if self._facts is None:
            self._facts = analyse(self.gm)
        return self._facts

    def probe(self, bias: bool, taps: tuple) -> tuple[fx.GraphModule, list[BiasSite]]:
        """The instrumented copy returning the bias sites (when ``bias``) and ``taps``, and the sites."""
        key = (bias, taps)
        if key not in self._probes:
            sites = bias_sites(self.facts) if bias else []
            self._probes[key] = (instrument(self.gm, sites, taps), sites)
        return self._probes[key]

    def compiled_probe(self, bias: bool, taps: tuple):
        """``(eager probe, compiled probe with gradient inputs, their count, positions, sites)``."""
        key = ("compiled", bias, taps)
        if key not in self._probes:
            eager, sites = self.probe(bias, taps)
            probed, nodes = with_gradient_inputs(eager)
            out = next(n for n in probed.graph.nodes if n.op == "output").args[0]
            positions = [nodes.index(n) for n in (*out[1], *out[3])]
            self._probes[key] = (eager, torch.compile(probed), len(nodes), positions, sites)
        return self._probes[key]

    def run(self, inputs: Sequence[torch.Tensor], target: Optional[Target], taps: Sequence[fx.Node] = (),
            bias: bool = False, grad: bool = True, raw_grad: bool = False,
            batch: Optional[int] = None) -> FullGradTerms:
        """One forward and (when ``grad``) one ``torch.autograd.grad`` on ``inputs``.

        Only the gradients of the inputs, bias sites and taps are asked for. A
        :class:`~libra_fx.targets.RowTarget` with ``K`` targets per sample gives ``B·K`` rows (one
        batched backward).

        Args:
            inputs: positional inputs (floating ones are attributed).
            target: see :func:`libra_fx.targets.target_score`; ``None`` with ``grad=False`` only.
            taps: nodes whose (value, gradient) to return.
            bias: compute bias×gradient terms.
            grad: run the backward.
            raw_grad: ``input_attr`` holds ∇ₓf instead of x⊙∇ₓf.
            batch: rows of the NaN score of a run without target (default: the first input's).

        Returns:
            :class:`FullGradTerms`.
        """
        taps = tuple(taps)
        if self.compiled and grad:
            ran = self._compiled_pass(inputs, target, taps, bias)
        else:
            ran = self._eager_pass(inputs, target, taps, bias, grad)
        return ran.terms(inputs[0].shape[0], grad, raw_grad, batch)

    def _eager_pass(self, inputs, target, taps, bias, grad) -> "_Pass":
        probe, sites = self.probe(bias, taps)
        inputs = tuple(x.detach().requires_grad_(grad and x.is_floating_point()) for x in inputs)
        attributed = [x for x in inputs if x.requires_grad]
        row_bias = None
        with torch.set_grad_enabled(grad):
            output, site_values, biases, tapped = probe(*inputs)
            score = explained_score(self.gm, output, target) if target is not None else None
            wanted = [*attributed, *site_values, *tapped]
            grads = [None] * len(wanted)
            if grad and not _laid_out(site_values, score.shape[0]):
                row_bias = bias_by_rows(score, site_values, biases)
            if grad and score.dim() == 2:
                grads = batched_backward(score, wanted)
            elif grad:
                grads = torch.autograd.grad(score.sum(), wanted, allow_unused=True)
        return _Pass(attributed, site_values, biases, tapped, score, list(grads), sites, row_bias)

    def _compiled_pass(self, inputs, target, taps, bias) -> "_Pass":
        """Forward + backward through the compiled graph, intermediate gradients via zero probe inputs.

        One eager forward without gradient first gives the probe shapes (so compiled runs cost one
        extra forward)."""
        if targets_per_row(target) > 1:
            raise LibraError("compiled=True explains one score per sample; several targets per sample "
                             "(a teacher-forced continuation) run eagerly: pass compiled=False")
        eager, compiled, count, positions, sites = self.compiled_probe(bias, taps)
        with torch.no_grad():
            _, site_values, _, tapped = eager(*inputs)
        values = [*site_values, *tapped]
        probes = [None] * count
        for value, at in zip(values, positions):
            probes[at] = torch.zeros_like(value, requires_grad=True)
        inputs = tuple(x.detach().requires_grad_(x.is_floating_point()) for x in inputs)
        attributed = [x for x in inputs if x.requires_grad]
        row_bias = None
        with torch.enable_grad():
            output, _, biases, _ = compiled(*inputs, **{f"libra_probe_{i}": p for i, p in enumerate(probes)})
            score = explained_score(self.gm, output, target)
            if not _laid_out(site_values, score.shape[0]):
                site_probes = [probes[at] for at in positions[:len(site_values)]]
                row_bias = bias_by_rows(score, site_values, biases, grad_of=site_probes)
            grads = torch.autograd.grad(score.sum(), [*attributed, *probes], allow_unused=True)
        probe_grads = grads[len(attributed):]
        grads = [*grads[:len(attributed)], *(probe_grads[i] for i in positions)]
        return _Pass(attributed, site_values, biases, tapped, score, grads, sites, row_bias)


def fullgrad_terms(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], target: Target,
                   facts: Optional[Facts] = None, taps: Sequence[fx.Node] = ()) -> FullGradTerms:
    """Compute FullGrad's terms for ``gm`` on ``inputs`` with one forward and one backward.

    Each sample's terms are read from its own rows of the inputs and bias sites (see the module
    docstring for sites that are not batch-first). See
    :func:`libra_fx.completeness.row_completeness_error` for outputs that mix rows (CLIP's
    contrastive logits).

    Args:
        gm: a GraphModule (plain trace or transformed).
        inputs: positional inputs; floating tensors are attributed.
        target: what to explain (see :func:`libra_fx.targets.target_score`).
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
    return GraphRunner(gm, facts).run(inputs, target, taps, bias=True)
