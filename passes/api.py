"""The public API for writing a rewrite pass: :class:`Pass` and the graph-editing helpers.

A pass is a rule ``applies(facts, node)`` over the relevant nodes of some ops, and a
``rewrite(facts, node)`` that balances one such node by editing the graph around it. The engine
(``libra_fx.pipeline.apply_passes``) analyses the graph, takes the pass's matches, re-validates each
one right before rewriting it (:meth:`Pass.still_applies`, on facts recomputed whenever an earlier
rewrite touched the node), rewrites it, and repeats the passes until nothing changes. A rewrite may
therefore trust that ``applies(facts, node)`` holds on the facts it is given.

The helpers take the nodes they edit and the pass name (recorded in each new node's
``meta["libra_pass"]``); they have no state. Arguments are read by name with
:func:`libra_fx.opset.arg`, which knows every op's parameter positions.

Example (a complete pass; see the README's "Writing your own pass")::

    from libra_fx.opset import arg
    from passes.api import Pass, detach_input

    def _live_exponent(facts, node):
        return facts.is_live(arg(node, "exponent"))

    def _rewrite(facts, node):
        detach_input(node, arg(node, "exponent"), "exp_base")

    EXP_BASE = Pass(name="exp_base", group="custom", ops=("pow",), applies=_live_exponent,
                    rewrite=_rewrite, doc="x ** e(x) → x ** [e(x)]cst")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch.fx as fx

from libra_fx.analysis import Facts
from libra_fx.module_paths import inherit_provenance
from libra_fx.ops import const
from libra_fx.opset import arg, balanced_twin

__all__ = ["Pass", "always", "relevant_nodes", "call_after", "call_before", "detach_input",
           "detach_output", "substitute", "substitute_twin"]


def always(facts: Facts, node: fx.Node) -> bool:
    """An ``applies`` rule that accepts every node of the pass's ops."""
    return True


@dataclass(frozen=True, kw_only=True)
class Pass:
    """One rewrite rule.

    Attributes:
        name: the name ``transform(passes=[...])`` accepts and the report lists.
        group: the ablation group (``attention``, ``norm``, ``activation``, ``gate``, ``generic``, or
            one of your own).
        rewrite: ``(Facts, Node) -> None``; balances that node by editing the graph around it
            (use the helpers of this module). Called only where ``applies`` holds.
        applies: ``(Facts, Node) -> bool``; whether the pass rewrites this (relevant) node.
        ops: canonical op names (:func:`libra_fx.opset.op_name`) the pass looks at; empty: every
            relevant node.
        doc: the formula, shown by ``libra-fx passes`` (the pass module's docstring).

    Example:
        >>> p = Pass(name="noop", group="custom", ops=("exp",), rewrite=lambda facts, node: None)
        >>> p.match(libra_fx.analyse(torch.fx.symbolic_trace(lambda x: x.exp())))  # doctest: +SKIP
        [exp]
    """

    name: str
    group: str
    rewrite: Callable[[Facts, fx.Node], None]
    applies: Callable[[Facts, fx.Node], bool] = always
    ops: tuple[str, ...] = ()
    doc: str = ""

    @property
    def __doc__(self) -> str:  # type: ignore[override]
        return self.doc

    def candidates(self, facts: Facts) -> list[fx.Node]:
        """The relevant nodes of the pass's ops, in graph order."""
        return relevant_nodes(facts, self.ops) if self.ops else facts.relevant

    def match(self, facts: Facts) -> list[fx.Node]:
        """The nodes this pass would rewrite, judged on ``facts``.

        Args:
            facts: the analysis of the graph (``libra_fx.analyse``).

        Returns:
            The candidate nodes where ``applies`` holds, in graph order.
        """
        return [node for node in self.candidates(facts) if self.applies(facts, node)]

    def still_applies(self, facts: Facts, node: fx.Node) -> bool:
        """Whether ``node`` is still a match on ``facts`` (the engine asks right before rewriting it,
        since an earlier rewrite of the same round may have changed or removed it).

        Args:
            facts: facts that know ``node`` and its neighbours (:meth:`Facts.knows`).
            node: a node :meth:`match` returned.

        Returns:
            ``True`` when ``node`` is still in the graph, relevant, one of the pass's ops and
            ``applies`` holds.
        """
        return (not getattr(node, "_erased", False) and facts.is_relevant(node)
                and (not self.ops or facts.name(node) in self.ops) and bool(self.applies(facts, node)))


def relevant_nodes(facts: Facts, names: Iterable[str]) -> list[fx.Node]:
    """Relevant nodes whose canonical op name is one of ``names``, in graph order.

    Args:
        facts: the analysis of the graph.
        names: canonical op names (``"softmax"``, ``"layer_norm"``, ...).

    Returns:
        The matching nodes.

    Example:
        >>> relevant_nodes(facts, ("softmax",))  # doctest: +SKIP
        [softmax]
    """
    wanted = set(names)
    return [n for n in facts.relevant if facts.name(n) in wanted]


def _insert_call(inserting: Callable, anchor: fx.Node, target: Callable, args: tuple, kwargs: Optional[dict],
                 pass_name: str) -> fx.Node:
    with inserting(anchor):
        new = anchor.graph.call_function(target, args, kwargs or {})
    return inherit_provenance(new, anchor, pass_name)


def call_after(anchor: fx.Node, target: Callable, args: tuple, kwargs: Optional[dict], pass_name: str) -> fx.Node:
    """Insert ``target(*args, **kwargs)`` right after ``anchor``, with ``anchor``'s module metadata.

    Args:
        anchor: the node to insert after; its ``nn_module_stack`` and ``stack_trace`` are copied.
        target: the function to call.
        args, kwargs: its arguments (Nodes or Python values).
        pass_name: recorded in the new node's ``meta["libra_pass"]``.

    Returns:
        The new node; nothing uses it yet.

    Example:
        >>> balanced = call_after(output, my_balanced_op, (x,), None, "my_pass")  # doctest: +SKIP
    """
    return _insert_call(anchor.graph.inserting_after, anchor, target, args, kwargs, pass_name)


def call_before(anchor: fx.Node, target: Callable, args: tuple, kwargs: Optional[dict], pass_name: str) -> fx.Node:
    """Insert ``target(*args, **kwargs)`` right before ``anchor``, with ``anchor``'s metadata.

    Args:
        anchor: the node to insert before.
        target, args, kwargs, pass_name: as for :func:`call_after`.

    Returns:
        The new node; nothing uses it yet.

    Example:
        >>> detached = call_before(node, const, (value,), None, "my_pass")  # doctest: +SKIP
    """
    return _insert_call(anchor.graph.inserting_before, anchor, target, args, kwargs, pass_name)


def detach_input(user: fx.Node, value: fx.Node, pass_name: str, detach: Callable = const) -> fx.Node:
    """Make ``user`` read ``detach(value)`` instead of ``value``; other users keep ``value``.

    Args:
        user: the node whose input is detached (every occurrence of ``value`` in its arguments).
        value: the input to detach.
        pass_name: recorded in the new node's metadata.
        detach: ``libra_fx.ops.const`` by default; ``block_gradient`` keeps ``requires_grad``.

    Returns:
        The new ``detach(value)`` node.

    Example:
        >>> detach_input(div_node, arg(div_node, "other"), "divisor")  # a / d  ->  a / const(d)  # doctest: +SKIP
    """
    detached = call_before(user, detach, (value,), None, pass_name)
    user.replace_input_with(value, detached)
    return detached


def detach_output(node: fx.Node, pass_name: str, keep: Iterable[fx.Node] = ()) -> fx.Node:
    """Route every user of ``node`` (except ``keep``) through ``const(node)``.

    Args:
        node: the node whose value becomes a constant for its users.
        pass_name: recorded in the new node's metadata.
        keep: users that go on reading ``node`` itself.

    Returns:
        The new ``const(node)`` node.

    Example:
        >>> detach_output(softmax_node, "softmax_attention")  # A·V  ->  const(A)·V  # doctest: +SKIP
    """
    detached = call_after(node, const, (node,), None, pass_name)
    skip = set(keep) | {detached}
    node.replace_all_uses_with(detached, delete_user_cb=lambda user: user not in skip)
    return detached


def substitute(node: fx.Node, target: Callable, args: tuple, kwargs: Optional[dict], pass_name: str) -> fx.Node:
    """Replace every use of ``node`` by a new call ``target(*args, **kwargs)``.

    ``node`` stays in the graph if the new call reads it (the usual way to keep the original op's
    value: ``substitute(node, scale_grad, (node, 0.5), None, name)``), and is erased otherwise.

    Args:
        node: the node to replace.
        target, args, kwargs: the new call.
        pass_name: recorded in the new node's metadata.

    Returns:
        The new node.

    Example:
        >>> substitute(p, scale_grad, (p, 1 / 2), None, "gated_product")  # doctest: +SKIP
    """
    new = call_after(node, target, args, kwargs, pass_name)
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    if not node.users:
        node.graph.erase_node(node)
    return new


def substitute_twin(facts: Facts, node: fx.Node, pass_name: str) -> fx.Node:
    """Replace ``node`` by a call of its op's balanced twin (:func:`libra_fx.opset.balanced_twin`),
    each of the twin's parameters read from ``node`` by name (the twin's default where not given).

    Args:
        facts: the analysis (for the op name).
        node: a node whose op has a balanced twin (``layer_norm``, ``rms_norm``, ``normalize``, ...).
        pass_name: recorded in the new node's metadata.

    Returns:
        The new node.

    Example:
        >>> substitute_twin(facts, layer_norm_node, "normalization")  # -> balanced_layer_norm(...)  # doctest: +SKIP
    """
    twin = balanced_twin(facts.name(node))
    if twin is None or twin.function is None:
        raise ValueError(f"{facts.name(node)} has no balanced twin")
    args = tuple(arg(node, name, twin.defaults.get(name)) for name in twin.args)
    return substitute(node, twin.function, args, None, pass_name)
