"""Block boundaries of a traced model, read from the graph itself.

FullGrad+ and the CAM methods need the *input* of each block (a transformer block, a mixer block, a
residual stage block). Blocks are found from ``node.meta["nn_module_stack"]``, which the tracer records
for every node, so the same code works on a plain trace, on a transformed module (whose module
hierarchy is no longer the model's) and on any architecture:

1. known container paths first (timm ``blocks``, open_clip ``transformer.resblocks`` …);
2. otherwise every numbered child ``<container>.<i>`` that is itself composite (holds submodules), keeping
   the innermost such containers — ``stages.0.blocks.*`` rather than ``stages.*``, ``layer1.*`` for a ResNet.

The input of a block is the live value (one that depends on the attributed input) from outside the
block that the first node traced inside it reads.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

import torch.fx as fx

from .analysis import Facts
from .errors import LibraError
from .module_paths import module_path, module_stack_paths

#: container paths tried in order before the generic rule; the first one present in the graph wins.
KNOWN_CONTAINERS: tuple[str, ...] = (
    "blocks",                         # timm ViT, DeiT, EVA, BEiT, SigLIP, FlexiViT, MLP-Mixer
    "visual.transformer.resblocks",   # open_clip CLIP (full model or ClipSimilarity wrapper)
    "transformer.resblocks",          # open_clip VisionTransformer on its own
    "visual.trunk.blocks",            # open_clip with a timm trunk
    "trunk.blocks",
    "encoder.layer",                  # HF-style encoders
    "encoder.layers",
)

_NUMBERED = re.compile(r"^(.*)\.(\d+)$")

#: how many known block names an error about an unknown block lists
LISTED_BLOCKS = 6


@dataclass(frozen=True)
class Block:
    """One block: its module path and the graph node that feeds it."""

    name: str
    input: fx.Node


def _inside(path: str, block: str) -> bool:
    return path == block or path.startswith(block + ".")


def _paths_in_order(gm: fx.GraphModule) -> list[str]:
    """Every module path some node was traced in (outer paths included), in first-seen graph order."""
    seen: dict[str, None] = {}
    for node in gm.graph.nodes:
        for path in module_stack_paths(node):
            if path:
                seen.setdefault(path, None)
    return list(seen)


def _numbered_children(paths: Sequence[str]) -> dict[str, list[str]]:
    """container path -> its numbered children (``blocks`` -> ``blocks.0``, ``blocks.1`` …)."""
    children: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        match = _NUMBERED.match(path)
        if match:
            children[match.group(1)].append(path)
    return children


def _composite(child: str, paths: Sequence[str]) -> bool:
    return any(p.startswith(child + ".") for p in paths)


def discover_block_names(gm: fx.GraphModule) -> list[str]:
    """Qualified names of the model's blocks, in execution order.

    Args:
        gm: a traced or transformed GraphModule.

    Returns:
        Module paths such as ``["blocks.0", "blocks.1"]``; empty when no block structure is found.

    Example:
        >>> import timm, libra_fx
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
        >>> discover_block_names(libra_fx.trace(vit))
        ['blocks.0', 'blocks.1']
    """
    paths = _paths_in_order(gm)
    children = _numbered_children(paths)
    for container in KNOWN_CONTAINERS:
        if children.get(container):
            return list(children[container])
    # Generic rule: numbered composite children; keep the innermost containers so that nested
    # stage/block layouts yield the blocks, not the stages.
    groups = {c: [k for k in kids if _composite(k, paths)] for c, kids in children.items()}
    groups = {c: kids for c, kids in groups.items() if kids}
    inner = [c for c in groups if not any(o != c and o.startswith(c + ".") for o in groups)]
    names = [k for c in inner for k in groups[c]]
    order = {p: i for i, p in enumerate(paths)}
    return sorted(names, key=order.__getitem__)


def block_input(facts: Facts, name: str) -> Optional[fx.Node]:
    """The live node from outside block ``name`` read by the first node traced inside it."""
    for node in facts.gm.graph.nodes:
        if not _inside(module_path(node), name):
            continue
        outside = [a for a in node.all_input_nodes
                   if facts.is_live(a) and not _inside(module_path(a), name)]
        if outside:
            return outside[0]
    return None


def find_blocks(facts: Facts, names: Optional[Sequence[str]] = None) -> list[Block]:
    """The blocks of the analysed graph with their input nodes.

    Args:
        facts: analysis of the graph to explain.
        names: module paths to use as blocks (default: :func:`discover_block_names`).

    Returns:
        One :class:`Block` per block whose input carries gradient, in the given/discovered order.

    Raises:
        LibraError: a given name has no node traced inside it.

    Example:
        >>> import timm, libra_fx
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
        >>> gm = libra_fx.transform(vit)
        >>> [b.name for b in find_blocks(libra_fx.analyse(gm))]
        ['blocks.0', 'blocks.1']
    """
    explicit = names is not None
    names = list(names) if explicit else discover_block_names(facts.gm)
    blocks = []
    for name in names:
        node = block_input(facts, name)
        if node is None and explicit:
            raise LibraError(f"block {name!r}: no gradient-carrying node was traced inside it "
                             f"(known blocks: {discover_block_names(facts.gm)[:LISTED_BLOCKS]} …)")
        if node is not None:
            blocks.append(Block(name, node))
    return blocks
