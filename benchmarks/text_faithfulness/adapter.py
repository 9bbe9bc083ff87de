"""A thin adapter: a Hugging Face model as ``f(token embeddings) -> (B, C) logits`` for ``libra_fx.attribute``.

Until the text API (``libra_fx.attribute(model, input_ids=...)``) lands, the benchmark looks the
embeddings up itself and attributes them as a ``(B, T, D)`` input. ``grid_size=(1, T)`` makes
libra_fx treat the sequence as a 1×T token grid, so block and bias pieces come back per token in
``token_scores``; input×gradient-like parts come back in ``input_attr``. Swapping in the text API
means replacing :func:`token_relevance` only.
"""
from __future__ import annotations

import torch
import torch.nn as nn

import libra_fx

from .models import MODELS


class EmbedsModel(nn.Module):
    """``embeds (B, T, D) -> logits (B, C)``: the explained row of a HF model's output.

    A causal LM gives its next-token logits at the last position; a classifier its class logits.
    The model's prefix tokens (BERT's ``[CLS]``) are prepended here, so they are constants of the
    graph (bias terms), never attributed inputs. The wrapped model is not modified.

    Args:
        model: a Hugging Face model from :func:`benchmarks.text_faithfulness.models.build_model`.
        name: its key in :data:`MODELS`.

    Example:
        >>> from .models import build_model
        >>> wrapper = EmbedsModel(build_model("bert", 0), "bert")
        >>> wrapper(wrapper.embed(torch.zeros(2, 24, dtype=torch.long))).shape
        torch.Size([2, 4])
    """

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.spec = MODELS[name]
        self.register_buffer("prefix_ids", torch.tensor(self.spec.prefix, dtype=torch.long), persistent=False)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of content ids (no prefix), detached.

        Args:
            ids: ``(B, T)`` token ids.

        Returns:
            ``(B, T, D)`` embeddings.

        Example:
            >>> w.embed(torch.zeros(1, 3, dtype=torch.long)).shape  # doctest: +SKIP
            torch.Size([1, 3, 64])
        """
        return self.model.get_input_embeddings()(ids).detach()

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        if len(self.spec.prefix):
            prefix = self.model.get_input_embeddings()(self.prefix_ids)
            embeds = torch.cat([prefix.expand(embeds.shape[0], -1, -1), embeds], dim=1)
        if self.spec.kind == "causal_lm":
            return self.model(inputs_embeds=embeds, use_cache=False).logits[:, -1]
        return self.model(inputs_embeds=embeds).logits


class GridView(nn.Module):
    """``(B, D, 1, T)`` "images" of embeddings -> logits, so :func:`libra_fx.metrics.mif_lif` deletes tokens.

    Token deletion is patch deletion with 1×1 patches on a 1×T grid whose channels are the embedding;
    the baseline is the ``MASK`` token's embedding as a ``(D, 1, 1)`` tensor.

    Args:
        wrapper: the :class:`EmbedsModel` to run.

    Example:
        >>> from .models import build_model
        >>> w = EmbedsModel(build_model("bert", 0), "bert")
        >>> GridView(w)(to_grid(w.embed(torch.zeros(2, 24, dtype=torch.long)))).shape
        torch.Size([2, 4])
    """

    def __init__(self, wrapper: EmbedsModel):
        super().__init__()
        self.wrapper = wrapper

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.wrapper(grid.flatten(2).transpose(1, 2))


def to_grid(embeds: torch.Tensor) -> torch.Tensor:
    """``(B, T, D)`` -> ``(B, D, 1, T)`` (see :class:`GridView`).

    Args:
        embeds: ``(B, T, D)`` token embeddings.

    Returns:
        The same values as a ``(B, D, 1, T)`` grid.

    Example:
        >>> to_grid(torch.zeros(2, 5, 8)).shape
        torch.Size([2, 8, 1, 5])
    """
    return embeds.transpose(1, 2).unsqueeze(2)


def token_relevance(balanced: nn.Module, embeds: torch.Tensor, target: torch.Tensor, method: str,
                    libra: bool, **options) -> tuple[torch.Tensor, libra_fx.Attribution]:
    """Per-token relevance ``(B, T)`` of one libra_fx method (signed, summed over the hidden dimension).

    ``input_attr`` (input×gradient, IG, FullGrad's input part) and ``token_scores`` (FullGrad's
    per-token bias terms, FullGrad+ and CAM block pieces) are added: each method fills the parts it has.

    Args:
        balanced: ``libra_fx.transform(EmbedsModel(...))``.
        embeds: ``(B, T, D)`` content embeddings.
        target: ``(B,)`` explained class / token ids.
        method: a ``libra_fx.METHODS`` key.
        libra: balanced (``True``) or plain graph.
        **options: passed to ``libra_fx.attribute`` (e.g. ``steps``).

    Returns:
        ``(relevance (B, T), the Attribution)``.

    Example:
        >>> scores, _ = token_relevance(gm, embeds, target, "fullgrad", libra=True)  # doctest: +SKIP
    """
    result = libra_fx.attribute(balanced, embeds, target, method=method, libra=libra,
                                grid_size=(1, embeds.shape[1]), **options)
    scores = torch.zeros(embeds.shape[:2], dtype=embeds.dtype)
    if result.input_attr is not None:
        scores = scores + result.input_attr.sum(-1)
    if result.token_scores is not None:
        scores = scores + result.token_scores
    return scores.detach(), result


def rollout_relevance(wrapper: EmbedsModel, embeds: torch.Tensor) -> torch.Tensor:
    """Attention rollout ``Π_l normalise(½·mean_heads A_l + ½·I)``, read at the explained position.

    The causal LM is read at its last row, the classifier at its ``[CLS]`` row; prefix columns are
    dropped. (libra_fx's own ``rollout`` averages rows when there is no prefix token, which is not the
    row a causal LM's prediction is made at.)

    Args:
        wrapper: the :class:`EmbedsModel` (eager attention, so the weights are returned).
        embeds: ``(B, T, D)`` content embeddings.

    Returns:
        ``(B, T)`` relevance.

    Example:
        >>> from .models import build_model
        >>> w = EmbedsModel(build_model("llama", 0), "llama")
        >>> rollout_relevance(w, w.embed(torch.zeros(1, 17, dtype=torch.long))).shape
        torch.Size([1, 17])
    """
    n_prefix = len(wrapper.spec.prefix)
    with torch.no_grad():
        full = embeds
        if n_prefix:
            prefix = wrapper.model.get_input_embeddings()(wrapper.prefix_ids)
            full = torch.cat([prefix.expand(embeds.shape[0], -1, -1), embeds], dim=1)
        attentions = wrapper.model(inputs_embeds=full, output_attentions=True).attentions
        eye = torch.eye(full.shape[1])
        joint = eye.expand(full.shape[0], -1, -1)
        for attn in attentions:
            mixed = 0.5 * attn.mean(1) + 0.5 * eye
            joint = (mixed / mixed.sum(-1, keepdim=True)) @ joint
    row = 0 if n_prefix else -1
    return joint[:, row, n_prefix:]
