"""Capture a model as a torch.fx graph whose parameter names are the model's own.

Symbolic tracing first, with timm's not-traceable registries respected (its leaf modules stay single
``call_module`` nodes, its autowrapped functions single ``call_function`` nodes) and libra_fx's own
operators kept whole, so that tracing a transformed module again gives the same graph. Where symbolic
tracing fails and example inputs are given, ``torch.export`` (non-strict) captures the model instead.

Right after capture, :func:`normalise` puts the graph in the form the analysis and passes assume:

* in-place ops are made out-of-place (:func:`functionalize_inplace`), with later uses of the mutated
  value redirected to the new one, so that dataflow is explicit; mutations through views cannot be
  rewritten this way and are reported instead;
* structured outputs (dataclasses, ``ModelOutput``-like dict subclasses) become a flat tuple of
  tensors in the graph, rebuilt by the generated code (:func:`flatten_output`), so the output node
  only ever holds tensors, tuples, lists and dicts.

Capture is serialised by a lock: FX's autowrapping patches module globals while it traces, which is
not safe for two threads at once.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import linecache
import operator
import threading
import traceback
from collections.abc import Mapping
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import functional as LF
from . import ops as LO
from .errors import TraceError
from .opset import op_name

#: modules always kept whole: MHA has its own pass; its forward has data-dependent branches.
ALWAYS_LEAF: tuple[type, ...] = (nn.MultiheadAttention,)

#: one capture at a time: FX autowrapping temporarily patches module globals (see module doc).
_CAPTURE_LOCK = threading.RLock()

#: where GraphModule.__deepcopy__ looks for attributes to carry over (torch.fx.graph_module).
_PRESERVED = "_user_preserved_attributes"


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
    :func:`functionalize_inplace` then rewrites it out-of-place with the aliases redirected.
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
# structured outputs


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """The shape of a model output with its tensors taken out (a tiny, picklable pytree spec).

    Attributes:
        kind: ``"leaf"`` (a tensor or graph value), ``"const"``, ``"sequence"``, ``"namedtuple"``,
            ``"mapping"`` or ``"dataclass"``.
        cls: the container class (``tuple``, a dataclass, an ``OrderedDict`` subclass, ...).
        keys: mapping keys or dataclass field names, in order.
        children: the specs of the items.
        value: the constant, for ``"const"``.
    """

    kind: str
    cls: Any = None
    keys: tuple = ()
    children: tuple = ()
    value: Any = None


_LEAF = OutputSpec("leaf")


def _builds_container(value: Any) -> bool:
    """A graph node that builds a dataclass or a dict subclass (see ``LibraTracer.create_arg``)."""
    return (isinstance(value, fx.Node) and value.op == "call_function" and isinstance(value.target, type)
            and (dataclasses.is_dataclass(value.target) or issubclass(value.target, Mapping)))


def _is_container_node(value: Any) -> bool:
    """A container-building node whose only user is the output (or an enclosing container)."""
    return _builds_container(value) and len(value.users) == 1


def _container_items(node: fx.Node) -> tuple[str, tuple, tuple]:
    if dataclasses.is_dataclass(node.target):
        return "dataclass", tuple(node.kwargs), tuple(node.kwargs.values())
    items = node.args[0] if node.args else node.kwargs
    return "mapping", tuple(items), tuple(items.values())


def flatten_value(value: Any, leaf=lambda v: isinstance(v, (torch.Tensor, fx.Node))) -> tuple[OutputSpec, list]:
    """Split an output (or a graph's output argument) into its spec and its leaves.

    Args:
        value: a model output: tensors nested in tuples, lists, namedtuples, dicts, dict subclasses
            and dataclasses; or the argument of a graph's output node.
        leaf: what counts as a leaf (tensors and graph nodes by default).

    Returns:
        ``(spec, leaves)``; ``rebuild_output(spec, leaves)`` gives back an equal structure.

    Example:
        >>> spec, leaves = flatten_value({"logits": torch.zeros(1), "aux": (torch.ones(1), None)})
        >>> len(leaves), spec.kind
        (2, 'mapping')
    """
    if _is_container_node(value):
        kind, keys, items = _container_items(value)
        specs, leaves = _flatten_all(items, leaf)
        return OutputSpec(kind, value.target, keys, specs), leaves
    if leaf(value):
        return _LEAF, [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        keys = tuple(f.name for f in dataclasses.fields(value) if f.init)
        specs, leaves = _flatten_all([getattr(value, k) for k in keys], leaf)
        return OutputSpec("dataclass", type(value), keys, specs), leaves
    if isinstance(value, Mapping):
        specs, leaves = _flatten_all(list(value.values()), leaf)
        return OutputSpec("mapping", _plain(type(value)), tuple(value.keys()), specs), leaves
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        specs, leaves = _flatten_all(list(value), leaf)
        return OutputSpec("namedtuple", type(value), tuple(value._fields), specs), leaves
    if isinstance(value, (tuple, list)):
        specs, leaves = _flatten_all(list(value), leaf)
        return OutputSpec("sequence", _plain(type(value)), (), specs), leaves
    return OutputSpec("const", value=value), []


def _plain(cls: type) -> type:
    """FX stores output dicts and lists as its immutable subclasses; they stand for the plain ones."""
    from torch.fx.immutable_collections import immutable_dict, immutable_list
    return {immutable_dict: dict, immutable_list: list}.get(cls, cls)


def _flatten_all(items: Iterable[Any], leaf) -> tuple[tuple, list]:
    specs, leaves = [], []
    for item in items:
        spec, item_leaves = flatten_value(item, leaf)
        specs.append(spec)
        leaves.extend(item_leaves)
    return tuple(specs), leaves


def rebuild_output(spec: OutputSpec, leaves: Sequence[Any]) -> Any:
    """Inverse of :func:`flatten_value`: put ``leaves`` back into the structure ``spec`` describes.

    Called by the generated code of a graph whose output was flattened (:func:`flatten_output`).

    Example:
        >>> spec, leaves = flatten_value((torch.zeros(1), [torch.ones(1)]))
        >>> rebuild_output(spec, leaves)
        (tensor([0.]), [tensor([1.])])
    """
    return _rebuild(spec, iter(leaves))


def _rebuild(spec: OutputSpec, leaves) -> Any:
    if spec.kind == "leaf":
        return next(leaves)
    if spec.kind == "const":
        return spec.value
    items = [_rebuild(child, leaves) for child in spec.children]
    if spec.kind == "dataclass":
        return spec.cls(**dict(zip(spec.keys, items)))
    if spec.kind == "mapping":
        mapping = dict(zip(spec.keys, items))
        return mapping if spec.cls is dict else spec.cls(mapping)
    if spec.kind == "namedtuple":
        return spec.cls(*items)
    return spec.cls(items)


class StructuredOutputCodeGen(fx.graph.CodeGen):
    """Code generation for a graph whose output node holds a flat tuple of tensors: the generated
    ``forward`` returns ``rebuild_output(self._libra_output_spec, (...))``."""

    def __init__(self, spec: OutputSpec):
        super().__init__()
        self.spec = spec

    def generate_output(self, output_args, *, descs=None, repr_fn=None) -> str:
        return f"return rebuild_output(self._libra_output_spec, {(repr_fn or repr)(output_args)})"

    def additional_globals(self) -> list[tuple[str, Any]]:
        return [("rebuild_output", rebuild_output)]

    def process_outputs(self, outputs: Any) -> Any:
        return rebuild_output(self.spec, outputs)


def preserve_attribute(gm: fx.GraphModule, name: str, value: Any) -> None:
    """Set ``gm.<name>`` so that it survives ``copy.deepcopy`` (which keeps only graph-referenced
    attributes plus those listed in ``gm.meta``) and pickling (which keeps ``__dict__``)."""
    setattr(gm, name, value)
    gm.meta.setdefault(_PRESERVED, {})[name] = value


def flatten_output(gm: fx.GraphModule) -> bool:
    """Make ``gm``'s output node hold only tensors when the model returns dataclasses or dict
    subclasses; the generated code rebuilds them, so ``gm``'s outputs keep their types.

    The analysis then never sees a container constructor as an (unknown) op.

    Args:
        gm: a freshly captured GraphModule; edited in place and recompiled.

    Returns:
        Whether the output was flattened (``False``: it was already tuples/lists/dicts of tensors).
    """
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    spec, leaves = flatten_value(output.args[0])
    if not _has_custom_container(spec):
        return False
    output.args = (tuple(leaves),)
    for node in reversed(list(gm.graph.nodes)):  # outer containers first: then inner ones lose their user
        if _builds_container(node) and not node.users:
            gm.graph.erase_node(node)
    gm.graph._codegen = StructuredOutputCodeGen(spec)
    preserve_attribute(gm, "_libra_output_spec", spec)
    gm.recompile()
    return True


def _has_custom_container(spec: OutputSpec) -> bool:
    if spec.kind in ("dataclass",) or (spec.kind == "mapping" and spec.cls is not dict):
        return True
    return any(_has_custom_container(child) for child in spec.children)


def structured_output(gm: fx.GraphModule, flat: Any) -> Any:
    """The output ``gm`` itself returns, given what a copy of its graph with default code
    generation returned (e.g. :func:`libra_fx.completeness.instrument`'s first value)."""
    codegen = gm.graph._codegen
    return flat if type(codegen) is fx.graph.CodeGen else codegen.process_outputs(flat)


# ----------------------------------------------------------------------------------------------
# in-place ops

#: ops whose result may share storage with their first argument: a mutation through one is seen
#: through the other, which an out-of-place rewrite cannot reproduce.
VIEW_OPS = frozenset((
    "getitem", "reshape", "flatten", "unflatten", "transpose", "permute", "expand", "squeeze",
    "unsqueeze", "narrow", "select", "unbind", "split", "chunk", "movedim", "unfold", "const",
    "identity", "cast", "view_as_real", "view_as_complex", "diagonal", "as_strided"))

#: in-place methods that have no out-of-place twin with the same meaning.
_NOT_FUNCTIONALIZABLE = frozenset(("requires_grad_", "share_memory_", "set_", "resize_", "resize_as_",
                                   "retain_grad", "record_stream"))

_OPERATOR_TWINS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                   operator.itruediv: operator.truediv, operator.ifloordiv: operator.floordiv,
                   operator.imod: operator.mod, operator.ipow: operator.pow, operator.imatmul: operator.matmul,
                   operator.iand: operator.and_, operator.ior: operator.or_, operator.ixor: operator.xor}


def _inplace_flag(node: fx.Node) -> Optional[tuple[str, int]]:
    """``("kwarg", -1)`` or ``("arg", i)`` when ``node`` calls a function with ``inplace=True``."""
    if node.kwargs.get("inplace") is True:
        return "kwarg", -1
    try:
        parameters = list(inspect.signature(node.target).parameters)
    except (TypeError, ValueError):
        return None
    if "inplace" in parameters:
        index = parameters.index("inplace")
        if index < len(node.args) and node.args[index] is True:
            return "arg", index
    return None


def _out_of_place(node: fx.Node) -> Optional[tuple[str, Any]]:
    """How to rewrite an in-place ``node`` out-of-place: ``(kind, new target)``; ``None`` if it is
    not in-place. ``kind`` is ``"target"``, ``"kwarg"``/``"arg"`` (clear ``inplace``) or ``"none"``
    (in-place but no known out-of-place twin)."""
    target = node.target
    if node.op == "call_method":
        if not target.endswith("_") or target.startswith("__"):
            return None
        twin = target[:-1]
        ok = target not in _NOT_FUNCTIONALIZABLE and hasattr(torch.Tensor, twin)
        return ("target", twin) if ok else ("none", None)
    if node.op != "call_function":
        return None
    if target in _OPERATOR_TWINS:
        return "target", _OPERATOR_TWINS[target]
    if isinstance(target, torch._ops.OpOverload):
        packet = target.overloadpacket.__name__
        if not packet.endswith("_") or packet.startswith("_"):
            return None
        twin = getattr(getattr(torch.ops.aten, packet[:-1], None), target._overloadname, None)
        return ("target", twin) if twin is not None else ("none", None)
    flag = _inplace_flag(node) if callable(target) else None
    if flag is not None:
        return flag[0], flag[1]
    name = getattr(target, "__name__", "")
    if name.endswith("_") and not name.startswith("_") and getattr(target, "__module__", None) in (None, "torch"):
        twin = getattr(torch, name[:-1], None)
        return ("target", twin) if twin is not None else ("none", None)
    return None


def _is_scalar(node: Any, cache: dict) -> bool:
    """Whether ``node`` is a Python number (shape arithmetic), whose ``+=`` mutates nothing."""
    if not isinstance(node, fx.Node):
        return True
    if node not in cache:
        cache[node] = False  # cycle guard; graphs are acyclic but keep it cheap
        if op_name(node) == "shape":
            cache[node] = True
        elif node.op == "call_function" and getattr(node.target, "__module__", None) in ("_operator", "operator"):
            inputs = node.all_input_nodes
            cache[node] = bool(inputs) and all(_is_scalar(n, cache) for n in inputs)
    return cache[node]


def _aliasing_problem(node: fx.Node, mutated: fx.Node, order: dict) -> Optional[str]:
    """Why rewriting ``node`` (which mutates ``mutated``) out-of-place would change results, if it would."""
    late = lambda value: any(order[u] > order[node] for u in value.users)
    base = mutated
    while base.op in ("call_function", "call_method") and op_name(base) in VIEW_OPS and base.args \
            and isinstance(base.args[0], fx.Node):
        base = base.args[0]
        if late(base):
            return f"mutates a view of `{base.name}`, which is used afterwards"
    for view in mutated.users:
        if view is not node and order[view] < order[node] and op_name(view) in VIEW_OPS and late(view):
            return f"`{mutated.name}` has a view (`{view.name}`) that is used after the mutation"
    return None


def _rewrite_out_of_place(node: fx.Node, how: tuple[str, Any]) -> None:
    kind, value = how
    if kind == "target":
        node.target = value
    elif kind == "kwarg":
        node.kwargs = {**node.kwargs, "inplace": False}
    else:
        node.args = node.args[:value] + (False,) + node.args[value + 1:]


def functionalize_inplace(gm: fx.GraphModule) -> list[tuple[fx.Node, str]]:
    """Rewrite in-place ops out-of-place, so that every value the analysis sees is immutable.

    ``y.add_(z)`` becomes ``y2 = y.add(z)`` and every use of ``y`` after it becomes a use of ``y2``
    (which is what eager mode sees). ``F.relu(x, inplace=True)`` gets ``inplace=False``; ``x += y``
    (``operator.iadd``) becomes ``operator.add``; ATen ``add_`` becomes ``add``.

    A mutation through a view (``x[:, 0].mul_(2)``) or of a tensor with a live view cannot be
    rewritten that way; such ops are left as they are and returned, for the transform to report.

    Args:
        gm: a captured GraphModule; edited in place (call ``recompile`` afterwards).

    Returns:
        ``(node, reason)`` for each in-place op left in place.

    Example:
        >>> gm = trace(torch.nn.ReLU(inplace=True))
        >>> [n.kwargs.get("inplace") for n in gm.graph.nodes if n.op == "call_function"]
        [False]
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    scalars: dict = {}
    refused = []
    for node in list(gm.graph.nodes):
        how = _out_of_place(node)
        if how is None:
            continue
        mutated = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
        if how[0] == "none" or not isinstance(mutated, fx.Node):
            refused.append((node, "in-place op with no known out-of-place form"))
            continue
        problem = None if _is_scalar(mutated, scalars) else _aliasing_problem(node, mutated, order)
        if problem:
            refused.append((node, f"in-place op {problem}: gradients through it are not analysed"))
            continue
        _rewrite_out_of_place(node, how)
        if not _is_scalar(mutated, scalars):
            for user in list(mutated.users):
                if order[user] > order[node]:
                    user.replace_input_with(mutated, node)
    return refused


# ----------------------------------------------------------------------------------------------
# capture


def _user_frame(tb) -> Optional[traceback.FrameSummary]:
    """The innermost frame outside torch and libra_fx: where the model's own code did what failed."""
    frames = [f for f in traceback.extract_tb(tb)  # (``<string>``: code FX generated, not the model's)
              if "/torch/" not in f.filename and "/libra_fx/tracing.py" not in f.filename
              and not f.filename.startswith("<")]
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
def _watch_autograd_functions(record: list):
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


def trace_entering_leaves(model: nn.Module, leaf_types: Sequence[type], tries: int = 8) -> tuple[LibraTracer, fx.Graph]:
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


def _symbolic(model: nn.Module, leaf_types: Sequence[type]) -> fx.GraphModule:
    with _watch_autograd_functions([]):
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
    with _watch_autograd_functions([]) as applied:
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


def normalise(gm: fx.GraphModule) -> list[tuple[fx.Node, str]]:
    """Put a captured graph in the form the analysis assumes (see the module docstring).

    Args:
        gm: a GraphModule from :func:`trace`; edited in place and recompiled.

    Returns:
        The in-place ops that could not be made out-of-place, with the reason (see
        :func:`functionalize_inplace`); also stored as ``gm.meta["libra_inplace"]``.
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
        ``gm.meta["libra_inplace"]`` lists in-place ops that had to stay in place (see :func:`normalise`).

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
        normalise(gm)
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
