"""Structured model outputs: a tiny pytree of tensors, and a graph output that keeps its types.

Models return tensors nested in tuples, lists, dicts, namedtuples, dataclasses and Hugging Face
``ModelOutput``s (``OrderedDict`` subclasses with attribute access). :func:`flatten_value` splits such
a value into an :class:`OutputSpec` and its tensors, :func:`rebuild_output` puts them back.
:func:`flatten_output` makes a captured graph's output node hold only tensors (so the analysis never
sees a container constructor as an op); :class:`StructuredOutputCodeGen` makes the generated
``forward`` rebuild the structure, so the module's outputs keep their types.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx

from .graph_copy import preserve_attribute

__all__ = ["OutputSpec", "StructuredOutputCodeGen", "flatten_output", "flatten_value", "rebuild_output",
           "structured_output"]

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
    """A graph node that builds a dataclass or a dict subclass (see ``libra_fx.tracer.LibraTracer.create_arg``)."""
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
    generation returned (e.g. :func:`libra_fx.probes.instrument`'s first value)."""
    codegen = gm.graph._codegen
    return flat if type(codegen) is fx.graph.CodeGen else codegen.process_outputs(flat)

