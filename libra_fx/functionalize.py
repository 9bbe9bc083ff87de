"""In-place ops made out-of-place right after capture, so that dataflow in the graph is explicit.

``y.add_(z)`` becomes ``y2 = y.add(z)`` with every later use of ``y`` reading ``y2`` (what eager mode
sees); mutations through views cannot be rewritten that way and are reported instead.
"""
from __future__ import annotations

import inspect
import operator
from typing import Any, Optional

import torch
import torch.fx as fx

from .opset import op_name, view_ops

__all__ = ["VIEW_OPS", "functionalize_inplace"]

#: ops whose result may share storage with their first argument: a mutation through one is seen
#: through the other, which an out-of-place rewrite cannot reproduce.
VIEW_OPS = view_ops()  # declared per op in opset (OpSchema.view)

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
        >>> from libra_fx.tracing import trace
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
