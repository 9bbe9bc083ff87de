"""``libra_fx.audit``: what the engine rewrote, what it could not balance, and what that costs in
completeness on an example input."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from .completeness import row_completeness_error
from .pipeline import transform
from .report import Finding, Rewrite
from .targets import first_tensor
from .tracing import _as_tuple


@dataclass
class AuditReport:
    """Result of :func:`audit`.

    Attributes:
        model_name: the audited model.
        rewrites: every rewrite made (node, pass, module path, source line).
        unbalanced: gradient-relevant ops left unbalanced (node, op, module path, reason).
        completeness_before: max relative FullGrad completeness error of the plain graph (each
            output row with its own backward: exact for outputs that mix batch rows).
        completeness_after: the same for the transformed graph.
        timings: transform stage timings (seconds).
    """

    model_name: str
    rewrites: list[Rewrite]
    unbalanced: list[Finding]
    completeness_before: float
    completeness_after: float
    timings: dict[str, float]

    @property
    def balanced(self) -> bool:
        return not self.unbalanced

    def to_dict(self) -> dict:
        return {"model": self.model_name, "rewrites": [asdict(r) for r in self.rewrites],
                "unbalanced": [asdict(f) for f in self.unbalanced],
                "completeness_before": self.completeness_before,
                "completeness_after": self.completeness_after, "timings": self.timings}


def default_target(output: Any) -> torch.Tensor:
    """The predicted class's logit for (B, C) outputs; the sum of the output otherwise."""
    logits = first_tensor(output)
    if logits.dim() == 2:
        return logits.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)
    return logits.flatten(1).sum(1)


def audit(model: nn.Module, example_inputs: Any, passes: Optional[Sequence[str]] = None,
          target=default_target, **transform_kwargs) -> AuditReport:
    """Transform ``model`` and measure FullGrad completeness before and after on ``example_inputs``.

    Args:
        model: the module to audit (not modified).
        example_inputs: a tensor or tuple of tensors.
        passes: pass or group names, as for :func:`libra_fx.transform`.
        target: what to explain (class index, tensor of indices, or callable); the predicted
            class by default.
        **transform_kwargs: passed to :func:`libra_fx.transform`.

    Returns:
        An :class:`AuditReport`.

    Example:
        >>> import timm, libra_fx
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32).eval()
        >>> report = libra_fx.audit(vit, torch.randn(1, 3, 32, 32))
        >>> report.balanced, report.completeness_after < 1e-4
        (True, True)
    """
    inputs = _as_tuple(example_inputs)
    transform_kwargs.setdefault("strict", False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = transform(model, inputs, passes=passes, **transform_kwargs)
    report = gm.libra_report
    before = row_completeness_error(report.traced, inputs, target).max().item()
    after = row_completeness_error(gm, inputs, target).max().item()
    return AuditReport(report.model_name, report.rewrites, report.unbalanced, before, after, report.timings)
