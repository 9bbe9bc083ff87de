"""Small graph-editing helpers shared by the passes (no state: each takes the nodes it edits)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch.fx as fx

from libra_fx.analysis import Facts
from libra_fx.ops import const

_INHERITED_META = ("nn_module_stack", "stack_trace", "source_fn_stack")


@dataclass(frozen=True)
class Pass:
    """One rewrite rule: ``match`` finds nodes, ``rewrite`` balances one of them.

    Attributes:
        name: the name ``transform(passes=[...])`` accepts.
        group: the ablation group (``attention``, ``norm``, ``activation``, ``gate``, ``generic``).
        match: ``Facts -> iterable of Nodes`` to rewrite, computed before any of them is rewritten.
        rewrite: ``(Facts, Node) -> None | bool``; edits the graph in place around that node. The
            facts were computed before the round's first rewrite: a rewrite that finds its match
            no longer holds returns ``False`` and changes nothing (the next round re-analyses).
        doc: the formula (the pass module's docstring).
    """

    name: str
    group: str
    match: Callable[[Facts], Iterable[fx.Node]]
    rewrite: Callable[[Facts, fx.Node], Optional[bool]]
    doc: str

    @property
    def __doc__(self) -> str:  # type: ignore[override]
        return self.doc


def _inherit_meta(new: fx.Node, anchor: fx.Node, pass_name: str) -> fx.Node:
    for key in _INHERITED_META:
        if key in anchor.meta:
            new.meta[key] = anchor.meta[key]
    new.meta["libra_pass"] = pass_name
    return new


def call_after(anchor: fx.Node, target: Callable, args: tuple, kwargs: Optional[dict], pass_name: str) -> fx.Node:
    """Insert ``target(*args, **kwargs)`` right after ``anchor``, with ``anchor``'s module metadata."""
    with anchor.graph.inserting_after(anchor):
        new = anchor.graph.call_function(target, args, kwargs or {})
    return _inherit_meta(new, anchor, pass_name)


def call_before(anchor: fx.Node, target: Callable, args: tuple, kwargs: Optional[dict], pass_name: str) -> fx.Node:
    """Insert ``target(*args, **kwargs)`` right before ``anchor``, with ``anchor``'s metadata."""
    with anchor.graph.inserting_before(anchor):
        new = anchor.graph.call_function(target, args, kwargs or {})
    return _inherit_meta(new, anchor, pass_name)


def detach_input(user: fx.Node, value: fx.Node, pass_name: str, detach: Callable = const) -> fx.Node:
    """Make ``user`` read ``detach(value)`` (``const`` by default) instead of ``value``; other users
    keep ``value``."""
    detached = call_before(user, detach, (value,), None, pass_name)
    user.replace_input_with(value, detached)
    return detached


def detach_output(node: fx.Node, pass_name: str, keep: Iterable[fx.Node] = ()) -> fx.Node:
    """Route every user of ``node`` (except ``keep``) through ``const(node)``."""
    detached = call_after(node, const, (node,), None, pass_name)
    skip = set(keep) | {detached}
    node.replace_all_uses_with(detached, delete_user_cb=lambda user: user not in skip)
    return detached


def substitute(node: fx.Node, target: Callable, args: tuple, kwargs: Optional[dict], pass_name: str) -> fx.Node:
    """Replace every use of ``node`` by a new call; ``node`` stays if the new call reads it."""
    new = call_after(node, target, args, kwargs, pass_name)
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    if not node.users:
        node.graph.erase_node(node)
    return new


def relevant_nodes(facts: Facts, names: Iterable[str]) -> list[fx.Node]:
    """Relevant nodes whose canonical op name is one of ``names``."""
    wanted = set(names)
    return [n for n in facts.relevant if facts.name(n) in wanted]


def value_arg(node: fx.Node, position: int, keyword: str, default: Any = None) -> Any:
    """An argument given by position or keyword."""
    if keyword in node.kwargs:
        return node.kwargs[keyword]
    return node.args[position] if len(node.args) > position else default
