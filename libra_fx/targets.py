"""What an attribution explains: the target score read from a model output (spec §5).

A target is an int class, a ``(B,)`` tensor of classes, a callable ``output -> (B,)`` scores, or a
:class:`RowTarget` that explains several scores per sample. :func:`explained_score` is the one
place a graph's (flat) output becomes the scores that every runner differentiates.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Union

import torch
import torch.fx as fx

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


def explained_score(gm: fx.GraphModule, flat_output: Any, target: Target) -> torch.Tensor:
    """The explained scores from the flat output of a copy of ``gm``'s graph.

    Copies of the graph (:func:`libra_fx.probes.instrument`) return the graph's flat leaves; the
    model's own structure (a ``ModelOutput``, a dataclass) is rebuilt first, so that an int target
    indexes ``logits`` whatever the method. A :class:`RowTarget` gives ``(B,)`` or ``(B, K)``.
    """
    output = structured_output(gm, flat_output)
    return target(output) if isinstance(target, RowTarget) else target_score(output, target)


def repeat_rows(value: Any, batch: int, per_row: int) -> Any:
    """A per-sample tensor repeated to ``batch·per_row`` rows (sample-major); others unchanged."""
    if per_row == 1 or not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
        return value
    return value.repeat_interleave(per_row, 0)


def expand_target(target: Target, repeats: int) -> Target:
    """``target`` for inputs whose every sample is repeated ``repeats`` times (sample-major)."""
    if isinstance(target, (torch.Tensor, RowTarget)):
        return target.repeat_interleave(repeats)
    return target  # an int is shared; a callable must score each row on its own
