"""Instrumented copies of a graph: the same forward, also returning bias sites and tapped values.

:func:`instrument` copies a GraphModule so that it also returns the tensors where bias terms enter
and those biases laid out against them (plus any tapped node); one ``torch.autograd.grad`` call then
gives every FullGrad term — no weight gradient is computed. :func:`with_gradient_inputs` turns the
returned values into gradient inputs for ``torch.compile`` (see there).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.fx as fx

from .bias import BiasSite


def instrument(gm: fx.GraphModule, sites: Sequence[BiasSite], taps: Sequence[fx.Node] = ()) -> fx.GraphModule:
    """A copy of ``gm`` returning ``(output, site outputs, site biases, tapped values)``.

    The copy uses default code generation: ``output`` is the graph's flat leaves (see
    :func:`libra_fx.targets.explained_score`).

    Args:
        gm: the GraphModule to copy (not modified; parameters shared).
        sites: bias sites from :func:`libra_fx.bias.bias_sites`.
        taps: further nodes whose values to return (e.g. block inputs for FullGrad+).

    Returns:
        A GraphModule with the same inputs.
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    output = graph.graph_copy(gm.graph, env)
    remap = lambda value: fx.map_arg(value, lambda n: env[n])
    biases = [graph.call_function(s.combine, (env[s.node], *remap(s.args))) for s in sites]
    graph.output((output, tuple(env[s.node] for s in sites), tuple(biases), tuple(env[n] for n in taps)))
    return fx.GraphModule(gm, graph, "Instrumented" + type(gm).__name__)


def with_gradient_inputs(probe: fx.GraphModule) -> tuple[fx.GraphModule, list[fx.Node]]:
    """A copy of an instrumented graph where each returned site/tap value ``y`` is used as ``y + p``.

    ``p`` is a new (keyword, default ``None``) input fed with zeros: ``∂f/∂p = ∂f/∂y``. Under
    ``torch.compile`` the returned ``y`` is a separate output of the compiled function, detached from
    the uses inside it, so asking autograd for ``∂f/∂y`` would give nothing; gradients w.r.t. inputs
    survive compilation.

    Returns:
        ``(graph module, the probed nodes of the copy in order)``; the probe inputs are named
        ``libra_probe_<i>`` after them.
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(probe.graph, env))
    out = next(n for n in graph.nodes if n.op == "output").args[0]
    probed = list(dict.fromkeys(n for group in (out[1], out[3]) for n in group if isinstance(n, fx.Node)))
    last_placeholder = [n for n in graph.nodes if n.op == "placeholder"][-1]
    shifted_of: dict[fx.Node, fx.Node] = {}
    for index, node in enumerate(probed):
        with graph.inserting_after(last_placeholder):
            last_placeholder = graph.placeholder(f"libra_probe_{index}", default_value=None)
        with graph.inserting_after(node):
            shifted = graph.call_function(torch.add, (node, last_placeholder))
        node.replace_all_uses_with(shifted, delete_user_cb=lambda u: u is not shifted and u.op != "output")
        shifted_of[node] = shifted
    # the model's own output may itself be a probed value (the head's bias site IS the logits): it is
    # returned shifted too, or the score read from it would not depend on that value's probe input
    output_node = next(n for n in graph.nodes if n.op == "output")
    result, sites, biases, taps = output_node.args[0]
    output_node.args = ((fx.map_arg(result, lambda n: shifted_of.get(n, n)), sites, biases, taps),)
    return fx.GraphModule(probe, graph, "Probed" + type(probe).__name__), probed
