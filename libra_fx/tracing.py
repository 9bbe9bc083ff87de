"""Capture a model as a torch.fx graph whose parameter names are the model's own.

Symbolic tracing first, with :class:`libra_fx.tracer.LibraTracer` (timm's not-traceable registries
respected, libra_fx's own operators kept whole, so that tracing a transformed module again gives the
same graph). Where symbolic tracing fails and example inputs are given, ``torch.export``
(non-strict) captures the model instead.

Right after capture, :func:`normalise_graph` puts the graph in the form the analysis and passes assume:

* in-place ops are made out-of-place (:func:`libra_fx.functionalize.functionalize_inplace`), with
  later uses of the mutated value redirected to the new one, so that dataflow is explicit; mutations
  through views cannot be rewritten this way and are reported instead;
* structured outputs (dataclasses, ``ModelOutput``-like dict subclasses) become a flat tuple of
  tensors in the graph, rebuilt by the generated code (:func:`libra_fx.outputs.flatten_output`), so
  the output node only ever holds tensors, tuples, lists and dicts.

Capture is serialised by a lock: FX's autowrapping patches module globals while it traces, which is
not safe for two threads at once.
"""
from __future__ import annotations

import copy
import linecache
import threading
import traceback
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import TraceError
from .functionalize import functionalize_inplace
from .module_paths import is_model_code
from .outputs import flatten_output
from .tracer import trace_entering_leaves, watch_autograd_functions

#: one capture at a time. FX autowrapping (timm's functions, libra_fx's operators) and
#: :func:`~libra_fx.tracer.watch_autograd_functions` patch module globals and
#: ``torch.autograd.Function.apply`` for the duration of a trace: a second thread tracing meanwhile
#: would see (and then restore) the first one's patches. Re-entrant, so that a capture started on
#: the thread that holds it (a model whose forward calls ``trace``) does not deadlock.
_CAPTURE_LOCK = threading.RLock()


def model_name(model: nn.Module) -> str:
    """A short name for messages: the class and, for timm models, the architecture."""
    arch = getattr(model, "default_cfg", None) or getattr(model, "pretrained_cfg", None) or {}
    name = arch.get("architecture") if isinstance(arch, dict) else None
    return f"{type(model).__name__}({name})" if name else type(model).__name__


# ----------------------------------------------------------------------------------------------
# train mode without touching the user's model


def eval_clone(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode that shares every parameter and buffer with it.

    Only the module objects are new (so their ``training`` flags are independent); tensors are the
    same objects, so the clone stays in sync with the original's weights.

    Args:
        module: any module; it is not modified.

    Returns:
        The clone, with ``training=False`` everywhere.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Dropout(0.5)).train()
        >>> c = eval_clone(m); (m.training, c.training, c[0] is m[0])
        (True, False, False)
    """
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {name: (eval_clone(child) if child is not None else None)
                      for name, child in module._modules.items()}
    clone.training = False
    return clone


# ----------------------------------------------------------------------------------------------
# capture


def _user_frame(tb) -> Optional[traceback.FrameSummary]:
    """The innermost frame outside torch and libra_fx: where the model's own code did what failed."""
    frames = [f for f in traceback.extract_tb(tb)  # (``<string>``: code FX generated, not the model's)
              if is_model_code(f.filename) and not f.filename.startswith("<")]
    return frames[-1] if frames else None


_DATA_DEPENDENT = ("control flow", "data-dependent", "data dependent", "GuardOnDataDependent",
                   "could not guard", "Could not guard", "iteration over a 0-d", "Proxy object cannot be iterated")


def _hint(exc: BaseException, has_inputs: bool) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if any(marker in text for marker in _DATA_DEPENDENT):
        fix = ("rewrite the branch on tensor values without Python control flow (torch.where, masking) "
               "or move it out of forward()")
        return fix if has_inputs else f"pass example_inputs=... to enable the torch.export fallback, or {fix}"
    if "not a known type" in text and "Cache" in text:  # Hugging Face's default use_cache=True
        return ("the model returns a KV cache (a Python object export cannot flatten); call it with "
                "use_cache=False, e.g. wrap it: forward(ids) = model(ids, use_cache=False).logits")
    return "" if has_inputs else "pass example_inputs=... to enable the torch.export fallback"


def _failure(model: nn.Module, exc: BaseException, has_inputs: bool = False,
             export_exc: Optional[BaseException] = None) -> TraceError:
    """A one-line :class:`TraceError` naming the model class, the failing op and its ``file:line``."""
    cause = export_exc if export_exc is not None and _user_frame(export_exc.__traceback__) else exc
    frame = _user_frame(cause.__traceback__) or _user_frame(exc.__traceback__)
    source = f"{frame.filename}:{frame.lineno}" if frame else None
    op = (frame.line or linecache.getline(frame.filename, frame.lineno).strip()) if frame else type(exc).__name__
    # the export failure comes first: symbolic tracing fails on most modern models for reasons
    # (Python control flow on shapes) that say nothing about what went wrong in the end
    detail = _first_line(exc) if export_exc is None else \
        f"torch.export failed: {_first_line(export_exc)} (symbolic tracing failed first: {_first_line(exc)})"
    return TraceError(model_name(model), op, source, detail, _hint(export_exc or exc, has_inputs))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _symbolic(model: nn.Module, leaf_types: Sequence[type]) -> fx.GraphModule:
    with watch_autograd_functions([]):
        tracer, graph = trace_entering_leaves(model, leaf_types)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _automatic_shapes(example_inputs: tuple) -> tuple:
    """Every dimension of every tensor input left for export to decide (``Dim.AUTO``): dynamic where
    the model allows it, so one capture serves other batch sizes and sequence lengths."""
    return tuple({d: torch.export.Dim.AUTO for d in range(x.dim())} if isinstance(x, torch.Tensor) else None
                 for x in example_inputs)


def _export_program(model: nn.Module, example_inputs: tuple, dynamic_shapes: Any):
    if isinstance(dynamic_shapes, str) and dynamic_shapes == "auto":
        try:
            return torch.export.export(model, example_inputs, strict=False,
                                       dynamic_shapes=_automatic_shapes(example_inputs))
        except Exception:  # some models cannot be captured with symbolic sizes: the example's shapes
            dynamic_shapes = None
    return torch.export.export(model, example_inputs, strict=False, dynamic_shapes=dynamic_shapes)


def _exported(model: nn.Module, example_inputs: tuple, dynamic_shapes: Any = None) -> fx.GraphModule:
    with watch_autograd_functions([]) as applied:
        program = _export_program(model, example_inputs, dynamic_shapes)
    module = program.module()
    module.meta["libra_capture"] = "torch.export"
    # export inlines a Function's forward: its backward is lost, so the transform reports it
    # (not the Functions torch.library generates for custom ops: export keeps the op as one node)
    module.meta["libra_inlined_functions"] = sorted({cls.__qualname__ for cls in applied
                                                     if not cls.__module__.startswith("torch._library")})
    return module


def _as_tuple(example_inputs: Any) -> Optional[tuple]:
    if example_inputs is None:
        return None
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def normalise_graph(gm: fx.GraphModule) -> list[tuple[fx.Node, str]]:
    """Put a captured graph in the form the analysis assumes (see the module docstring).

    Args:
        gm: a GraphModule from :func:`trace`; edited in place and recompiled.

    Returns:
        The in-place ops that could not be made out-of-place, with the reason (see
        :func:`~libra_fx.functionalize.functionalize_inplace`); also stored as ``gm.meta["libra_inplace"]``.
    """
    refused = functionalize_inplace(gm)
    if not isinstance(gm.graph._codegen, fx.graph._PyTreeCodeGen):  # export already flattens outputs
        flatten_output(gm)
    gm.graph.lint()
    gm.recompile()
    gm.meta["libra_inplace"] = [(node.name, reason) for node, reason in refused]
    return refused


def trace(model: nn.Module, example_inputs: Any = None, *, leaf_types: Iterable[type] = (),
          capture: str = "auto", dynamic_shapes: Any = None) -> fx.GraphModule:
    """Capture ``model`` as an FX GraphModule (symbolic tracing, then ``torch.export``), normalised.

    Args:
        model: the module to capture; it is not modified.
        example_inputs: a tensor or a tuple of tensors; needed only for the ``torch.export`` fallback.
        leaf_types: extra module classes to keep as single ``call_module`` nodes.
        capture: ``"auto"`` (symbolic tracing, export as fallback) or ``"export"`` (export only;
            needs ``example_inputs``).
        dynamic_shapes: passed to ``torch.export.export``; ``"auto"`` makes every dimension
            ``Dim.AUTO`` (one capture serves other batch sizes and sequence lengths; the example's
            static shapes where that capture fails). ``None``: static shapes, the fastest capture
            (symbolic sizes can cost minutes of shape reasoning on convolutional hybrids).

    Returns:
        A GraphModule sharing the model's parameters, with their qualified names
        (``blocks.0.norm1.bias`` stays that). ``gm.meta["libra_capture"]`` says which capture worked;
        ``gm.meta["libra_inplace"]`` lists in-place ops that had to stay in place (see
        :func:`normalise_graph`).

    Raises:
        TraceError: when every capture fails; it names the model class, the failing op and its
            source line, and suggests a fix.

    Example:
        >>> gm = trace(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.GELU()))
        >>> [n.op for n in gm.graph.nodes]
        ['placeholder', 'get_attr', 'get_attr', 'call_function', 'call_function', 'output']
    """
    inputs = _as_tuple(example_inputs)
    with _CAPTURE_LOCK:
        if capture == "export":
            gm = _exported(model, inputs, dynamic_shapes)
        else:
            gm = _capture(model, inputs, tuple(leaf_types), dynamic_shapes)
        normalise_graph(gm)
    return gm


def _capture(model: nn.Module, inputs: Optional[tuple], leaf_types: tuple,
             dynamic_shapes: Any = None) -> fx.GraphModule:
    try:
        gm = _symbolic(model, leaf_types)
        gm.meta["libra_capture"] = "symbolic_trace"
        return gm
    except Exception as exc:  # any tracing failure: try the fallback, then report the first cause
        first = exc
    if inputs is None:
        raise _failure(model, first) from None
    try:
        return _exported(model, inputs, dynamic_shapes)
    except Exception as exc:
        raise _failure(model, first, True, exc) from None
