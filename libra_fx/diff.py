"""Readable rendering of torch.fx graphs and of what the Libra passes changed in them.

Each node becomes one line in the model's own vocabulary::

    blocks.3.attn: softmax = softmax(mul_1, dim=-1)
    blocks.3.attn: detach_3 = const(softmax)            # attention

so that a unified diff of the graph before and after rewriting reads like a code review.
Names are the fx node names, which tracing makes deterministic, so diffs are stable.

Example:
    >>> before, after = render_graph(report.traced.graph), render_graph(gm.graph)
    >>> print("\\n".join(unified(before, after)))
"""

from __future__ import annotations

import builtins
import difflib
import html
import operator
import re
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

import torch
import torch.fx

from .module_paths import owning_module

ROOT = "<root>"

#: longest argument text shown in a diff line (longer ones end in "...")
MAX_ARG_CHARS = 60

#: call_method / call_function targets whose Libra meaning is clearer than their torch name.
LIBRA_NAMES = {"detach": "const", "swap_backward": "swap_backward", "const": "const"}

#: Python operators printed as their symbol (``a + b`` reads better than ``add(a, b)``).
BINARY_SYMBOLS = {
    operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/",
    operator.floordiv: "//", operator.matmul: "@", operator.pow: "**", operator.mod: "%",
    operator.eq: "==", operator.ne: "!=", operator.lt: "<", operator.gt: ">",
    operator.le: "<=", operator.ge: ">=", operator.and_: "&", operator.or_: "|",
}

#: Module prefixes shortened in function names (``torch.nn.functional.gelu`` -> ``F.gelu``).
MODULE_ALIASES = (("torch.nn.functional.", "F."), ("torch._C._nn.", "F."), ("torch.", "torch."))


# --------------------------------------------------------------------------- nodes


def target_name(node: torch.fx.Node) -> str:
    """Short, stable name of what a node computes (no memory addresses)."""
    target = node.target
    if node.op == "call_method":
        return LIBRA_NAMES.get(target, target)
    if isinstance(target, str):
        return target
    name = getattr(target, "__name__", None) or type(target).__name__
    if name in LIBRA_NAMES:
        return LIBRA_NAMES[name]
    owner = getattr(target, "__module__", None) or ""
    if target in vars(builtins).values() or owner in ("_operator", "operator"):
        return name
    qual = f"{owner}.{name}" if owner else name
    for prefix, alias in MODULE_ALIASES:
        if qual.startswith(prefix):
            return alias + qual[len(prefix):]
    return name


def format_arg(arg: Any) -> str:
    """Render an fx argument: nodes by name, containers recursively, literals by repr."""
    if isinstance(arg, torch.fx.Node):
        return arg.name
    if isinstance(arg, (list, tuple)):
        inner = ", ".join(format_arg(a) for a in arg)
        return f"[{inner}]" if isinstance(arg, list) else f"({inner}{',' if len(arg) == 1 else ''})"
    if isinstance(arg, dict):
        return "{" + ", ".join(f"{k!r}: {format_arg(v)}" for k, v in arg.items()) + "}"
    if isinstance(arg, slice):
        parts = ["" if p is None else format_arg(p) for p in (arg.start, arg.stop, arg.step)]
        return ":".join(parts[:2] if arg.step is None else parts)
    if isinstance(arg, torch.dtype):
        return str(arg)
    if isinstance(arg, float):
        return f"{arg:.6g}"
    text = repr(arg)
    # fx embeds Proxy reprs in assert messages; keep lines short and free of addresses.
    return text if len(text) <= MAX_ARG_CHARS else text[:MAX_ARG_CHARS - 3] + "..."


def _call(name: str, args: Sequence, kwargs: dict) -> str:
    parts = [format_arg(a) for a in args] + [f"{k}={format_arg(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _render_call_function(node):
    symbol = BINARY_SYMBOLS.get(node.target)
    if symbol and len(node.args) == 2 and not node.kwargs:
        return f"{format_arg(node.args[0])} {symbol} {format_arg(node.args[1])}"
    if node.target is operator.getitem and len(node.args) == 2:
        index = node.args[1]
        inner = ", ".join(format_arg(i) for i in index) if isinstance(index, tuple) else format_arg(index)
        return f"{format_arg(node.args[0])}[{inner}]"
    if node.target is builtins.getattr and len(node.args) == 2:
        return f"{format_arg(node.args[0])}.{node.args[1]}"
    return _call(target_name(node), node.args, node.kwargs)


def _render_call_method(node):
    name = target_name(node)
    if name != node.target:  # Libra operators read as functions: const(x), not x.detach()
        return _call(name, node.args, node.kwargs)
    self_arg, rest = (node.args[0], node.args[1:]) if node.args else (None, ())
    return f"{format_arg(self_arg)}." + _call(name, rest, node.kwargs)


#: node.op -> renderer of the right-hand side
RENDERERS = {
    "placeholder": lambda n: "input" + (f"(default={format_arg(n.args[0])})" if n.args else "()"),
    "get_attr": lambda n: f"param({n.target})",
    "call_function": _render_call_function,
    "call_method": _render_call_method,
    "call_module": lambda n: _call(n.target, n.args, n.kwargs),
    "output": lambda n: _call("return", n.args, {}),
}


def render_node(node: torch.fx.Node, annotate: bool = True) -> str:
    """One line for one node.

    Args:
        node: an fx node.
        annotate: append ``# pass_name`` to nodes a Libra pass inserted.

    Returns:
        ``"blocks.3.attn: q_1 = const(getitem_3)  # attention"``-style text.

    Example:
        >>> render_node(next(iter(torch.fx.symbolic_trace(torch.nn.ReLU()).graph.nodes)))
        '<root>: input_1 = input()'
    """
    rhs = RENDERERS[node.op](node)
    module = owning_module(node) or ROOT  # a call_module node is rendered under its parent
    line = f"{module}: {rhs}" if node.op == "output" else f"{module}: {node.name} = {rhs}"
    tag = node.meta.get("libra_pass")
    return f"{line}  # {tag}" if annotate and tag else line


def render_graph(graph: torch.fx.Graph | torch.fx.GraphModule, annotate: bool = True) -> list[str]:
    """All nodes of a graph, one line each, in graph order (see ``render_node``)."""
    graph = getattr(graph, "graph", graph)
    return [render_node(n, annotate) for n in graph.nodes]


def unified(before: list[str], after: list[str], context: int = 2, name: str = "model") -> list[str]:
    """Unified diff lines (no trailing newlines) between two rendered graphs.

    Example:
        >>> unified(["a: x = input()"], ["a: x = input()", "a: y = const(x)"])[-1]
        '+a: y = const(x)'
    """
    return list(
        difflib.unified_diff(before, after, f"{name} (traced)", f"{name} (libra)", n=context, lineterm="")
    )


# --------------------------------------------------------------------------- summaries


_INDEXED = re.compile(r"^([A-Za-z_]*?)(\d+)$")


def _split_part(part: str):
    """``"12"`` -> ``("", {12})``, ``"norm1"`` -> ``("norm", {1})``; other parts stay strings."""
    match = _INDEXED.match(part)
    return (match.group(1), frozenset([int(match.group(2))])) if match else part


def compress_paths(paths: Iterable[str]) -> list[str]:
    """Fold module paths that differ only in numbered components.

    Numbers are folded both as whole components (``blocks.3``) and as suffixes (``norm1``,
    ``layer2``), innermost first.

    Args:
        paths: dotted module paths (duplicates allowed).

    Returns:
        Sorted patterns like ``"blocks.{0..11}.attn"`` or ``"layer{1..4}.{0,1}.act{1,2}"``.

    Example:
        >>> compress_paths([f"blocks.{i}.attn" for i in range(12)] + ["head"])
        ['blocks.{0..11}.attn', 'head']
        >>> compress_paths(["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2"])
        ['blocks.{0,1}.norm{1,2}']
    """
    items = {tuple(_split_part(p) for p in path.split(".")) for path in paths}
    changed = True
    while changed:
        changed = False
        width = max((len(t) for t in items), default=0)
        for pos in reversed(range(width)):
            groups: dict[tuple, set] = defaultdict(set)
            for item in items:
                if pos < len(item) and isinstance(item[pos], tuple):
                    prefix = item[pos][0]
                    groups[item[:pos] + (("#", prefix),) + item[pos + 1:]].add(item)
            for key, members in groups.items():
                if len(members) > 1:
                    merged = frozenset().union(*(m[pos][1] for m in members))
                    items -= members
                    items.add(key[:pos] + ((key[pos][1], merged),) + key[pos + 1:])
                    changed = True
    rendered = [".".join(_render_part(p) for p in item) for item in items]
    return sorted(rendered, key=_natural_key)


def _render_part(part) -> str:
    if isinstance(part, str):
        return part
    prefix, numbers = part
    nums = sorted(numbers)
    runs, start, prev = [], nums[0], nums[0]
    for n in nums[1:]:
        if n != prev + 1:
            runs.append((start, prev))
            start = n
        prev = n
    runs.append((start, prev))
    text = [str(a) if a == b else f"{a},{b}" if b == a + 1 else f"{a}..{b}" for a, b in runs]
    return prefix + ("{" + ",".join(text) + "}" if len(nums) > 1 else text[0])


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def summarize_rewrites(rewrites: Sequence[Any]) -> list[dict]:
    """Per-pass rewrite counts and compressed module lists.

    Args:
        rewrites: ``Rewrite`` records (``pass_name``, ``module_path``).

    Returns:
        ``[{"pass": "attention", "count": 12, "modules": ["blocks.{0..11}.attn"]}, ...]`` in
        first-seen order.
    """
    counts: Counter = Counter()
    modules: dict[str, list[str]] = defaultdict(list)
    for rw in rewrites:
        counts[rw.pass_name] += 1
        modules[rw.pass_name].append(rw.module_path or ROOT)
    return [{"pass": name, "count": n, "modules": compress_paths(modules[name])} for name, n in counts.items()]


# --------------------------------------------------------------------------- output formats


def to_html(before: list[str], after: list[str], title: str, summary: Sequence[dict], context: int = 3) -> str:
    """A self-contained HTML page: rewrite summary table plus a side-by-side diff.

    Example:
        >>> page = to_html(before, after, "vit_tiny_patch16_224", summarize_rewrites(report.rewrites))
    """
    table = "".join(
        f"<tr><td>{html.escape(s['pass'])}</td><td>{s['count']}</td><td>{html.escape(', '.join(s['modules']))}</td></tr>"
        for s in summary
    )
    side_by_side = difflib.HtmlDiff(wrapcolumn=90).make_table(
        before, after, "traced", "libra", context=True, numlines=context
    )
    return _HTML_PAGE.format(title=html.escape(title), table=table, diff=side_by_side)


_HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>libra-fx diff: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
table.summary {{ border-collapse: collapse; margin-bottom: 1.5em; }}
table.summary td, table.summary th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
table.diff {{ font-family: ui-monospace, monospace; font-size: 12px; border: medium; }}
.diff_header {{ background-color: #e0e0e0; }} td.diff_header {{ text-align: right; }}
.diff_next {{ background-color: #c0c0c0; }} .diff_add {{ background-color: #aaffaa; }}
.diff_chg {{ background-color: #ffff77; }} .diff_sub {{ background-color: #ffaaaa; }}
</style></head><body>
<h1>libra-fx diff: {title}</h1>
<table class="summary"><tr><th>pass</th><th>rewrites</th><th>modules</th></tr>{table}</table>
{diff}
</body></html>
"""
