"""The FX tracer libra_fx captures models with, and what it patches while it traces.

:class:`LibraTracer` enters every module except the ones it cannot or must not (``nn.MultiheadAttention``,
timm's not-traceable leaves whose forward fails: :func:`trace_entering_leaves`), keeps timm's
autowrapped functions and libra_fx's own operators whole, records ``x += y`` as an in-place op
(:class:`LibraProxy`) and ``ModelOutput``-like dict subclasses as their constructor.
:func:`watch_autograd_functions` keeps custom ``autograd.Function``s one opaque node.

Capture itself (symbolic tracing, the ``torch.export`` fallback, errors) is :mod:`libra_fx.tracing`.
"""
from __future__ import annotations

import contextlib
import operator
from collections.abc import Mapping
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import functional as LF
from . import ops as LO

__all__ = ["ALWAYS_LEAF", "MAX_LEAF_RETRIES", "LibraProxy", "LibraTracer", "trace_entering_leaves",
           "watch_autograd_functions"]

#: modules always kept whole: MHA has its own pass; its forward has data-dependent branches.
ALWAYS_LEAF: tuple[type, ...] = (nn.MultiheadAttention,)

#: how many timm leaf classes :func:`trace_entering_leaves` keeps whole, one per failed trace, before
#: it gives up entering them: each retry is a full trace of the model, and models with more failing
#: leaf classes than this are rare (they are then traced with every timm leaf kept whole).
MAX_LEAF_RETRIES = 8

def _timm_notrace() -> tuple[tuple[type, ...], tuple[Any, ...]]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # timm is optional for tracing
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())


_INPLACE_DUNDERS = {
    "__iadd__": operator.iadd, "__isub__": operator.isub, "__imul__": operator.imul,
    "__itruediv__": operator.itruediv, "__ifloordiv__": operator.ifloordiv, "__imod__": operator.imod,
    "__ipow__": operator.ipow, "__imatmul__": operator.imatmul, "__iand__": operator.iand,
    "__ior__": operator.ior, "__ixor__": operator.ixor,
}


def _inplace_dunder(function):
    def method(self, other):
        return self.tracer.create_proxy("call_function", function, (self, other), {})
    return method


class LibraProxy(fx.Proxy):
    """An FX proxy that records ``x += y`` as ``operator.iadd`` instead of ``x = x + y``.

    Plain FX proxies have no ``__iadd__``, so Python falls back to an out-of-place add: a tensor
    aliased before the ``+=`` (``shortcut = x; x += y``) then keeps its old value in the graph while
    eager mode sees the new one. Recording the in-place op keeps eager semantics;
    :func:`libra_fx.functionalize.functionalize_inplace` then rewrites it out-of-place with the
    aliases redirected.
    """


for _dunder, _function in _INPLACE_DUNDERS.items():
    setattr(LibraProxy, _dunder, _inplace_dunder(_function))


_PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # subclasses (BatchNormAct2d) add ops


def _batch_norm_forward(module: nn.modules.batchnorm._BatchNorm):
    """BatchNorm's forward without ``_check_input_dim`` (``x.dim()`` on a proxy cannot branch)."""
    def forward(x):
        batch_statistics = module.training or module.running_mean is None
        return F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias,
                            batch_statistics, module.momentum or 0.0, module.eps)
    return forward


class LibraTracer(fx.Tracer):
    """A tracer that goes through every module except the ones it cannot or must not enter.

    Going through ``nn.LayerNorm``, ``nn.GELU`` or ``nn.Linear`` exposes their functional calls, so
    passes see one spelling per op and parameters appear as ``get_attr`` nodes with their names.
    """

    def __init__(self, leaf_types: Sequence[type] = (), enter_timm_leaves: bool = True):
        timm_modules, timm_functions = _timm_notrace()
        super().__init__(autowrap_functions=timm_functions + LO.LIBRA_OPS + LF.BALANCED_OPS)
        self.leaf_types = tuple(leaf_types) + ALWAYS_LEAF + timm_modules
        self.fixed_leaf_types = tuple(leaf_types) + ALWAYS_LEAF
        self.enter_timm_leaves = enter_timm_leaves
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if not isinstance(m, self.leaf_types):
            return False
        if isinstance(m, self.fixed_leaf_types) or not self.enter_timm_leaves:
            return True
        return isinstance(m, self.kept_timm_leaves)

    # timm's not-traceable leaves (``BatchNormAct2d``, ``TinyVitBlock``, ``LocalWindowAttention``, ...)
    # are marked for timm's feature extractor; many trace fine in context. The tracer enters them so
    # their norms, gates and attention reach the passes; :func:`trace_entering_leaves` keeps whole
    # the classes whose forward fails (shape-dependent control flow), found from the failing call.
    kept_timm_leaves: tuple[type, ...] = ()
    failed_leaf: Optional[type] = None

    def call_module(self, m, forward, args, kwargs):
        if type(m) in _PLAIN_BATCH_NORMS and not self.is_leaf_module(m, ""):
            forward = _batch_norm_forward(m)
        entered = self.enter_timm_leaves and isinstance(m, self.leaf_types) and not self.is_leaf_module(m, "")
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if entered and self.failed_leaf is None:
                self.failed_leaf = type(m)  # the innermost entered leaf sees the error first
            raise

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return LibraProxy(node, self)

    def create_arg(self, a: Any):
        # FX turns any dict subclass into a plain dict, losing e.g. ModelOutput's attribute access:
        # record the subclass's constructor instead, as FX itself does for dataclasses.
        if isinstance(a, Mapping) and type(a) is not dict and not isinstance(a, fx.Proxy):
            items = {key: self.create_arg(value) for key, value in a.items()}
            return self.create_node("call_function", type(a), (items,), {})
        return super().create_arg(a)


_APPLY_WRAPPERS: dict[type, Any] = {}


def _apply_wrapper(cls: type) -> Any:
    """A function calling ``cls.apply``, named ``<Class>.apply`` so reports can name the Function."""
    if cls not in _APPLY_WRAPPERS:
        def apply(*args, **kwargs):
            return cls.apply(*args, **kwargs)
        apply.__name__, apply.__qualname__, apply.__module__ = "apply", f"{cls.__qualname__}.apply", cls.__module__
        _APPLY_WRAPPERS[cls] = apply
    return _APPLY_WRAPPERS[cls]


@contextlib.contextmanager
def watch_autograd_functions(record: list):
    """While capturing, make custom ``autograd.Function``s visible instead of inlined.

    Tracing (FX or export) otherwise runs ``forward`` on proxies and silently drops the custom
    ``backward``. Under symbolic tracing each ``Fn.apply`` becomes one opaque ``call_function`` node
    (reported as unknown by the analysis); every class applied is appended to ``record``. The patch
    is undone on exit and held under the capture lock, as FX's own patches of ``nn.Module`` are.
    """
    original = torch.autograd.Function.__dict__["apply"]  # a classmethod (C-level since torch 2.14)

    def apply(cls, *args, **kwargs):
        record.append(cls)
        proxy = next((a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, fx.Proxy)), None)
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", _apply_wrapper(cls), args, kwargs)
        return original.__get__(None, cls)(*args, **kwargs)

    torch.autograd.Function.apply = classmethod(apply)
    try:
        yield record
    finally:
        torch.autograd.Function.apply = original


def trace_entering_leaves(model: nn.Module, leaf_types: Sequence[type],
                          tries: int = MAX_LEAF_RETRIES) -> tuple[LibraTracer, fx.Graph]:
    """Trace ``model`` through timm's not-traceable leaves, keeping whole the classes that fail.

    Each failure inside an entered leaf adds that leaf's class to the kept ones and traces again (at
    most ``tries`` times, then with every timm leaf kept); a failure elsewhere is raised. Leaves
    kept whole are opaque ``call_module`` nodes the audit reports.
    """
    kept: tuple[type, ...] = ()
    for _ in range(tries):
        tracer = LibraTracer(leaf_types)
        tracer.kept_timm_leaves = kept
        try:
            return tracer, tracer.trace(model)
        except Exception:
            if tracer.failed_leaf is None:
                raise
            kept += (tracer.failed_leaf,)
    tracer = LibraTracer(leaf_types, enter_timm_leaves=False)
    return tracer, tracer.trace(model)
