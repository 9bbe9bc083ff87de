"""``libra_fx.attribute``: gradient attribution methods on a (balanced or plain) traced graph (spec §5).

Every gradient method is one registered function of a :class:`~libra_fx.context.Context`
(:mod:`libra_fx.methods`); all of them share one forward-and-backward runner
(:class:`libra_fx.runner.GraphRunner`), so FullGrad, FullGrad+
and the CAMs cost ONE forward and ONE ``torch.autograd.grad`` call whatever the number of blocks, and
never a weight gradient. Switching ``libra=True``/``False`` swaps only the graph (the balanced one, or
``gm.libra_report.traced``), so every comparison is one flag.

Maps. Each method yields *pieces*: per-location attributions ``(B, h, w)`` at some resolution (the
image's, the patch grid's, a CNN stage's). ``image_map`` is their sum resampled to the image as a
*density* (a piece of ``h×w`` cells is upsampled and divided by the cells' area in pixels), so
``image_map.sum((1, 2))`` approximates the spatial part of the attribution's total; ``token_scores``
is the same sum on the patch grid for token models. Prefix tokens (CLS, registers, distillation) are
dropped from maps; their share stays in ``bias_attr``/``score`` only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
import torch.fx as fx
import torch.nn as nn

from .analysis import analyse
from .blocks import find_blocks
from .context import Context
from .errors import LibraError
from .geometry import Geometry, resample
from .interop import hook_points
from .methods import METHODS, Partial, register
from .pipeline import is_transformed, transform
from .targets import Target
from .validation import check_method

#: the public attribution API: methods register with ``libra_fx.attribution.register`` (README) and
#: hook-based tools take ``hook_points``; the rest lives in its own module (context, geometry, ...)
__all__ = ["Attribution", "attribute", "run_method", "METHODS", "register", "hook_points"]

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass
class Attribution:
    """The result of :func:`attribute`.

    Attributes:
        input_attr: per input element attribution, shaped like the (first attributed) input;
            ``None`` for methods that do not attribute the input itself (CAMs, FullGrad+, rollout).
        token_scores: ``(B, N)`` per patch token for token models (prefix tokens dropped), else ``None``.
        image_map: ``(B, H, W)`` map at the image resolution (a density: see the module docstring).
        bias_attr: ``(B,)`` total bias×gradient for the FullGrad family, else ``None``.
        score: ``(B,)`` the explained output f (a logit, or whatever ``target`` selects).
        completeness_error: ``(B,)`` relative ``|f − Σ attributions| / |f|`` for complete methods
            (FullGrad), else ``None``.
        method: the method name.
        libra: whether the balanced graph was used.
        blocks: module paths of the blocks the method used (empty when it uses none).
    """

    input_attr: Optional[torch.Tensor]
    token_scores: Optional[torch.Tensor]
    image_map: Optional[torch.Tensor]
    bias_attr: Optional[torch.Tensor]
    score: torch.Tensor
    completeness_error: Optional[torch.Tensor]
    method: str
    libra: bool
    blocks: list[str] = field(default_factory=list)


def _geometry(model: nn.Module, inputs: tuple, options: dict) -> Geometry:
    x = next((t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
    if x is None:
        raise LibraError("attribute: no floating-point input tensor to attribute")
    image_size = tuple(x.shape[-2:]) if x.dim() == 4 else None
    grid = options.pop("grid_size", None)
    grid = (grid, grid) if isinstance(grid, int) else (tuple(grid) if grid is not None else None)
    prefix = options.pop("num_prefix_tokens", getattr(model, "num_prefix_tokens", None))
    return Geometry(x.shape[0], image_size, grid, prefix if isinstance(prefix, int) else None)


def _graph(model: nn.Module, inputs: tuple, libra: bool) -> fx.GraphModule:
    """The balanced module (transformed now unless it already is) or its plain trace."""
    gm = model if is_transformed(model) else transform(model, inputs, verify=False)
    return gm if libra else gm.libra_report.traced


def _token_scores(partial: Partial, geo: Geometry) -> Optional[torch.Tensor]:
    if partial.token_scores is not None:
        return partial.token_scores
    if geo.grid is None or not geo.tokens or not partial.pieces:
        return None
    return sum(resample(p, geo.grid) for p in partial.pieces).flatten(1)


def _image_map(partial: Partial, geo: Geometry, mode: str) -> Optional[torch.Tensor]:
    if geo.image_size is None or not partial.pieces:
        return None
    return sum(resample(p, geo.image_size, mode) for p in partial.pieces)


def run_method(gm: fx.GraphModule, inputs: tuple, target: Optional[Target], method: str, geo: Geometry,
               libra: bool, blocks: Optional[Sequence[str]] = None, compiled: bool = False,
               options: Optional[dict] = None, attributed: Optional[Sequence[str]] = None,
               methods: Optional[dict] = None) -> Attribution:
    """Run one registered method on a captured graph: the part of :func:`attribute` shared by the
    image and the text front ends (:mod:`libra_fx.text`).

    Args:
        gm: the graph to run (balanced, or the plain trace).
        inputs: its positional inputs.
        target: what to explain.
        method: a name in ``methods``.
        geo: how activations map to locations (:class:`Geometry` or a subclass).
        libra: recorded in the result.
        blocks: block module paths (default: discovered).
        compiled: run through ``torch.compile``.
        options: method options; any left unused is an error.
        attributed: names of the attributed placeholders (default: every placeholder).
        methods: the method registry (default :data:`METHODS`; text adds its own variants).

    Returns:
        :class:`Attribution`.

    Example:
        >>> gm = libra_fx.transform(vit)
        >>> run_method(gm, (x,), 0, "fullgrad", Geometry(1, (32, 32)), libra=True).score.shape
        torch.Size([1])
    """
    methods = METHODS if methods is None else methods
    check_method(method, methods)
    options = dict(options or {})
    mode = options.pop("upsample", "bilinear")
    facts = analyse(gm, attributed)
    ctx = Context(gm, facts, inputs, target, find_blocks(facts, blocks), geo, compiled, options)
    partial = methods[method](ctx)
    unused = [k for k in ctx.options if not k.startswith("_")]
    if unused:
        raise LibraError(f"attribute: method {method!r} takes no option(s) {unused}")
    return Attribution(
        input_attr=partial.input_attr,
        token_scores=_token_scores(partial, geo),
        image_map=_image_map(partial, geo, mode),
        bias_attr=partial.bias_attr,
        score=partial.score,
        completeness_error=partial.completeness_error,
        method=method,
        libra=libra,
        blocks=partial.blocks,
    )


def attribute(model: nn.Module, inputs: Optional[Inputs] = None, target: Any = None, method: str = "fullgrad+",
              libra: bool = True, blocks: Optional[Sequence[str]] = None, compiled: bool = False,
              *, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
              **options: Any) -> Attribution:
    """Attribute ``target`` to the input of ``model`` with ``method``, on the balanced or plain graph.

    Images (``inputs=``) or token ids (``input_ids=``, a Hugging Face model: see
    :func:`libra_fx.text.attribute_text` for targets, padding and the result's shapes).

    Args:
        model: an ``nn.Module`` (transformed here, nothing is cached) or the output of
            :func:`libra_fx.transform`; with ``input_ids``, a ``transformers`` model or a
            :class:`libra_fx.text.TextModel` (which keeps its capture across calls).
        inputs: the input tensor, or a tuple of positional inputs (the first floating one is the image).
        target: an int class, a ``(B,)`` tensor of classes, or a callable ``output -> (B,)`` scores;
            for text also a list of continuation tokens or a :class:`libra_fx.text.Contrast`.
        method: one of :data:`METHODS`: ``gradient``, ``input_x_gradient``, ``integrated_gradients``,
            ``fullgrad``, ``fullgrad+``, ``gradcam``, ``hirescam``, ``gradcam+``, ``xgradcam+``,
            ``rollout``, ``raw_attention``.
        libra: use the balanced graph (``True``) or the plain trace of the same model (``False``).
        blocks: module paths of the blocks (default: discovered from the model, see
            :mod:`libra_fx.blocks`).
        compiled: run the instrumented graph through ``torch.compile`` (pays off for large batches).
        input_ids: ``(B, T)`` token ids: explain a language model (the embeddings are attributed).
        attention_mask: ``(B, T)`` 1 for tokens, 0 for padding (left or right), with ``input_ids``.
        **options: ``steps``, ``baseline``, ``internal_batch_size`` (integrated gradients);
            ``num_prefix_tokens``, ``grid_size`` (override the token layout); ``upsample``
            (interpolation mode of ``image_map``, default ``"bilinear"``).

    Returns:
        :class:`Attribution` (:class:`libra_fx.text.TextAttribution` for ``input_ids``).

    Raises:
        UnknownMethodError: an unknown method (names the closest one).
        LibraError: an unknown option; no blocks for a block method; no attention for a baseline.

    Example:
        >>> import timm, torch, libra_fx
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2).eval()
        >>> result = libra_fx.attribute(vit, torch.randn(2, 3, 32, 32), target=3, method="fullgrad")
        >>> result.image_map.shape, result.token_scores.shape
        (torch.Size([2, 32, 32]), torch.Size([2, 16]))
        >>> bool(result.completeness_error.max() < 1e-4)
        True
    """
    if input_ids is not None:
        from .text import attribute_text
        return attribute_text(model, input_ids, attention_mask, target, method=method, libra=libra,
                              blocks=blocks, compiled=compiled, **options)
    check_method(method, METHODS)  # before the (slow) capture
    if inputs is None:
        raise LibraError("attribute: pass inputs= (an image batch) or input_ids= (token ids)")
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    options = dict(options)
    geo = _geometry(model, inputs, options)
    gm = _graph(model, inputs, libra)
    return run_method(gm, inputs, target, method, geo, libra, blocks, compiled, options)
