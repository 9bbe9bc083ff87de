"""``libra_fx.attribute``: gradient attribution methods on a (balanced or plain) traced graph (spec §5).

Every gradient method is one registered function of a :class:`Context`; all of them share one
forward-and-backward runner built on :func:`libra_fx.completeness.instrument`, so FullGrad, FullGrad+
and the CAMs cost ONE forward and ONE ``torch.autograd.grad`` call whatever the number of blocks, and
never a weight gradient. Switching ``libra=True``/``False`` swaps only the graph (the balanced one, or
``gm.libra_report.traced``), so every comparison is one flag.

Maps. Each method yields *pieces*: per-location attributions ``(B, h, w)`` at some resolution (the
image's, the patch grid's, a CNN stage's). ``image_map`` is their sum resampled to the image as a
*density* (a piece of ``h×w`` cells is upsampled and divided by the cells' area in pixels), so
``image_map.sum((1, 2))`` approximates the spatial part of the attribution's total; ``token_scores``
is the same sum on the patch grid for token models. Prefix tokens (CLS, registers, distillation) are
dropped from maps; their share stays in ``bias_attr``/``score`` only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .analysis import Facts, analyse
from .bias import bias_sites
from .blocks import Block, find_blocks
from .completeness import FullGradTerms, Target, fullgrad_terms, instrument, target_score
from .errors import LibraError
from .maps import pixel_scores
from .outputs import structured_output
from .validation import check_method
from .opset import arg, op_name
from .transform import is_transformed, transform

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass
class Attribution:
    """The result of :func:`attribute`.

    Attributes:
        input_attr: per input element attribution, shaped like the (first attributed) input;
            ``None`` for methods that do not attribute the input itself (CAMs, FullGrad+, rollout).
        token_scores: ``(B, N)`` per patch token for token models (prefix tokens dropped), else ``None``.
        image_map: ``(B, H, W)`` map at the image resolution (a density: see the module docstring).
        bias_attr: ``(B,)`` total bias×gradient for the FullGrad family, else ``None``.
        score: ``(B,)`` the explained output f (a logit, or whatever ``target`` selects).
        completeness_error: ``(B,)`` relative ``|f − Σ attributions| / |f|`` for complete methods
            (FullGrad), else ``None``.
        method: the method name.
        libra: whether the balanced graph was used.
        blocks: module paths of the blocks the method used (empty when it uses none).
    """

    input_attr: Optional[torch.Tensor]
    token_scores: Optional[torch.Tensor]
    image_map: Optional[torch.Tensor]
    bias_attr: Optional[torch.Tensor]
    score: torch.Tensor
    completeness_error: Optional[torch.Tensor]
    method: str
    libra: bool
    blocks: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- geometry


@dataclass
class Geometry:
    """How tensors in the graph map to image locations.

    Attributes:
        batch: B.
        image_size: ``(H, W)`` of the image input, ``None`` when the input is not an image.
        grid: ``(h, w)`` patch grid of token models (from the patch-embedding conv or given).
        prefix: leading non-patch tokens (``None``: infer from each token count).
        tokens: whether block inputs are token sequences (a token model); learnt on the first run.
    """

    batch: int
    image_size: Optional[tuple[int, int]]
    grid: Optional[tuple[int, int]] = None
    prefix: Optional[int] = None
    tokens: Optional[bool] = None

    def token_prefix(self, tokens: int) -> Optional[int]:
        """Prefix tokens in a sequence of ``tokens`` tokens, ``None`` when it is not the patch grid."""
        if self.grid is None:
            return None
        extra = tokens - self.grid[0] * self.grid[1]
        if self.prefix is not None:
            return self.prefix if extra == self.prefix else None
        return extra if 0 <= extra < tokens else None

    def locate(self, value: torch.Tensor) -> Optional[tuple[torch.Tensor, tuple[int, int]]]:
        """See :func:`locations`; subclasses (text sequences) lay tensors out their own way."""
        return _image_locations(value, self)

    def input_piece(self, attr: torch.Tensor) -> Optional[torch.Tensor]:
        """``(B, h, w)`` per-location sum of an input attribution (images: per pixel), or ``None``."""
        return pixel_scores(attr) if attr.dim() == 4 else None


def _ratio_matches(h: int, w: int, image_size: Optional[tuple[int, int]]) -> bool:
    if image_size is None:
        return True
    H, W = image_size
    return h <= H and w <= W and math.isclose(h / w, H / W, rel_tol=0.25)


def locations(value: torch.Tensor, geo: Geometry) -> Optional[tuple[torch.Tensor, tuple[int, int]]]:
    """View an activation as ``(B, L, D)`` over the model's locations: ``geo.locate(value)``."""
    return geo.locate(value)


def _image_locations(value: torch.Tensor, geo: Geometry) -> Optional[tuple[torch.Tensor, tuple[int, int]]]:
    """View an activation as ``(B, L, D)`` over a spatial grid of ``L = h·w`` locations.

    Token sequences ``(B, T, D)`` (prefix dropped; also ``(T, B, D)`` and channel-major ``(B, D, N)``),
    channels-first ``(B, C, h, w)`` and channels-last ``(B, h, w, C)`` maps are spatial; anything
    else (pooled features, logits, attention-pool queries) is not, and gives ``None``.

    Args:
        value: an activation or attribution of the graph.
        geo: the model's :class:`Geometry`.

    Returns:
        ``(tensor (B, L, D), (h, w))`` or ``None``.
    """
    B = geo.batch
    if value.dim() == 3:
        if value.shape[0] != B and value.shape[1] == B:
            value = value.transpose(0, 1)  # sequence-first layout (nn.MultiheadAttention default)
        if value.shape[0] != B or geo.grid is None:
            return None
        prefix = geo.token_prefix(value.shape[1])
        if prefix is not None:
            return value[:, prefix:], geo.grid
        if value.shape[2] == geo.grid[0] * geo.grid[1]:  # (B, D, N): token-mixing MLPs
            return value.transpose(1, 2), geo.grid
        return None
    if value.dim() == 4 and value.shape[0] == B:
        _, a, b, c = value.shape
        if _ratio_matches(b, c, geo.image_size):
            return value.flatten(2).transpose(1, 2), (b, c)
        if _ratio_matches(a, b, geo.image_size):
            return value.flatten(1, 2), (a, b)
    return None


def spatial_sum(value: torch.Tensor, geo: Geometry) -> Optional[torch.Tensor]:
    """``(B, h, w)`` per-location sum of an attribution tensor, ``None`` when it is not spatial."""
    located = locations(value, geo)
    if located is None:
        return None
    tensor, (h, w) = located
    return tensor.sum(-1).reshape(tensor.shape[0], h, w)


def resample(piece: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resample a ``(B, h, w)`` attribution to ``size`` keeping its total (a density resampling).

    Exact sum-pooling when ``size`` divides the piece; otherwise interpolation scaled by the cell-area
    ratio, so totals are kept up to interpolation error.
    """
    h, w = piece.shape[-2:]
    H, W = size
    if (h, w) == (H, W):
        return piece
    if h % H == 0 and w % W == 0:
        return piece.reshape(piece.shape[0], H, h // H, W, w // W).sum((2, 4))
    align = None if mode in ("nearest", "area", "nearest-exact") else False
    out = F.interpolate(piece.unsqueeze(1), size=(H, W), mode=mode, align_corners=align).squeeze(1)
    return out * (h * w) / (H * W)


# --------------------------------------------------------------------------- running the graph


@dataclass
class Context:
    """Everything a method needs: the graph, its analysis, the inputs and the model geometry.

    ``probes`` holds this call's instrumented (and maybe compiled) graphs so that integrated
    gradients' chunks reuse one; it lives and dies with the call (no global cache).
    """

    gm: fx.GraphModule
    facts: Facts
    inputs: tuple
    target: Optional[Target]
    blocks: list[Block]
    geo: Geometry
    compiled: bool
    options: dict
    probes: dict = field(default_factory=dict)

    def block_nodes(self, last_only: bool = False) -> list[fx.Node]:
        if not self.blocks:
            raise LibraError("this method needs block boundaries and none were found in the model; "
                             "pass blocks=[module names] (e.g. ['layer1.0', 'layer1.1'])")
        chosen = self.blocks[-1:] if last_only else self.blocks
        return [b.input for b in chosen]

    def geometry_taps(self) -> dict[str, fx.Node]:
        """Nodes read only for their shapes: the first live convolution (a ViT's patch embedding,
        a CNN's stem: gives the grid) and the first block input (token sequence or feature map)."""
        patch = next((n for n in self.facts.relevant if self.facts.name(n) == "conv"), None)
        taps = {"patch": patch, "block": self.blocks[0].input if self.blocks else None}
        return {role: node for role, node in taps.items() if node is not None}


def _learn_geometry(ctx: Context, values: dict[str, torch.Tensor]) -> None:
    """Set the patch grid and whether block inputs are token sequences from the geometry taps."""
    patch, block = values.get("patch"), values.get("block")
    if ctx.geo.grid is None and patch is not None and patch.dim() == 4:
        ctx.geo.grid = tuple(patch.shape[-2:])
    if ctx.geo.tokens is None:
        ctx.geo.tokens = block is not None and block.dim() == 3 and locations(block, ctx.geo) is not None


def _probe(ctx: Context, bias: bool, taps: tuple) -> tuple[fx.GraphModule, list]:
    key = (bias, taps)
    if key not in ctx.probes:
        sites = bias_sites(ctx.facts) if bias else []
        ctx.probes[key] = (instrument(ctx.gm, sites, taps), sites)
    return ctx.probes[key]


def with_gradient_inputs(probe: fx.GraphModule) -> tuple[fx.GraphModule, list[fx.Node]]:
    """A copy of an instrumented graph where each returned site/tap value ``y`` is used as ``y + p``.

    ``p`` is a new (keyword, default ``None``) input fed with zeros: ``∂f/∂p = ∂f/∂y``. Under
    ``torch.compile`` the returned ``y`` is a separate output of the compiled function, detached from
    the uses inside it, so asking autograd for ``∂f/∂y`` would give nothing; gradients w.r.t. inputs
    survive compilation.

    Returns:
        ``(graph module, the probed nodes of the copy in order)``; the probe inputs are named
        ``libra_probe_<i>`` after them.
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(probe.graph, env))
    out = next(n for n in graph.nodes if n.op == "output").args[0]
    probed = list(dict.fromkeys(n for group in (out[1], out[3]) for n in group if isinstance(n, fx.Node)))
    last_placeholder = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for index, node in enumerate(probed):
        with graph.inserting_after(last_placeholder):
            last_placeholder = graph.placeholder(f"libra_probe_{index}", default_value=None)
        with graph.inserting_after(node):
            shifted = graph.call_function(torch.add, (node, last_placeholder))
        node.replace_all_uses_with(shifted, delete_user_cb=lambda u: u is not shifted and u.op != "output")
    return fx.GraphModule(probe, graph, "Probed" + type(probe).__name__), probed


def _compiled_probe(ctx: Context, bias: bool, taps: tuple):
    key = ("compiled", bias, taps)
    if key not in ctx.probes:
        eager, sites = _probe(ctx, bias, taps)
        probed, nodes = with_gradient_inputs(eager)
        out = next(n for n in probed.graph.nodes if n.op == "output").args[0]
        positions = [nodes.index(n) for n in (*out[1], *out[3])]
        ctx.probes[key] = (eager, torch.compile(probed), len(nodes), positions, sites)
    return ctx.probes[key]


class RowTarget:
    """A callable target that carries per-sample data (token positions, ids) and may explain several
    scores per sample.

    ``target(output)`` returns ``(B,)`` scores, or ``(B, K)`` for ``per_row = K`` targets per sample:
    the run then does ONE forward and one backward per target, batched with
    ``torch.autograd.grad(..., is_grads_batched=True)``, and every result has ``B·K`` rows in
    (sample, target) order. Methods that repeat samples (integrated gradients' path) call
    :meth:`repeat_interleave` and slice the target with ``target[rows]``, as for a tensor of classes.
    """

    per_row: int = 1

    def __call__(self, output: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def repeat_interleave(self, repeats: int) -> "RowTarget":  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, rows: slice) -> "RowTarget":  # pragma: no cover - abstract
        raise NotImplementedError


def targets_per_row(target: Any) -> int:
    """How many scores per sample ``target`` explains (1 unless it is a :class:`RowTarget`)."""
    return target.per_row if isinstance(target, RowTarget) else 1


def _score(ctx: Context, flat_output: Any, target: Target) -> torch.Tensor:
    """The explained scores from an instrumented copy's flat output.

    The copy returns the graph's flat leaves; the model's own structure (a ``ModelOutput``, a
    dataclass) is rebuilt first, so that an int target indexes ``logits`` as it does for FullGrad.
    """
    output = structured_output(ctx.gm, flat_output)
    return target(output) if isinstance(target, RowTarget) else target_score(output, target)


def run_graph(ctx: Context, inputs: tuple, target: Optional[Target], taps: Sequence[fx.Node] = (),
              bias: bool = False, grad: bool = True, raw_grad: bool = False) -> FullGradTerms:
    """One forward and (when ``grad``) one ``torch.autograd.grad`` of ``ctx.gm`` on ``inputs``.

    With ``bias`` (and no compilation) this is :func:`libra_fx.completeness.fullgrad_terms`;
    otherwise the same instrumented graph, possibly compiled and without bias outputs. Only the
    gradients of the inputs, bias sites and taps are asked for, so autograd never computes a weight
    gradient. The geometry taps are added here and consumed by :func:`_learn_geometry`. A
    :class:`RowTarget` with ``K`` targets per sample gives ``B·K`` rows (one batched backward).

    Args:
        ctx: the call's context.
        inputs: positional inputs (floating ones are attributed).
        target: see :func:`libra_fx.completeness.target_score`; ``None`` with ``grad=False`` only.
        taps: nodes whose (value, gradient) to return.
        bias: compute bias×gradient terms.
        grad: run the backward.
        raw_grad: ``input_attr`` holds ∇ₓf instead of x⊙∇ₓf.

    Returns:
        :class:`FullGradTerms` with ``taps`` for the requested nodes only.
    """
    extra = ctx.geometry_taps()
    taps = tuple(taps) + tuple(extra.values())
    single = targets_per_row(target) == 1
    if bias and grad and single and not ctx.compiled and not raw_grad:
        terms = fullgrad_terms(ctx.gm, inputs, target, facts=ctx.facts, taps=taps)
    else:
        terms = _run_probe(ctx, inputs, target, taps, bias, grad, raw_grad)
    cut = len(terms.taps) - len(extra)
    _learn_geometry(ctx, {role: v for role, (v, _) in zip(extra, terms.taps[cut:])})
    terms.taps = terms.taps[:cut]
    return terms


def _compiled_pass(ctx, inputs, target, taps, bias):
    """Forward + backward through the compiled graph, intermediate gradients via zero probe inputs.

    One eager forward without gradient first gives the probe shapes (so compiled runs cost one extra
    forward)."""
    if targets_per_row(target) > 1:
        raise LibraError("compiled=True explains one score per sample; several targets per sample "
                         "(a teacher-forced continuation) run eagerly: pass compiled=False")
    eager, compiled, count, positions, sites = _compiled_probe(ctx, bias, taps)
    with torch.no_grad():
        _, site_values, _, tapped = eager(*inputs)
    values = [*site_values, *tapped]
    probes = [None] * count
    for value, at in zip(values, positions):
        probes[at] = torch.zeros_like(value, requires_grad=True)
    inputs = tuple(x.detach().requires_grad_(x.is_floating_point()) for x in inputs)
    attributed = [x for x in inputs if x.requires_grad]
    with torch.enable_grad():
        output, _, biases, _ = compiled(*inputs, **{f"libra_probe_{i}": p for i, p in enumerate(probes)})
        score = _score(ctx, output, target)
        grads = torch.autograd.grad(score.sum(), [*attributed, *probes], allow_unused=True)
    probe_grads = grads[len(attributed):]
    return output, site_values, biases, tapped, score, [*grads[:len(attributed)], *(probe_grads[i] for i in positions)], sites, attributed


def _rows(value: Any, batch: int, per_row: int) -> Any:
    """A per-sample tensor repeated to ``batch·per_row`` rows (sample-major); others unchanged."""
    if per_row == 1 or not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
        return value
    return value.repeat_interleave(per_row, 0)


def _batched_backward(score: torch.Tensor, wanted: list) -> list:
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


def _run_probe(ctx, inputs, target, taps, bias, grad, raw_grad) -> FullGradTerms:
    if ctx.compiled and grad:
        output, site_values, biases, tapped, score, grads, sites, attributed = _compiled_pass(
            ctx, inputs, target, taps, bias)
    else:
        probe, sites = _probe(ctx, bias, taps)
        inputs = tuple(x.detach().requires_grad_(grad and x.is_floating_point()) for x in inputs)
        attributed = [x for x in inputs if x.requires_grad]
        with torch.set_grad_enabled(grad):
            output, site_values, biases, tapped = probe(*inputs)
            score = _score(ctx, output, target) if target is not None else None
            wanted = [*attributed, *site_values, *tapped]
            grads = [None] * len(wanted)
            if grad and score.dim() == 2:
                grads = _batched_backward(score, wanted)
            elif grad:
                grads = torch.autograd.grad(score.sum(), wanted, allow_unused=True)
    batch = inputs[0].shape[0]
    # without a backward there is nothing per target: values keep their B rows
    per_row = score.shape[1] if grad and score.dim() == 2 else 1
    rows = lambda value: _rows(value, batch, per_row)
    attributed, site_values, tapped = [rows(x) for x in attributed], [rows(y) for y in site_values], [rows(v) for v in tapped]
    biases = [rows(b) if isinstance(b, torch.Tensor) and b.dim() == y.dim() else b for b, y in zip(biases, site_values)]
    n_in, n_sites = len(attributed), len(site_values)
    zero = lambda g, like: g if g is not None else torch.zeros_like(like)
    input_attr = [zero(g, x) if raw_grad else x.detach() * zero(g, x) for x, g in zip(attributed, grads)]
    site_attr = [(zero(g, y) * b).detach() for g, y, b in zip(grads[n_in:n_in + n_sites], site_values, biases)]
    score = score.detach().reshape(-1) if score is not None else torch.full((ctx.geo.batch,), float("nan"))
    bias_attr = sum((s.reshape(s.shape[0], -1).sum(1) for s in site_attr), torch.zeros_like(score))
    # a tapped value may be None (an optional mask placeholder left at its default)
    taps_out = [(v.detach() if isinstance(v, torch.Tensor) else v, g) for v, g in zip(tapped, grads[n_in + n_sites:])]
    return FullGradTerms(score, input_attr, bias_attr, site_attr, sites, taps_out)


# --------------------------------------------------------------------------- method registry


@dataclass
class Partial:
    """What a method computes; :func:`attribute` turns it into an :class:`Attribution`."""

    score: torch.Tensor
    pieces: list[torch.Tensor] = field(default_factory=list)
    input_attr: Optional[torch.Tensor] = None
    bias_attr: Optional[torch.Tensor] = None
    completeness_error: Optional[torch.Tensor] = None
    token_scores: Optional[torch.Tensor] = None  # set directly by the attention baselines
    blocks: list[str] = field(default_factory=list)


#: method name -> function(ctx) -> Partial
METHODS: dict[str, Callable[[Context], Partial]] = {}


def register(name: str):
    """Register an attribution method under ``name`` (used by :func:`attribute`)."""
    def decorate(fn):
        METHODS[name] = fn
        return fn
    return decorate


def _input_piece(ctx: Context, attr: torch.Tensor) -> list[torch.Tensor]:
    piece = ctx.geo.input_piece(attr)
    return [] if piece is None else [piece]


def _site_pieces(ctx: Context, terms: FullGradTerms) -> list[torch.Tensor]:
    pieces = (spatial_sum(a, ctx.geo) for a in terms.site_attr)
    return [p for p in pieces if p is not None]


def _gradients(ctx: Context, inputs: tuple, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇ₓf of the first floating input, f) in one forward and one backward."""
    terms = run_graph(ctx, inputs, target, raw_grad=True)
    return terms.input_attr[0], terms.score


@register("gradient")
def gradient(ctx: Context) -> Partial:
    """Plain gradient ∇ₓf; the map sums it over channels (signed)."""
    grad, score = _gradients(ctx, ctx.inputs, ctx.target)
    return Partial(score, _input_piece(ctx, grad), input_attr=grad)


@register("input_x_gradient")
def input_x_gradient(ctx: Context) -> Partial:
    """Input×Gradient x⊙∇ₓf."""
    terms = run_graph(ctx, ctx.inputs, ctx.target)
    attr = terms.input_attr[0]
    return Partial(terms.score, _input_piece(ctx, attr), input_attr=attr)


def _expand_target(target: Target, repeats: int) -> Target:
    if isinstance(target, (torch.Tensor, RowTarget)):
        return target.repeat_interleave(repeats)
    return target  # an int is shared; a callable must score each row on its own


def _path_inputs(ctx: Context, steps: int) -> tuple:
    """Further inputs for the path rows: per-sample tensors (a text model's attention mask and
    positions) follow their sample's ``steps`` rows; anything else is shared."""
    batch = ctx.inputs[0].shape[0]
    return tuple(_rows(t, batch, steps) for t in ctx.inputs[1:])


def _chunk(value: Any, rows: slice, total: int) -> Any:
    if isinstance(value, RowTarget) or (isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == total):
        return value[rows]
    return value


@register("integrated_gradients")
def integrated_gradients(ctx: Context) -> Partial:
    """Integrated Gradients: ``(x − x̄) ⊙ mean_k ∇f(x̄ + k/n·(x − x̄))``, k = 1..n (right Riemann sum).

    Options: ``baseline`` (tensor or float, default 0), ``steps`` (50), ``internal_batch_size``
    (rows per forward, default ``B·steps``: all at once). The first input is interpolated; further
    per-sample inputs (first dimension B) are repeated along the path, others passed unchanged.
    """
    # the score pass at batch B first: it also learns the token geometry at the true batch size
    score = run_graph(ctx, ctx.inputs, ctx.target, grad=False).score
    steps = int(ctx.options.pop("steps", 50))
    baseline = ctx.options.pop("baseline", None)
    chunk = ctx.options.pop("internal_batch_size", None)
    x = ctx.inputs[0].detach()
    base = torch.zeros_like(x) if baseline is None else torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
    alphas = torch.arange(1, steps + 1, dtype=x.dtype, device=x.device) / steps
    # rows ordered (sample, step) so that a (B,) target repeats per sample
    path = base.unsqueeze(1) + alphas.view(1, -1, *[1] * (x.dim() - 1)) * (x - base).unsqueeze(1)
    path = path.reshape(-1, *x.shape[1:])
    target, rest = _expand_target(ctx.target, steps), _path_inputs(ctx, steps)
    chunk, total = int(chunk or path.shape[0]), path.shape[0]
    grads = []
    for start in range(0, total, chunk):
        rows = slice(start, start + chunk)
        part = tuple(_chunk(t, rows, total) for t in rest)
        grads.append(_gradients(ctx, (path[rows], *part), _chunk(target, rows, total))[0])
    per_row = targets_per_row(ctx.target)
    # gradient rows come (sample, step, target): average the steps
    mean_grad = torch.cat(grads).reshape(x.shape[0], steps, per_row, *x.shape[1:]).mean(1).flatten(0, 1)
    attr = _rows(x - base, x.shape[0], per_row) * mean_grad
    return Partial(score, _input_piece(ctx, attr), input_attr=attr)


@register("fullgrad")
def fullgrad(ctx: Context) -> Partial:
    """FullGrad: x⊙∇ₓf plus every bias×gradient; bias maps are summed per location into the map."""
    terms = run_graph(ctx, ctx.inputs, ctx.target, bias=True)
    attr = terms.input_attr[0]
    pieces = _input_piece(ctx, attr) + _site_pieces(ctx, terms)
    return Partial(terms.score, pieces, input_attr=attr, bias_attr=terms.bias_attr,
                   completeness_error=terms.completeness_error)


def _block_terms(ctx: Context, last_only: bool = False) -> tuple[FullGradTerms, list[tuple]]:
    """FullGrad terms plus (value, grad) of each block input as ``(B, L, D)`` located tensors."""
    nodes = ctx.block_nodes(last_only)
    terms = run_graph(ctx, ctx.inputs, ctx.target, taps=nodes, bias=True)
    located = []
    for value, grad in terms.taps:
        grad = grad if grad is not None else torch.zeros_like(value)
        lv, lg = locations(value, ctx.geo), locations(grad, ctx.geo)
        if lv is None:
            raise LibraError(f"block input of shape {tuple(value.shape)} is not a token sequence or a "
                             "feature map; pass grid_size=/num_prefix_tokens= or other blocks=")
        located.append((lv[0], lg[0], lv[1]))
    return terms, located


def _grid(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return cam.reshape(cam.shape[0], *size)


def _blocks_used(ctx: Context, last_only: bool) -> list[str]:
    return [b.name for b in (ctx.blocks[-1:] if last_only else ctx.blocks)]


@register("fullgrad+")
def fullgrad_plus(ctx: Context) -> Partial:
    """FullGrad+: Σ over blocks of h_l⊙∇h_l at each block input, plus every bias×gradient."""
    terms, located = _block_terms(ctx)
    pieces = [_grid((h * g).sum(-1), size) for h, g, size in located] + _site_pieces(ctx, terms)
    return Partial(terms.score, pieces, bias_attr=terms.bias_attr, blocks=_blocks_used(ctx, False))


def _gradcam_weights(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g.mean(1, keepdim=True)


def _xgradcam_weights(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    magnitude = h.abs()
    return (g * magnitude).sum(1, keepdim=True) / magnitude.sum(1, keepdim=True).clamp_min(1e-12)


def _cam(ctx: Context, weights: Optional[Callable], last_only: bool) -> Partial:
    """Σ_d w_d·h_d per location at block inputs (``weights=None``: HiResCAM's elementwise g⊙h)."""
    terms, located = _block_terms(ctx, last_only)
    pieces = []
    for h, g, size in located:
        w = g if weights is None else weights(h, g)
        pieces.append(_grid((w * h).sum(-1), size))
    return Partial(terms.score, pieces, blocks=_blocks_used(ctx, last_only))


@register("gradcam")
def gradcam(ctx: Context) -> Partial:
    """GradCAM at the last block input: weights = token-mean of the gradient (no ReLU: signed)."""
    return _cam(ctx, _gradcam_weights, last_only=True)


@register("hirescam")
def hirescam(ctx: Context) -> Partial:
    """HiResCAM: h⊙∇h at the last block input, summed over the hidden dimension."""
    return _cam(ctx, None, last_only=True)


@register("gradcam+")
def gradcam_plus(ctx: Context) -> Partial:
    """GradCAM summed over every block input."""
    return _cam(ctx, _gradcam_weights, last_only=False)


@register("xgradcam+")
def xgradcam_plus(ctx: Context) -> Partial:
    """XGradCAM (weights Σ_t ∇h·|h| / Σ_t |h|) summed over every block input."""
    return _cam(ctx, _xgradcam_weights, last_only=False)


# --------------------------------------------------------------------------- attention baselines


def _sdpa_weights(node: fx.Node, values: list[torch.Tensor], gm: fx.GraphModule) -> torch.Tensor:
    """softmax(q kᵀ·scale + mask) of an sdpa call, from its tapped q, k (and mask)."""
    q, k = values[0], values[1]
    mask = values[2] if len(values) > 2 else None
    scale = arg(node, "scale")
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: repeat k heads
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    logits = q @ k.transpose(-2, -1) * scale
    if arg(node, "is_causal", False) is True:
        causal = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return logits.softmax(-1)


def _sdpa_taps(node: fx.Node) -> list[fx.Node]:
    mask = arg(node, "attn_mask")
    return [arg(node, "query"), arg(node, "key")] + ([mask] if isinstance(mask, fx.Node) else [])


def _mha_taps(node: fx.Node) -> list[fx.Node]:
    names = ("query", "key")
    return [node.kwargs[n] if n in node.kwargs else node.args[i] for i, n in enumerate(names)]


def _mha_weights(node: fx.Node, values: list[torch.Tensor], gm: fx.GraphModule) -> torch.Tensor:
    """nn.MultiheadAttention weights: the module is asked for them on the tapped query and key."""
    module = gm.get_submodule(node.target)
    mask = node.kwargs.get("attn_mask")
    if isinstance(mask, fx.Node):
        raise LibraError("attention baselines: nn.MultiheadAttention with a graph-computed mask is not supported")
    _, weights = module(values[0], values[1], values[1], need_weights=True, average_attn_weights=False,
                        attn_mask=mask)
    return weights


#: op name -> (nodes to tap, function(node, tapped values, gm) -> (B, heads, Tq, Tk) attention)
ATTENTION_READERS: dict[str, tuple[Callable, Callable]] = {
    "softmax": (lambda node: [node], lambda node, values, gm: values[0]),
    "sdpa": (_sdpa_taps, _sdpa_weights),
    "multihead_attention": (_mha_taps, _mha_weights),
}


def attention_maps(ctx: Context) -> list[torch.Tensor]:
    """Self-attention maps ``(B, heads, T, T)`` of every attention op, in graph order (one forward).

    Softmax outputs are read as they are; sdpa and ``nn.MultiheadAttention`` weights are recomputed
    from their tapped q and k. Non-square maps (attention pooling with a learned query) are skipped.
    """
    found = []
    for node in ctx.gm.graph.nodes:
        reader = ATTENTION_READERS.get(op_name(node, ctx.gm)) if node.op != "placeholder" else None
        if reader is not None:
            found.append((node, reader, reader[0](node)))
    taps = [t for _, _, nodes in found for t in nodes]
    terms = run_graph(ctx, ctx.inputs, ctx.target, taps=taps, grad=False)
    values = [v for v, _ in terms.taps]
    maps, at = [], 0
    with torch.no_grad():
        for node, (_, read), nodes in found:
            attn = read(node, values[at:at + len(nodes)], ctx.gm)
            at += len(nodes)
            if attn.dim() == 4 and attn.shape[-1] == attn.shape[-2] and attn.shape[0] == ctx.geo.batch:
                maps.append(attn)
    ctx.options["_score"] = terms.score
    if not maps:
        raise LibraError("no self-attention found in the graph: attention baselines need softmax/sdpa/"
                         "nn.MultiheadAttention attention")
    tokens = maps[-1].shape[-1]
    return [m for m in maps if m.shape[-1] == tokens]


def _query_row(matrix: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The CLS row over patch columns (mean over query rows when there is no prefix token)."""
    prefix = ctx.geo.token_prefix(matrix.shape[-1]) or 0
    rows = matrix[:, 0] if prefix > 0 else matrix.mean(1)
    return rows[:, prefix:]


def _token_partial(ctx: Context, scores: torch.Tensor) -> Partial:
    grid = ctx.geo.grid
    pieces = [scores.reshape(scores.shape[0], *grid)] if grid and grid[0] * grid[1] == scores.shape[1] else []
    return Partial(ctx.options.pop("_score"), pieces, token_scores=scores)


@register("raw_attention")
def raw_attention(ctx: Context) -> Partial:
    """Last layer's attention, averaged over heads, CLS row (non-gradient baseline)."""
    maps = attention_maps(ctx)
    return _token_partial(ctx, _query_row(maps[-1].mean(1), ctx))


@register("rollout")
def rollout(ctx: Context) -> Partial:
    """Attention rollout: Π_l normalise(0.5·mean_heads A_l + 0.5·I), CLS row (non-gradient baseline)."""
    maps = attention_maps(ctx)
    eye = torch.eye(maps[0].shape[-1], dtype=maps[0].dtype, device=maps[0].device)
    joint = eye.expand_as(maps[0][:, 0]).clone()
    for attn in maps:
        mixed = 0.5 * attn.mean(1) + 0.5 * eye
        joint = (mixed / mixed.sum(-1, keepdim=True)) @ joint
    return _token_partial(ctx, _query_row(joint, ctx))


# --------------------------------------------------------------------------- the entry point


def hook_points(module: nn.Module, blocks: Optional[Sequence[str]] = None,
                example_inputs: Any = None) -> tuple[fx.GraphModule, list[nn.Module]]:
    """A copy of a transformed module with an ``nn.Identity`` at each block input, for hook-based tools.

    Tracing inlines ``LayerNorm``, ``Linear``… into functional calls, so a transformed module calls
    almost no submodules and hook-based libraries (pytorch-grad-cam's ``target_layers``, Captum's
    layer methods) would never see an activation. This inserts one ``call_module`` identity per
    block input; forward values and (balanced) gradients are unchanged.

    Args:
        module: a transformed module (a plain one is transformed first).
        blocks: block module paths (default: discovered).
        example_inputs: passed to :func:`libra_fx.transform` for a plain module (export fallback).

    Returns:
        ``(graph module, [identity per block])``; ``modules[-1]`` is the last block's input.

    Example:
        >>> from pytorch_grad_cam import GradCAM
        >>> gm, points = hook_points(libra_fx.transform(vit))
        >>> cam = GradCAM(gm, target_layers=[points[-1]], reshape_transform=vit_reshape)
    """
    gm = module if is_transformed(module) else transform(module, example_inputs, verify=False)
    copy = fx.GraphModule(gm, copy_graph(gm.graph), type(gm).__name__)
    copy.libra_report = gm.libra_report
    found = find_blocks(analyse(copy), blocks)
    points = []
    for index, block in enumerate(found):
        name = f"libra_hook_{index}"
        copy.add_submodule(name, nn.Identity())
        with copy.graph.inserting_after(block.input):
            hook = copy.graph.call_module(name, (block.input,))
        block.input.replace_all_uses_with(hook, delete_user_cb=lambda user: user is not hook)
        points.append(copy.get_submodule(name))
    copy.recompile()
    return copy, points


def copy_graph(graph: fx.Graph) -> fx.Graph:
    new = fx.Graph()
    new.output(new.graph_copy(graph, {}))
    return new


def _geometry(model: nn.Module, inputs: tuple, options: dict) -> Geometry:
    x = next((t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
    if x is None:
        raise LibraError("attribute: no floating-point input tensor to attribute")
    image_size = tuple(x.shape[-2:]) if x.dim() == 4 else None
    grid = options.pop("grid_size", None)
    grid = (grid, grid) if isinstance(grid, int) else (tuple(grid) if grid is not None else None)
    prefix = options.pop("num_prefix_tokens", getattr(model, "num_prefix_tokens", None))
    return Geometry(x.shape[0], image_size, grid, prefix if isinstance(prefix, int) else None)


def _graph(model: nn.Module, inputs: tuple, libra: bool) -> fx.GraphModule:
    """The balanced module (transformed now unless it already is) or its plain trace."""
    gm = model if is_transformed(model) else transform(model, inputs, verify=False)
    return gm if libra else gm.libra_report.traced


def _token_scores(partial: Partial, geo: Geometry) -> Optional[torch.Tensor]:
    if partial.token_scores is not None:
        return partial.token_scores
    if geo.grid is None or not geo.tokens or not partial.pieces:
        return None
    return sum(resample(p, geo.grid) for p in partial.pieces).flatten(1)


def _image_map(partial: Partial, geo: Geometry, mode: str) -> Optional[torch.Tensor]:
    if geo.image_size is None or not partial.pieces:
        return None
    return sum(resample(p, geo.image_size, mode) for p in partial.pieces)


def run_method(gm: fx.GraphModule, inputs: tuple, target: Optional[Target], method: str, geo: Geometry,
               libra: bool, blocks: Optional[Sequence[str]] = None, compiled: bool = False,
               options: Optional[dict] = None, attributed: Optional[Sequence[str]] = None,
               methods: Optional[dict] = None) -> Attribution:
    """Run one registered method on a captured graph: the part of :func:`attribute` shared by the
    image and the text front ends (:mod:`libra_fx.text`).

    Args:
        gm: the graph to run (balanced, or the plain trace).
        inputs: its positional inputs.
        target: what to explain.
        method: a name in ``methods``.
        geo: how activations map to locations (:class:`Geometry` or a subclass).
        libra: recorded in the result.
        blocks: block module paths (default: discovered).
        compiled: run through ``torch.compile``.
        options: method options; any left unused is an error.
        attributed: names of the attributed placeholders (default: every placeholder).
        methods: the method registry (default :data:`METHODS`; text adds its own variants).

    Returns:
        :class:`Attribution`.

    Example:
        >>> gm = libra_fx.transform(vit)
        >>> run_method(gm, (x,), 0, "fullgrad", Geometry(1, (32, 32)), libra=True).score.shape
        torch.Size([1])
    """
    methods = METHODS if methods is None else methods
    check_method(method, methods)
    options = dict(options or {})
    mode = options.pop("upsample", "bilinear")
    facts = analyse(gm, attributed)
    ctx = Context(gm, facts, inputs, target, find_blocks(facts, blocks), geo, compiled, options)
    partial = methods[method](ctx)
    unused = [k for k in ctx.options if not k.startswith("_")]
    if unused:
        raise LibraError(f"attribute: method {method!r} takes no option(s) {unused}")
    return Attribution(
        input_attr=partial.input_attr,
        token_scores=_token_scores(partial, geo),
        image_map=_image_map(partial, geo, mode),
        bias_attr=partial.bias_attr,
        score=partial.score,
        completeness_error=partial.completeness_error,
        method=method,
        libra=libra,
        blocks=partial.blocks,
    )


def attribute(model: nn.Module, inputs: Optional[Inputs] = None, target: Any = None, method: str = "fullgrad+",
              libra: bool = True, blocks: Optional[Sequence[str]] = None, compiled: bool = False,
              *, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
              **options: Any) -> Attribution:
    """Attribute ``target`` to the input of ``model`` with ``method``, on the balanced or plain graph.

    Images (``inputs=``) or token ids (``input_ids=``, a Hugging Face model: see
    :func:`libra_fx.text.attribute_text` for targets, padding and the result's shapes).

    Args:
        model: an ``nn.Module`` (transformed here, nothing is cached) or the output of
            :func:`libra_fx.transform`; with ``input_ids``, a ``transformers`` model or a
            :class:`libra_fx.text.TextModel` (which keeps its capture across calls).
        inputs: the input tensor, or a tuple of positional inputs (the first floating one is the image).
        target: an int class, a ``(B,)`` tensor of classes, or a callable ``output -> (B,)`` scores;
            for text also a list of continuation tokens or a :class:`libra_fx.text.Contrast`.
        method: one of :data:`METHODS`: ``gradient``, ``input_x_gradient``, ``integrated_gradients``,
            ``fullgrad``, ``fullgrad+``, ``gradcam``, ``hirescam``, ``gradcam+``, ``xgradcam+``,
            ``rollout``, ``raw_attention``.
        libra: use the balanced graph (``True``) or the plain trace of the same model (``False``).
        blocks: module paths of the blocks (default: discovered from the model, see
            :mod:`libra_fx.blocks`).
        compiled: run the instrumented graph through ``torch.compile`` (pays off for large batches).
        input_ids: ``(B, T)`` token ids: explain a language model (the embeddings are attributed).
        attention_mask: ``(B, T)`` 1 for tokens, 0 for padding (left or right), with ``input_ids``.
        **options: ``steps``, ``baseline``, ``internal_batch_size`` (integrated gradients);
            ``num_prefix_tokens``, ``grid_size`` (override the token layout); ``upsample``
            (interpolation mode of ``image_map``, default ``"bilinear"``).

    Returns:
        :class:`Attribution` (:class:`libra_fx.text.TextAttribution` for ``input_ids``).

    Raises:
        UnknownMethodError: an unknown method (names the closest one).
        LibraError: an unknown option; no blocks for a block method; no attention for a baseline.

    Example:
        >>> import timm, torch, libra_fx
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2).eval()
        >>> result = libra_fx.attribute(vit, torch.randn(2, 3, 32, 32), target=3, method="fullgrad")
        >>> result.image_map.shape, result.token_scores.shape
        (torch.Size([2, 32, 32]), torch.Size([2, 16]))
        >>> bool(result.completeness_error.max() < 1e-4)
        True
    """
    if input_ids is not None:
        from .text import attribute_text
        return attribute_text(model, input_ids, attention_mask, target, method=method, libra=libra,
                              blocks=blocks, compiled=compiled, **options)
    check_method(method, METHODS)  # before the (slow) capture
    if inputs is None:
        raise LibraError("attribute: pass inputs= (an image batch) or input_ids= (token ids)")
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    options = dict(options)
    geo = _geometry(model, inputs, options)
    gm = _graph(model, inputs, libra)
    return run_method(gm, inputs, target, method, geo, libra, blocks, compiled, options)
