"""Input-gradient methods: gradient, input×gradient, integrated gradients."""
from __future__ import annotations

from typing import Any

import torch

from ..context import Context, run_graph
from ..targets import RowTarget, Target, expand_target, repeat_rows, targets_per_row
from .pieces import input_piece
from .registry import Partial, register


def input_gradient(ctx: Context, inputs: tuple, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇ₓf of the first floating input, f) in one forward and one backward."""
    terms = run_graph(ctx, inputs, target, raw_grad=True)
    return terms.input_attr[0], terms.score


@register("gradient")
def gradient(ctx: Context) -> Partial:
    """Plain gradient ∇ₓf; the map sums it over channels (signed)."""
    grad, score = input_gradient(ctx, ctx.inputs, ctx.target)
    return Partial(score, input_piece(ctx, grad), input_attr=grad)


@register("input_x_gradient")
def input_x_gradient(ctx: Context) -> Partial:
    """Input×Gradient x⊙∇ₓf."""
    terms = run_graph(ctx, ctx.inputs, ctx.target)
    attr = terms.input_attr[0]
    return Partial(terms.score, input_piece(ctx, attr), input_attr=attr)


def _path_inputs(ctx: Context, steps: int) -> tuple:
    """Further inputs for the path rows: per-sample tensors (a text model's attention mask and
    positions) follow their sample's ``steps`` rows; anything else is shared."""
    batch = ctx.inputs[0].shape[0]
    return tuple(repeat_rows(t, batch, steps) for t in ctx.inputs[1:])


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
    target, rest = expand_target(ctx.target, steps), _path_inputs(ctx, steps)
    chunk, total = int(chunk or path.shape[0]), path.shape[0]
    grads = []
    for start in range(0, total, chunk):
        rows = slice(start, start + chunk)
        part = tuple(_chunk(t, rows, total) for t in rest)
        grads.append(input_gradient(ctx, (path[rows], *part), _chunk(target, rows, total))[0])
    per_row = targets_per_row(ctx.target)
    # gradient rows come (sample, step, target): average the steps
    mean_grad = torch.cat(grads).reshape(x.shape[0], steps, per_row, *x.shape[1:]).mean(1).flatten(0, 1)
    attr = repeat_rows(x - base, x.shape[0], per_row) * mean_grad
    return Partial(score, input_piece(ctx, attr), input_attr=attr)
