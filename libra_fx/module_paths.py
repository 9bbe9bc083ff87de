"""Where a graph node came from: the modules it was traced in and the model line that created it.

Both captures record ``node.meta["nn_module_stack"]``, outermost module first, but spell it
differently:

* symbolic tracing: ``{"blocks.0": ("blocks.0", Block), "blocks.0.attn@1": ("blocks.0.attn", Attention)}``
  (the key gets ``@n`` when a module is called more than once);
* ``torch.export``: ``{"L__self__": ("", Model), "L__self__blocks.0": ("blocks.0", Block)}`` (older
  versions wrote the path as ``L['self'].blocks.0``).

:func:`module_stack_paths` reads either as plain qualified names; everything else here builds on it.
Nodes a pass inserts take their anchor's provenance (:func:`inherit_provenance`).
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch.fx as fx

__all__ = ["PROVENANCE_KEYS", "inherit_provenance", "is_model_code", "module_path", "module_stack_paths",
           "owning_module", "source_line"]

#: the ``node.meta`` keys that say where a node came from; a node a pass inserts copies its anchor's.
PROVENANCE_KEYS = ("nn_module_stack", "stack_trace", "source_fn_stack")

#: libra_fx's own capture code: its frames in a recorded stack are the tracer's, not the model's.
CAPTURE_SOURCES = ("/libra_fx/tracing.py", "/libra_fx/tracer.py", "/libra_fx/outputs.py",
                   "/libra_fx/functionalize.py")

_EXPORT_ROOT = re.compile(r"^L\['self'\]\.?")


def _entry_path(key: Any, value: Any) -> str:
    """The qualified module name of one ``nn_module_stack`` entry (``""`` for export's root)."""
    path = value[0] if isinstance(value, tuple) and value else key
    if not isinstance(path, str):
        path = str(key)
    return _EXPORT_ROOT.sub("", path)


def module_stack_paths(node: fx.Node) -> list[str]:
    """The qualified names of the modules ``node`` was traced in, outermost first.

    Example:
        >>> import torch
        >>> gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Sequential(torch.nn.ReLU())))
        >>> module_stack_paths(next(n for n in gm.graph.nodes if n.op == "call_module"))
        ['0', '0.0']
    """
    return [_entry_path(key, value) for key, value in (node.meta.get("nn_module_stack") or {}).items()]


def module_path(node: fx.Node) -> str:
    """The qualified name of the innermost module ``node`` was traced in (``blocks.3.attn``);
    ``""`` at top level."""
    paths = module_stack_paths(node)
    return paths[-1] if paths else ""


def owning_module(node: fx.Node) -> str:
    """The module a node belongs to when a graph is read as code (``""`` at top level).

    Unlike :func:`module_path`, a ``call_module`` node belongs to its parent (its own path is its
    target), and a parameter read without a module stack (inserted by a pass) to the module that
    owns the parameter.
    """
    paths = module_stack_paths(node)
    if not paths and node.op == "get_attr" and "." in node.target:
        return node.target.rsplit(".", 1)[0]
    if node.op == "call_module" and paths and paths[-1] == node.target:
        paths = paths[:-1]
    return paths[-1] if paths else ""


def is_model_code(location: str) -> bool:
    """Whether a stack frame's file (or a recorded ``File "...", line n`` entry) is the model's code,
    not torch's or libra_fx's capture code."""
    return "/torch/" not in location and not any(source in location for source in CAPTURE_SOURCES)


def source_line(node: fx.Node) -> Optional[str]:
    """``file:line`` of the model code that created ``node``, when the tracer recorded it."""
    trace = node.meta.get("stack_trace") or ""
    lines = [line.strip() for line in trace.splitlines()
             if line.strip().startswith("File ") and is_model_code(line)]
    if not lines:
        return None
    last = lines[-1]
    try:
        filename = last.split('"')[1]
        lineno = last.split("line ")[1].split(",")[0]
    except IndexError:
        return None
    return f"{filename}:{lineno}"


def inherit_provenance(new: fx.Node, anchor: fx.Node, pass_name: Optional[str] = None) -> fx.Node:
    """Give ``new`` (inserted next to ``anchor``) ``anchor``'s module stack and source line, so that
    reports and diffs place it where ``anchor`` is; tag it ``meta["libra_pass"] = pass_name`` if given.

    Returns:
        ``new``.
    """
    for key in PROVENANCE_KEYS:
        if key in anchor.meta:
            new.meta[key] = anchor.meta[key]
    if pass_name is not None:
        new.meta["libra_pass"] = pass_name
    return new
