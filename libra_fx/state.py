"""Keep a captured module's state dict identical to the model's, unused entries included."""
from __future__ import annotations

import torch.fx as fx
import torch.nn as nn


def _owner(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split(".") if path else ():
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    return module


def adopt_state(gm: fx.GraphModule, model: nn.Module) -> None:
    """Register on ``gm`` every parameter and persistent buffer of ``model`` it lacks.

    FX keeps only the attributes its graph reads; users expect ``state_dict`` to load both ways.
    The tensors are shared, not copied.
    """
    present = set(gm.state_dict(keep_vars=True))
    persistent = set(model.state_dict(keep_vars=True))
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if name in present or name not in persistent:
            continue
        path, _, leaf = name.rpartition(".")
        owner = _owner(gm, path)
        if isinstance(tensor, nn.Parameter):
            owner.register_parameter(leaf, tensor)
        else:
            owner.register_buffer(leaf, tensor)
    _hide_graph_constants(gm, persistent)


def _hide_graph_constants(gm: fx.GraphModule, persistent: set) -> None:
    """Tensors FX lifted into the graph (``_tensor_constant0``) are not the model's state."""
    for name, _ in list(gm.named_buffers()):
        if name not in persistent:
            path, _, leaf = name.rpartition(".")
            gm.get_submodule(path)._non_persistent_buffers_set.add(leaf)
