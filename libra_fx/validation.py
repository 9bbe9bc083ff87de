"""Argument checks for the public API: one-line :class:`~libra_fx.errors.ArgumentError` messages
instead of a traceback from deep inside a model or a pass.

Each check returns the normalised value, so callers can write ``passes = check_passes(passes)``.
``transform`` uses :func:`check_passes`, :func:`check_inputs` and :func:`check_devices`;
``attribute`` (and any other entry point) can use :func:`check_method`, :func:`check_target` and
:func:`check_inputs` the same way.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from .errors import (ArgumentError, DeviceMismatchError, InputError, TargetError, UnknownMethodError,
                     UnknownPassError)


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_passes(names: Any) -> list:
    """The passes that ``names`` selects (see ``passes.select``), or a one-line error.

    Args:
        names: ``None`` (all passes), a pass or group name, or a sequence of them.

    Returns:
        The selected ``Pass`` objects, in registry order.

    Raises:
        UnknownPassError: a name is neither a pass nor a group; the message lists the known ones.

    Example:
        >>> [p.name for p in check_passes("norm")]  # doctest: +SKIP
        ['normalization', 'l2_normalize']
    """
    import passes as passes_pkg  # the pass registry lives outside the package

    if names is not None and not isinstance(names, str):
        if not isinstance(names, (list, tuple, set, frozenset)) or not all(
                isinstance(n, (str, passes_pkg.Pass)) for n in names):
            raise UnknownPassError(f"passes must be None, a name or a list of names or Pass objects, not {names!r}")
    try:
        return passes_pkg.select(names)
    except ValueError:
        known = sorted(set(passes_pkg.REGISTRY) | set(passes_pkg.GROUPS))
        bad = next(n for n in ([names] if isinstance(names, str) else names) if isinstance(n, str) and n not in known)
        raise UnknownPassError(f"unknown pass {bad!r}{_suggest(bad, known)}; known passes and groups: "
                               f"{', '.join(known)}") from None


def check_method(name: str, known: Iterable[str]) -> str:
    """``name`` if it is one of ``known`` attribution methods, else a one-line error.

    Args:
        name: the requested method (``"fullgrad"``, ``"ixg"``, ...).
        known: the method names the caller supports.

    Returns:
        ``name``.

    Raises:
        UnknownMethodError: listing the known methods and the closest match.

    Example:
        >>> check_method("ixg", ["ixg", "fullgrad"])
        'ixg'
    """
    known = list(known)
    if not isinstance(name, str) or name not in known:
        raise UnknownMethodError(f"unknown attribution method {name!r}{_suggest(name, known)}; "
                                 f"known methods: {', '.join(sorted(known))}")
    return name


def check_target(target: Any, logits: torch.Tensor) -> Any:
    """Check a class target against the (B, C) logits it indexes.

    Callables are not checked (they pick their own field or score).

    Args:
        target: an int class index, a (B,) integer tensor of indices, or a callable.
        logits: the tensor the index applies to.

    Returns:
        ``target`` unchanged.

    Raises:
        TargetError: index out of range, logits not (B, C), or a tensor of the wrong shape/dtype.

    Example:
        >>> check_target(2, torch.zeros(1, 5))
        2
    """
    if callable(target) and not isinstance(target, torch.Tensor):
        return target
    if isinstance(target, bool) or not isinstance(target, (int, torch.Tensor)):
        raise TargetError(f"target must be an int class index, a (B,) tensor of indices or a callable, "
                          f"not {type(target).__name__}")
    if logits.dim() != 2:
        raise TargetError(f"a class-index target needs (B, C) logits, but the output has shape "
                          f"{tuple(logits.shape)}; pass a callable target instead")
    batch, classes = logits.shape
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dim() > 1 or target.numel() not in (1, batch):
            raise TargetError(f"a tensor target must hold {batch} integer class indices (one per sample), "
                              f"got dtype {target.dtype} and shape {tuple(target.shape)}")
        low, high = (int(target.min()), int(target.max())) if target.numel() else (0, 0)
    else:
        low = high = target
    if low < -classes or high >= classes:
        bad = high if high >= classes else low
        raise TargetError(f"target class {bad} is out of range for {classes} classes")
    return target


def _tensors(inputs: Sequence[Any]) -> list[torch.Tensor]:
    return [x for x in inputs if isinstance(x, torch.Tensor)]


def model_device(model: nn.Module) -> Optional[torch.device]:
    """The one device all of ``model``'s parameters and buffers are on; ``None`` if none or several."""
    devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
    return devices.pop() if len(devices) == 1 else None


def check_devices(model: nn.Module, inputs: Sequence[Any], name: str = "") -> None:
    """Inputs must be on the model's device (models spread over several devices are not checked).

    Args:
        model: the module.
        inputs: positional inputs.
        name: the model's name for the message.

    Raises:
        DeviceMismatchError: naming both devices and the fix.

    Example:
        >>> check_devices(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
    """
    device = model_device(model)
    if device is None:
        return
    for index, x in enumerate(_tensors(inputs)):
        if x.device != device:
            raise DeviceMismatchError(f"{name or type(model).__name__}: input {index} is on {x.device} but the "
                                      f"model is on {device}; move one of them (x.to({str(device)!r}))")


def _expected_input(model: nn.Module) -> Optional[tuple]:
    """(C, H, W)-style input size from a timm model's config, when it has one."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (tuple, list)):
            return tuple(cfg["input_size"])
    return None


def check_inputs(model: nn.Module, inputs: Sequence[Any], name: str = "") -> tuple:
    """Check example inputs before they reach the model: tensors, device, and rank/channels.

    Rank and channel count are checked where the model declares them (timm's ``input_size``);
    other shape errors surface as :class:`InputError` when verification runs the model.

    Args:
        model: the module.
        inputs: positional inputs (a tuple).
        name: the model's name for messages.

    Returns:
        ``inputs`` as a tuple.

    Raises:
        InputError: no tensor among the inputs, wrong rank or channel count.
        DeviceMismatchError: inputs on another device than the model.

    Example:
        >>> check_inputs(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
        (tensor([[0., 0.]]),)
    """
    name = name or type(model).__name__
    inputs = tuple(inputs)
    if not _tensors(inputs):
        raise InputError(f"{name}: example inputs must include a tensor, got "
                         f"{', '.join(type(x).__name__ for x in inputs) or 'nothing'}")
    check_devices(model, inputs, name)
    expected, first = _expected_input(model), inputs[0]
    if expected is not None and isinstance(first, torch.Tensor):
        if first.dim() != len(expected) + 1:
            raise InputError(f"{name}: expected a batched input of rank {len(expected) + 1} "
                             f"(B, {', '.join(map(str, expected))}), got shape {tuple(first.shape)}")
        if first.shape[1] != expected[0]:
            raise InputError(f"{name}: expected {expected[0]} input channels, got shape {tuple(first.shape)}")
    return inputs


def shapes(inputs: Sequence[Any]) -> str:
    """``"(2, 3, 32, 32), int"``: the inputs' shapes (or types) for messages."""
    return ", ".join(str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs)


CAPTURES = ("auto", "export")


def check_capture(capture: str, example: Optional[tuple], model_name: str) -> None:
    """A known capture mode, and example inputs when it is ``"export"``.

    Raises:
        ArgumentError: an unknown mode; InputError: ``"export"`` without example inputs.
    """
    if capture not in CAPTURES:
        raise ArgumentError(f"unknown capture {capture!r}; use one of {', '.join(CAPTURES)}")
    if capture == "export" and example is None:
        raise InputError(f"{model_name}: capture='export' needs example_inputs (torch.export runs the model)")
