"""One way to copy a GraphModule: a new graph over the same parameters, with what libra_fx attaches.

A plain ``fx.GraphModule(gm, graph)`` keeps only the submodules and tensors the graph refers to.
libra_fx also hangs things on its modules that the generated code or the user needs:

* the graph's code generation (:class:`libra_fx.outputs.StructuredOutputCodeGen` rebuilds
  dataclass and ``ModelOutput`` outputs from the flat tuple the graph returns);
* ``gm.meta`` (the capture used, the in-place ops left, ...);
* attributes set with :func:`preserve_attribute` (``_libra_output_spec``, which that generated code
  reads, and ``libra_report``), which must also survive ``copy.deepcopy`` and pickling.

:func:`copy_graph_module` carries all three, so a copy runs and reports like the original.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch.fx as fx

__all__ = ["copy_graph_module", "preserve_attribute"]

#: where GraphModule.__deepcopy__ looks for attributes to carry over (torch.fx.graph_module).
PRESERVED_ATTRIBUTES = "_user_preserved_attributes"


def preserve_attribute(gm: fx.GraphModule, name: str, value: Any) -> None:
    """Set ``gm.<name>`` so that it survives ``copy.deepcopy`` (which keeps only graph-referenced
    attributes plus those listed in ``gm.meta``) and pickling (which keeps ``__dict__``)."""
    setattr(gm, name, value)
    gm.meta.setdefault(PRESERVED_ATTRIBUTES, {})[name] = value


def copy_graph_module(gm: fx.GraphModule, attributes: Iterable[str] = ()) -> fx.GraphModule:
    """A GraphModule with a copy of ``gm``'s graph, sharing its parameters and buffers.

    The copy's graph can be edited without touching ``gm``'s. It keeps ``gm``'s code generation
    (structured outputs come out with their types), its ``meta`` and its preserved attributes.

    Args:
        gm: the module to copy; not modified.
        attributes: further attribute names to carry over when ``gm`` has them (e.g.
            ``"libra_report"`` on a module that set it without :func:`preserve_attribute`); they are
            preserved on the copy.

    Returns:
        The copy, recompiled; its preserved attributes are the same objects as ``gm``'s.

    Example:
        >>> import torch
        >>> gm = fx.symbolic_trace(torch.nn.ReLU())
        >>> preserve_attribute(gm, "note", "kept")
        >>> copied = copy_graph_module(gm)
        >>> copied.note, copied.graph is gm.graph
        ('kept', False)
    """
    copied = fx.GraphModule(gm, copy.deepcopy(gm.graph), type(gm).__name__)  # the codegen too
    copied.meta.update(gm.meta)
    preserved = {**gm.meta.get(PRESERVED_ATTRIBUTES, {}),
                 **{name: getattr(gm, name) for name in attributes if hasattr(gm, name)}}
    copied.meta.pop(PRESERVED_ATTRIBUTES, None)  # the copy gets its own list, not a share of gm's
    for name, value in preserved.items():
        preserve_attribute(copied, name, value)
    return copied
