"""Capture a model as a torch.fx graph whose parameter names are the model's own.

Symbolic tracing first, with timm's not-traceable registries respected (its leaf modules stay single
``call_module`` nodes, its autowrapped functions single ``call_function`` nodes) and libra_fx's own
operators kept whole, so that tracing a transformed module again gives the same graph. Where symbolic
tracing fails and example inputs are given, ``torch.export`` (non-strict) captures the model instead.
"""
from __future__ import annotations

import linecache
import sys
import traceback
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from . import functional as LF
from . import ops as LO
from .errors import TraceError

#: modules always kept whole: MHA has its own pass; its forward has data-dependent branches.
ALWAYS_LEAF: tuple[type, ...] = (nn.MultiheadAttention,)


def _timm_notrace() -> tuple[tuple[type, ...], tuple[Any, ...]]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # timm is optional for tracing
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())


class LibraTracer(fx.Tracer):
    """A tracer that goes through every module except the ones it cannot or must not enter.

    Going through ``nn.LayerNorm``, ``nn.GELU`` or ``nn.Linear`` exposes their functional calls, so
    passes see one spelling per op and parameters appear as ``get_attr`` nodes with their names.
    """

    def __init__(self, leaf_types: Sequence[type] = ()):
        timm_modules, timm_functions = _timm_notrace()
        super().__init__(autowrap_functions=timm_functions + LO.LIBRA_OPS + LF.BALANCED_OPS)
        self.leaf_types = tuple(leaf_types) + ALWAYS_LEAF + timm_modules
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaf_types)


def model_name(model: nn.Module) -> str:
    """A short name for messages: the class and, for timm models, the architecture."""
    arch = getattr(model, "default_cfg", None) or getattr(model, "pretrained_cfg", None) or {}
    name = arch.get("architecture") if isinstance(arch, dict) else None
    return f"{type(model).__name__}({name})" if name else type(model).__name__


def _user_frame(tb) -> Optional[traceback.FrameSummary]:
    """The innermost frame outside torch: where the model's own code did what failed."""
    frames = [f for f in traceback.extract_tb(tb) if "/torch/" not in f.filename]
    return frames[-1] if frames else None


def _failure(model: nn.Module, exc: BaseException) -> TraceError:
    frame = _user_frame(exc.__traceback__)
    source = f"{frame.filename}:{frame.lineno}" if frame else None
    op = (frame.line or linecache.getline(frame.filename, frame.lineno).strip()) if frame else type(exc).__name__
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return TraceError(model_name(model), op, source, detail)


def _symbolic(model: nn.Module, leaf_types: Sequence[type]) -> fx.GraphModule:
    tracer = LibraTracer(leaf_types)
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _exported(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    program = torch.export.export(model, example_inputs, strict=False)
    module = program.module()
    module.meta["libra_capture"] = "torch.export"
    return module


def _as_tuple(example_inputs: Any) -> Optional[tuple]:
    if example_inputs is None:
        return None
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def trace(model: nn.Module, example_inputs: Any = None, *, leaf_types: Iterable[type] = ()) -> fx.GraphModule:
    """Capture ``model`` as an FX GraphModule (symbolic tracing, then ``torch.export``).

    Args:
        model: the module to capture; it is not modified.
        example_inputs: a tensor or a tuple of tensors; needed only for the ``torch.export`` fallback.
        leaf_types: extra module classes to keep as single ``call_module`` nodes.

    Returns:
        A GraphModule sharing the model's parameters, with their qualified names
        (``blocks.0.norm1.bias`` stays that). ``gm.meta["libra_capture"]`` says which capture worked.

    Raises:
        TraceError: when every capture fails; it names the model class, the failing op and its
            source line.

    Example:
        >>> gm = trace(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.GELU()))
        >>> [n.op for n in gm.graph.nodes]
        ['placeholder', 'get_attr', 'get_attr', 'call_function', 'call_function', 'output']
    """
    inputs = _as_tuple(example_inputs)
    try:
        gm = _symbolic(model, tuple(leaf_types))
        gm.meta["libra_capture"] = "symbolic_trace"
        return gm
    except Exception as exc:  # any tracing failure: try the fallback, then report the first cause
        first_failure = _failure(model, exc)
    if inputs is None:
        first_failure.args = (first_failure.args[0] + "; pass example_inputs=... to enable the torch.export fallback",)
        raise first_failure
    try:
        return _exported(model, inputs)
    except Exception as exc:
        raise first_failure from exc
