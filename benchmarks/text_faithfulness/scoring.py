"""Scores of a token relevance: token-deletion MIF/LIF (AUC, AOPC), SRG and evidence-token AP.

All of it is :mod:`libra_fx.metrics`: deletion is its patch deletion on a 1×T grid of embeddings
(:class:`~benchmarks.text_faithfulness.adapter.GridView`) with the ``MASK`` embedding as baseline,
AP its average precision against the ground-truth evidence positions.
"""
from __future__ import annotations

from typing import Optional

import torch

from libra_fx.metrics import average_precision, mif_lif

from .adapter import EmbedsModel, GridView, to_grid
from .data import MASK


def mask_baseline(wrapper: EmbedsModel) -> torch.Tensor:
    """The ``MASK`` token embedding as a deletion baseline.

    Args:
        wrapper: the explained model.

    Returns:
        ``(D, 1, 1)`` tensor (broadcasts over the ``(B, D, 1, T)`` grid).

    Example:
        >>> from .models import build_model
        >>> mask_baseline(EmbedsModel(build_model("bert", 0), "bert")).shape
        torch.Size([64, 1, 1])
    """
    return wrapper.embed(torch.tensor([MASK]))[0].reshape(-1, 1, 1)


def score_relevance(wrapper: EmbedsModel, embeds: torch.Tensor, relevance: torch.Tensor, pred: torch.Tensor,
                    evidence: torch.Tensor, completeness: Optional[torch.Tensor] = None,
                    batch_size: int = 512) -> dict:
    """Faithfulness scores of one relevance map of a batch.

    Args:
        wrapper: the explained model.
        embeds: ``(B, T, D)`` content embeddings.
        relevance: ``(B, T)`` signed token relevance.
        pred: ``(B,)`` the model's prediction (deletion scores whether it survives).
        evidence: ``(B, T)`` bool ground-truth evidence positions.
        completeness: ``(B,)`` relative completeness errors, when the method has them.
        batch_size: rows per deletion forward.

    Returns:
        dict of floats: ``mif``/``lif`` (accuracy AUC over 10%..90% deleted), ``srg`` = lif − mif,
        ``aopc`` (MIF: mean drop of the predicted probability), ``ap`` (evidence AP), ``ce`` (median
        completeness error or ``None``), ``ap_abs`` (AP of ``|relevance|``: finds the evidence whatever
        its sign) and ``neg_evidence`` (share of evidence tokens with negative relevance).

    Example:
        >>> from .data import make_batch
        >>> from .models import build_model
        >>> w, batch = EmbedsModel(build_model("bert", 0), "bert").eval(), make_batch("keyword", 4, 0)
        >>> embeds = w.embed(batch.ids)
        >>> s = score_relevance(w, embeds, batch.evidence.float(), w(embeds).argmax(-1), batch.evidence)
        >>> sorted(s)
        ['aopc', 'ap', 'ap_abs', 'ce', 'lif', 'mif', 'neg_evidence', 'srg']
    """
    curves = mif_lif(GridView(wrapper).eval(), to_grid(embeds), relevance.detach(), 1, labels=pred,
                     baseline=mask_baseline(wrapper), batch_size=batch_size)
    return {"mif": curves["mif_auc"], "lif": curves["lif_auc"], "srg": curves["srg"], "aopc": curves["mif"].aopc,
            "ap": average_precision(relevance.detach(), evidence).mean,
            "ap_abs": average_precision(relevance.detach().abs(), evidence).mean,
            "neg_evidence": float((relevance.detach()[evidence] < 0).float().mean()),
            "ce": None if completeness is None else float(completeness.abs().median())}
