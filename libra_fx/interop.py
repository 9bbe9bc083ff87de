"""Hook points for hook-based tools (pytorch-grad-cam, Captum) on a transformed module."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch.fx as fx
import torch.nn as nn

from .analysis import analyse
from .blocks import find_blocks
from .graph_copy import copy_graph_module
from .pipeline import is_transformed, transform


def hook_points(module: nn.Module, blocks: Optional[Sequence[str]] = None,
                example_inputs: Any = None) -> tuple[fx.GraphModule, list[nn.Module]]:
    """A copy of a transformed module with an ``nn.Identity`` at each block input, for hook-based tools.

    Tracing inlines ``LayerNorm``, ``Linear``… into functional calls, so a transformed module calls
    almost no submodules and hook-based libraries (pytorch-grad-cam's ``target_layers``, Captum's
    layer methods) would never see an activation. This inserts one ``call_module`` identity per
    block input; forward values and (balanced) gradients are unchanged.

    Args:
        module: a transformed module (a plain one is transformed first).
        blocks: block module paths (default: discovered).
        example_inputs: passed to :func:`libra_fx.transform` for a plain module (export fallback).

    Returns:
        ``(graph module, [identity per block])``; ``modules[-1]`` is the last block's input.

    Example:
        >>> from pytorch_grad_cam import GradCAM
        >>> gm, points = hook_points(libra_fx.transform(vit))
        >>> cam = GradCAM(gm, target_layers=[points[-1]], reshape_transform=vit_reshape)
    """
    gm = module if is_transformed(module) else transform(module, example_inputs, verify=False)
    copy = copy_graph_module(gm, attributes=("libra_report",))
    found = find_blocks(analyse(copy), blocks)
    points = []
    for index, block in enumerate(found):
        name = f"libra_hook_{index}"
        copy.add_submodule(name, nn.Identity())
        with copy.graph.inserting_after(block.input):
            hook = copy.graph.call_module(name, (block.input,))
        block.input.replace_all_uses_with(hook, delete_user_cb=lambda user: user is not hook)
        points.append(copy.get_submodule(name))
    copy.recompile()
    return copy, points
