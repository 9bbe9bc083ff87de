"""Dataflow analysis over a traced graph (spec §4): which values carry gradient from the attributed
inputs to the output, and whether each such op is balanced (FullGrad-complete).

Three facts per node:

* **live** — depends on an attributed input through gradient-carrying edges (parameters, buffers,
  position tables and masks do not; neither does anything behind ``const``);
* **relevant** — live *and* the output depends on it through gradient-carrying edges: only these
  ops shape the attribution, so only these need balancing (q·kᵀ behind a detached softmax does not);
* **verdict** — for relevant ops: balanced or not, and why;
* **carries gradient** — depends on *anything* that can hold a gradient (an input, a parameter, a
  buffer) through gradient-carrying edges: attention q/k built from a learned query are not live
  but their parameters would still get gradient through the softmax.

The graph of gradient-carrying edges is a ``networkx.DiGraph``; liveness is reachability in it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import networkx as nx
import torch.fx as fx

from .opset import Kind, arg, factors, gradient_source, has_gradient_arg, op_kind, op_name, schema


@dataclass(frozen=True)
class Verdict:
    """The analysis' answer for one node."""

    balanced: bool
    reason: str = ""


@dataclass
class Facts:
    """Analysis results for one GraphModule; recompute after each rewrite pass."""

    gm: fx.GraphModule
    names: dict[fx.Node, str]
    flow: nx.DiGraph
    live: set[fx.Node]
    sink: set[fx.Node]
    carried: set[fx.Node] = field(default_factory=set)
    verdicts: dict[fx.Node, Verdict] = field(default_factory=dict)

    def name(self, node) -> str:
        return self.names.get(node, "") if isinstance(node, fx.Node) else ""

    def is_live(self, value) -> bool:
        return isinstance(value, fx.Node) and value in self.live

    def carries_gradient(self, value) -> bool:
        """Whether ``value`` depends on an input, parameter or buffer through gradient edges."""
        return isinstance(value, fx.Node) and value in self.carried

    def is_relevant(self, value) -> bool:
        return isinstance(value, fx.Node) and value in self.live and value in self.sink

    @property
    def relevant(self) -> list[fx.Node]:
        return [n for n in self.gm.graph.nodes if n in self.live and n in self.sink]

    def kind(self, node: fx.Node) -> Optional[Kind]:
        return op_kind(self.names[node])

    def knows(self, node: fx.Node) -> bool:
        """Whether these facts are current around ``node``: it, its inputs and its users were all
        in the graph when it was analysed (a rewrite since then adds nodes the facts do not know)."""
        return node in self.names and all(n in self.names for n in (*node.all_input_nodes, *node.users))

    def grad_users(self, node: fx.Node) -> list[fx.Node]:
        """Users that receive gradient from ``node`` and pass it on to the output."""
        return [u for u in self.flow.successors(node) if u in self.sink]


def _blocks_gradient(node: fx.Node, name: str, source: fx.Node) -> bool:
    kind = op_kind(name)
    if kind in (Kind.NO_GRAD, Kind.CONST):
        return True
    # swap_backward's value side, getitem's index: the schema's gradient argument is the only edge
    return has_gradient_arg(name) and source is not gradient_source(node)


def _flow_graph(gm: fx.GraphModule, names: dict[fx.Node, str]) -> nx.DiGraph:
    flow = nx.DiGraph()
    flow.add_nodes_from(gm.graph.nodes)
    for node in gm.graph.nodes:
        for source in node.all_input_nodes:
            if not _blocks_gradient(node, names[node], source):
                flow.add_edge(source, node)
    return flow


def attributed_inputs(gm: fx.GraphModule, names: Optional[Iterable[str]] = None) -> list[fx.Node]:
    """Placeholders that are attributed: the named ones, or every placeholder by default."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if names is None:
        return placeholders
    wanted = set(names)
    return [n for n in placeholders if n.target in wanted or n.name in wanted]


def _carried(gm: fx.GraphModule, flow: nx.DiGraph) -> set[fx.Node]:
    carried: set[fx.Node] = set()
    for node in gm.graph.nodes:  # graph order is a topological order
        if node.op in ("placeholder", "get_attr") or any(p in carried for p in flow.predecessors(node)):
            carried.add(node)
    return carried


def analyse(gm: fx.GraphModule, inputs: Optional[Iterable[str]] = None) -> Facts:
    """Run the dataflow analysis on ``gm``.

    Args:
        gm: a GraphModule (from :func:`libra_fx.trace` or already rewritten).
        inputs: names of the attributed placeholders; all placeholders when ``None``.

    Returns:
        :class:`Facts` with liveness, relevance and a :class:`Verdict` for every relevant node.

    Example:
        >>> import torch
        >>> gm = torch.fx.symbolic_trace(lambda x: torch.exp(x) + 1)
        >>> facts = analyse(gm); [(n.name, v.balanced) for n, v in facts.verdicts.items()]
        [('exp', False), ('add', True)]
    """
    names = {node: op_name(node, gm) for node in gm.graph.nodes}
    flow = _flow_graph(gm, names)
    live: set[fx.Node] = set()
    for source in attributed_inputs(gm, inputs):
        live |= {source} | nx.descendants(flow, source)
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    sink = {output} | nx.ancestors(flow, output)
    facts = Facts(gm, names, flow, live, sink, _carried(gm, flow))
    for node in facts.relevant:
        if node.op not in ("placeholder", "output"):
            facts.verdicts[node] = judge(facts, node)
    return facts


# ----------------------------------------------------------------------------------------------
# products


def is_product(facts: Facts, node: fx.Node) -> bool:
    """A product of two or more input-dependent tensors (mul, matmul, einsum, linear with live W)."""
    kind = facts.kind(node)
    if kind is Kind.BILINEAR:
        return len(_factor_args(node, facts)) >= 2
    if facts.name(node) in ("linear", "conv") and node.op == "call_function":
        return facts.is_live(arg(node, "input")) and facts.is_live(arg(node, "weight"))
    return False


def _factor_args(node: fx.Node, facts: Facts) -> list[fx.Node]:
    """The live multiplied factors of a product node, repeats kept (``x*x`` has two)."""
    if node.op == "call_module":
        return []
    return [a for a in factors(node) if facts.is_live(a)]


def _absorbed(facts: Facts, node: fx.Node) -> Optional[fx.Node]:
    """The product that ``node`` is an interior factor of, if its only gradient user is one."""
    users = facts.grad_users(node)
    if is_product(facts, node) and len(users) == 1 and is_product(facts, users[0]):
        return users[0]
    return None


def product_root(facts: Facts, node: fx.Node) -> fx.Node:
    """The outermost product of the product tree ``node`` belongs to."""
    while (outer := _absorbed(facts, node)) is not None:
        node = outer
    return node


def product_leaves(facts: Facts, root: fx.Node) -> list[fx.Node]:
    """The k factors of a product tree (a factor used twice counts twice: x·x has k = 2)."""
    leaves = []
    for factor in _factor_args(root, facts):
        interior = is_product(facts, factor) and _absorbed(facts, factor) is root
        leaves.extend(product_leaves(facts, factor) if interior else [factor])
    return leaves


def power_exponent(facts: Facts, node: fx.Node) -> Optional[float]:
    """k for ``x**k`` (``pow`` with a constant positive exponent, ``square``), else ``None``."""
    name = facts.name(node)
    if name == "square":
        return 2.0
    if name != "pow":
        return None
    k = arg(node, "exponent")
    return float(k) if isinstance(k, (int, float)) and not isinstance(k, bool) and k > 0 else None


def _degree(facts: Facts, node: fx.Node) -> float:
    """The degree of homogeneity of a product tree root or a power."""
    k = power_exponent(facts, node)
    return k if k is not None else float(len(product_leaves(facts, node)))


def _scaled(facts: Facts, root: fx.Node) -> bool:
    """Whether the only gradient user of ``root`` scales its gradient by 1/degree."""
    users = facts.grad_users(root)
    if len(users) != 1 or facts.name(users[0]) != "scale_grad":
        return False
    scale = arg(users[0], "scale")
    return isinstance(scale, (int, float)) and abs(scale * _degree(facts, root) - 1.0) < 1e-9


# ----------------------------------------------------------------------------------------------
# verdicts

_BALANCED = Verdict(True)


def _judge_product(facts: Facts, node: fx.Node) -> Verdict:
    root = product_root(facts, node)
    if _scaled(facts, root):
        return _BALANCED
    k = len(product_leaves(facts, root))
    return Verdict(False, f"product of {k} input-dependent factors without 1/{k} gradient scaling")


def _judge_power(facts: Facts, node: fx.Node) -> Verdict:
    k = power_exponent(facts, node)
    if k is None:
        return _judge_nonlinear(facts, node)
    if _scaled(facts, node):
        return _BALANCED
    return Verdict(False, f"power x**{k:g} of an input-dependent value without 1/{k:g} gradient scaling")


def _judge_divide(facts: Facts, node: fx.Node) -> Verdict:
    divisor = arg(node, "other")
    if facts.is_live(divisor):
        return Verdict(False, "division by an input-dependent value")
    return _BALANCED


def _judge_attention(facts: Facts, node: fx.Node) -> Verdict:
    if any(facts.carries_gradient(arg(node, a)) for a in ("query", "key", "attn_mask")):
        return Verdict(False, "attention weights carry gradient (q, k or the score mask depend on the "
                       "input or on parameters)")
    return _BALANCED


def _judge_nonlinear(facts: Facts, node: fx.Node) -> Verdict:
    name = facts.name(node)
    return Verdict(False, NONLINEAR_REASONS.get(name, f"{name} is not piecewise-linear"))


def _judge_scale(facts: Facts, node: fx.Node) -> Verdict:
    product = node.args[0]
    if is_product(facts, product) and _scaled(facts, product_root(facts, product)):
        return _BALANCED
    if power_exponent(facts, product) is not None and _scaled(facts, product):
        return _BALANCED
    return Verdict(False, "scale_grad on a value that is not a matching product")


def _judge_affine(facts: Facts, node: fx.Node) -> Verdict:
    if facts.name(node) == "batch_norm" and arg(node, "training") is True:
        return Verdict(False, "batch_norm in training mode divides by batch statistics")
    return _BALANCED


NONLINEAR_REASONS = {
    "softmax": "softmax of input-dependent scores",
    "layer_norm": "layer_norm divides by an input-dependent std",
    "group_norm": "group_norm divides by an input-dependent std",
    "rms_norm": "rms_norm divides by an input-dependent rms",
    "normalize": "normalize divides by an input-dependent norm",
    "multihead_attention": "nn.MultiheadAttention: softmax attention weights carry gradient",
}

_JUDGES = {
    Kind.BILINEAR: lambda f, n: _judge_product(f, n) if is_product(f, n) else _BALANCED,
    Kind.DIVIDE: _judge_divide, Kind.ATTENTION: _judge_attention, Kind.NONLINEAR: _judge_nonlinear,
    Kind.SCALE: _judge_scale, Kind.AFFINE: _judge_affine,
}


def judge(facts: Facts, node: fx.Node) -> Verdict:
    """Whether one relevant node is locally FullGrad-complete, and why not."""
    name = facts.name(node)
    kind = op_kind(name)
    if node.op == "get_attr":
        return _BALANCED
    if kind is None:
        what = "opaque module" if name.startswith("module:") else "unknown op"
        return Verdict(False, f"{what} {name}: the engine cannot tell whether it is balanced")
    if name in ("linear", "conv") and is_product(facts, node):
        return _judge_product(facts, node)
    if name in ("pow", "square"):
        return _judge_power(facts, node)
    judge_kind = _JUDGES.get(kind)
    return judge_kind(facts, node) if judge_kind else _BALANCED


def unbalanced(facts: Facts) -> list[fx.Node]:
    """Relevant nodes whose verdict is not balanced, in graph order."""
    return [n for n, v in facts.verdicts.items() if not v.balanced]


# ----------------------------------------------------------------------------------------------
# helpers for passes


#: how many elementwise ops deep :func:`elementwise_of` looks for the base of a gate
GATE_DEPTH = 8


def elementwise_of(facts: Facts, value: fx.Node, base: fx.Node, depth: int = GATE_DEPTH) -> bool:
    """Whether ``value`` is an elementwise function of ``base`` alone (with constants): gate(x)."""
    if value is base:
        return True
    op = schema(facts.name(value))
    if depth == 0 or op is None or not op.elementwise or not facts.is_live(value):
        return False
    live_inputs = [a for a in value.all_input_nodes if facts.is_live(a)]
    return bool(live_inputs) and all(elementwise_of(facts, a, base, depth - 1) for a in live_inputs)
