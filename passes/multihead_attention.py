"""``nn.MultiheadAttention`` (an FX leaf): ``softmax(QKᵀ/√d)·V·W_oᵀ  →  [softmax(QKᵀ/√d)]cst·V·W_oᵀ``.

The module call stays, so the forward value is the module's own (fast path included); next to it a
``balanced_multihead_attention`` node recomputes the attention from ``const(query)``,
``const(key)`` and the live ``value`` with the module's parameters (read by name), and
``swap_backward(module_output, balanced)`` takes the module output's place:
``out = [softmax(QKᵀ/√d)]cst · V · W_oᵀ + b_o``.
"""
from __future__ import annotations

import operator

import torch.fx as fx

from libra_fx.analysis import Facts
from libra_fx.functional import balanced_multihead_attention
from libra_fx.ops import swap_backward
from libra_fx.opset import arg

from .api import Pass, call_after

_PARAMS = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight",
           "bias_k", "bias_v", "out_proj.weight", "out_proj.bias")


def _first_output_users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if u.target is operator.getitem and arg(u, "index") == 0]


def applies(facts: Facts, node: fx.Node) -> bool:
    return bool(_first_output_users(node))


def _param_nodes(node: fx.Node) -> list:
    module = node.graph.owning_module.get_submodule(node.target)
    graph = node.graph
    values = []
    with graph.inserting_before(node):
        for name in _PARAMS:
            owner, _, leaf = name.rpartition(".")
            holder = module.get_submodule(owner) if owner else module
            present = getattr(holder, leaf, None) is not None
            values.append(graph.get_attr(f"{node.target}.{name}") if present else None)
    return values


def rewrite(facts: Facts, node: fx.Node) -> None:
    module = node.graph.owning_module.get_submodule(node.target)
    query, key, value = (arg(node, name) for name in ("query", "key", "value"))
    kwargs = {
        "num_heads": module.num_heads, "add_zero_attn": module.add_zero_attn,
        "batch_first": module.batch_first, "attn_mask": arg(node, "attn_mask"),
        "key_padding_mask": arg(node, "key_padding_mask"), "is_causal": arg(node, "is_causal", False),
    }
    for output in _first_output_users(node):
        balanced = call_after(output, balanced_multihead_attention,
                              (query, key, value, *_param_nodes(node)), kwargs, PASS.name)
        swapped = call_after(balanced, swap_backward, (output, balanced), None, PASS.name)
        output.replace_all_uses_with(swapped, delete_user_cb=lambda u: u is not swapped)


PASS = Pass(name="multihead_attention", group="attention", ops=("multihead_attention",), applies=applies,
            rewrite=rewrite, doc=__doc__)
