"""``torch.compile`` for transformed modules: ``libra_fx.compile(gm)``.

Two things happen before ``torch.compile``:

1. **Lowering** (:func:`lower`, on a copy: the eager module is left as it is). Each
   ``scaled_dot_product_attention(const(q), const(k), v, ...)`` the attention pass wrote becomes
   :func:`libra_fx.fast_ops.value_only_sdpa`: the same forward call, and a backward that computes
   dV only. The fused attention backward has no output mask, so it would compute dQ and dK and
   throw them away, also under ``torch.compile`` (it is an opaque kernel to inductor).
2. **Dynamic batch**: a forward pre-hook marks dimension 0 of every tensor input as dynamic
   (``torch._dynamo.maybe_mark_dynamic``) before dynamo sees it, so the first compile is already
   batch-size generic and a new batch size or a new target class does not recompile.

What still triggers a recompile (each costs a full dynamo + inductor compile, tens of seconds on
CPU): a batch of size 1 after a larger one or vice versa (dynamo specialises sizes 0 and 1); a
different image size (and timm models assert on it anyway); a new dtype, device or input rank;
switching between ``torch.no_grad()`` and grad mode, or between ``requires_grad`` True/False on an
input or the parameters; ``train()``/``eval()``; replacing a parameter tensor (in-place updates do
not recompile). The target is applied outside the compiled module (``out[:, target]``), so it never
enters the graph. Set ``mark_batch=False`` for dynamo's own rule (``dynamic=None``): the
first compile is static and the first batch-size change recompiles once with a symbolic batch.

Attribution speed: under ``torch.compile`` the backward graph computes a gradient for every input
that requires grad, *including the parameters*, whatever ``torch.autograd.grad`` asks for (eager
autograd prunes them). For attribution, freeze the parameters (``requires_grad_(False)``) or the
compiled backward also pays for every weight gradient.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx

from .fast_ops import value_only_sdpa
from .graph_copy import copy_graph_module
from .ops import const
from .opset import arg, bound_args, op_name

__all__ = ["compile", "lower", "mark_batch_dynamic"]


def _is_const(value: Any) -> bool:
    return isinstance(value, fx.Node) and value.op == "call_function" and value.target is const


def _value_only_attention(node: fx.Node, gm: fx.GraphModule) -> bool:
    """An SDPA node whose query and key are ``const(...)`` and whose dropout is off."""
    if node.op != "call_function" or op_name(node, gm) != "sdpa":
        return False
    dropout = arg(node, "dropout_p", 0.0)
    return _is_const(arg(node, "query")) and _is_const(arg(node, "key")) and dropout == 0.0


def lower(gm: fx.GraphModule) -> int:
    """Replace constant-weight attention by :func:`~libra_fx.fast_ops.value_only_sdpa`, in place.

    Args:
        gm: a transformed GraphModule (edited and recompiled in place).

    Returns:
        The number of attention calls replaced.

    Example:
        >>> import timm, libra_fx
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1).eval()
        >>> gm = copy_graph_module(libra_fx.transform(vit))
        >>> lower(gm)
        1
    """
    replaced = 0
    for node in list(gm.graph.nodes):
        if not _value_only_attention(node, gm):
            continue
        kwargs = bound_args(node)  # every sdpa parameter by name, defaults filled in
        with gm.graph.inserting_after(node):
            new = gm.graph.call_function(value_only_sdpa, (), kwargs)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        replaced += 1
    if replaced:
        gm.graph.lint()
        gm.recompile()
    return replaced


def mark_batch_dynamic(module: torch.nn.Module, args: tuple, kwargs: Optional[dict] = None) -> None:
    """Forward pre-hook: mark dim 0 of each tensor input with more than one row as dynamic.

    ``maybe_mark_dynamic`` (not ``mark_dynamic``) so that a graph which does specialise the batch
    (e.g. a reshape to a constant) recompiles instead of raising.

    Args:
        module: the module being called (unused).
        args: its positional inputs.
        kwargs: its keyword inputs.
    """
    for value in (*args, *(kwargs or {}).values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] > 1:
            torch._dynamo.maybe_mark_dynamic(value, 0)


def compile(gm: fx.GraphModule, *, dynamic: Optional[bool] = None, mark_batch: bool = True,
            fast_attention: bool = True, **torch_compile_kwargs) -> torch.nn.Module:
    """``torch.compile`` a transformed module, with the batch dimension dynamic.

    Args:
        gm: the output of :func:`libra_fx.transform` (any module works; lowering needs a GraphModule).
        dynamic: passed to ``torch.compile`` (``None``: dynamo's automatic dynamic shapes).
        mark_batch: mark dim 0 of tensor inputs dynamic before each call, so batch-size changes
            never recompile (see the module docstring for what does).
        fast_attention: replace constant-weight attention by its value-only form (:func:`lower`)
            in a copy of ``gm``; the eager ``gm`` is not changed.
        **torch_compile_kwargs: ``backend``, ``mode``, ``fullgraph``, ``options`` ... for ``torch.compile``.

    Returns:
        A ``torch._dynamo.OptimizedModule``; ``.libra_report`` and the other attributes of ``gm``
        are reachable through it, ``._orig_mod`` is the (lowered) GraphModule.

    Example:
        >>> import timm, libra_fx
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1).eval()
        >>> fast = libra_fx.compile(libra_fx.transform(vit))
        >>> x = torch.randn(4, 3, 32, 32, requires_grad=True)
        >>> torch.autograd.grad(fast(x)[:, 0].sum(), x)[0].shape  # doctest: +SKIP
        torch.Size([4, 3, 32, 32])
    """
    module = gm
    if fast_attention and isinstance(gm, fx.GraphModule):
        module = copy_graph_module(gm, attributes=("libra_report",))
        lower(module)
    compiled = torch.compile(module, dynamic=dynamic, **torch_compile_kwargs)
    if mark_batch and dynamic is not False:
        # a hook on the OptimizedModule runs outside the compiled frame, before dynamo reads the inputs
        compiled.register_forward_pre_hook(mark_batch_dynamic, with_kwargs=False)
    return compiled
