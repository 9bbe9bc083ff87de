"""Attention weights read from a graph's attention ops (softmax, sdpa, ``nn.MultiheadAttention``).

The attention baselines (rollout, raw attention) are not gradient methods: they need the attention
matrices of one forward and the explained score of that same forward, which
:func:`attention_maps` returns together as an :class:`AttentionReadout`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx

from .context import Context, run_graph
from .errors import LibraError
from .opset import arg, op_name


@dataclass
class AttentionReadout:
    """What one forward tells about attention.

    Attributes:
        maps: ``(B, heads, T, T)`` self-attention maps in graph order (the last one's size only).
        score: ``(B,)`` the explained score of the same forward (NaN without a target).
    """

    maps: list[torch.Tensor]
    score: torch.Tensor


def _sdpa_weights(node: fx.Node, values: list[torch.Tensor], gm: fx.GraphModule) -> torch.Tensor:
    """softmax(q kᵀ·scale + mask) of an sdpa call, from its tapped q, k (and mask)."""
    q, k = values[0], values[1]
    mask = values[2] if len(values) > 2 else None
    scale = arg(node, "scale")
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: repeat k heads
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    logits = q @ k.transpose(-2, -1) * scale
    if arg(node, "is_causal", False) is True:
        causal = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return logits.softmax(-1)


def _sdpa_taps(node: fx.Node) -> list[fx.Node]:
    mask = arg(node, "attn_mask")
    return [arg(node, "query"), arg(node, "key")] + ([mask] if isinstance(mask, fx.Node) else [])


def _mha_taps(node: fx.Node) -> list[fx.Node]:
    return [arg(node, "query"), arg(node, "key")]


def _mha_weights(node: fx.Node, values: list[torch.Tensor], gm: fx.GraphModule) -> torch.Tensor:
    """nn.MultiheadAttention weights: the module is asked for them on the tapped query and key."""
    module = gm.get_submodule(node.target)
    mask = arg(node, "attn_mask")
    if isinstance(mask, fx.Node):
        raise LibraError("attention baselines: nn.MultiheadAttention with a graph-computed mask is not supported")
    _, weights = module(values[0], values[1], values[1], need_weights=True, average_attn_weights=False,
                        attn_mask=mask)
    return weights


#: op name -> (nodes to tap, function(node, tapped values, gm) -> (B, heads, Tq, Tk) attention)
ATTENTION_READERS: dict[str, tuple[Callable, Callable]] = {
    "softmax": (lambda node: [node], lambda node, values, gm: values[0]),
    "sdpa": (_sdpa_taps, _sdpa_weights),
    "multihead_attention": (_mha_taps, _mha_weights),
}


def attention_maps(ctx: Context) -> AttentionReadout:
    """Self-attention maps ``(B, heads, T, T)`` of every attention op, in graph order (one forward),
    and the explained score of that forward.

    Softmax outputs are read as they are; sdpa and ``nn.MultiheadAttention`` weights are recomputed
    from their tapped q and k. Non-square maps (attention pooling with a learned query) are skipped,
    and so are maps of another size than the last one.

    Raises:
        LibraError: the graph has no self-attention.
    """
    found = []
    for node in ctx.gm.graph.nodes:
        reader = ATTENTION_READERS.get(op_name(node, ctx.gm)) if node.op != "placeholder" else None
        if reader is not None:
            found.append((node, reader, reader[0](node)))
    taps = [t for _, _, nodes in found for t in nodes]
    terms = run_graph(ctx, ctx.inputs, ctx.target, taps=taps, grad=False)
    values = [v for v, _ in terms.taps]
    maps, at = [], 0
    with torch.no_grad():
        for node, (_, read), nodes in found:
            attn = read(node, values[at:at + len(nodes)], ctx.gm)
            at += len(nodes)
            if attn.dim() == 4 and attn.shape[-1] == attn.shape[-2] and attn.shape[0] == ctx.geo.batch:
                maps.append(attn)
    if not maps:
        raise LibraError("no self-attention found in the graph: attention baselines need softmax/sdpa/"
                         "nn.MultiheadAttention attention")
    tokens = maps[-1].shape[-1]
    return AttentionReadout([m for m in maps if m.shape[-1] == tokens], terms.score)
