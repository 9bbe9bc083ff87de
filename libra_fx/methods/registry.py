"""The method registry: every attribution method is a function ``Context -> Partial``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..context import Context


@dataclass
class Partial:
    """What a method computes; :func:`libra_fx.attribute` turns it into an :class:`~libra_fx.Attribution`."""

    score: torch.Tensor
    pieces: list[torch.Tensor] = field(default_factory=list)
    input_attr: Optional[torch.Tensor] = None
    bias_attr: Optional[torch.Tensor] = None
    completeness_error: Optional[torch.Tensor] = None
    token_scores: Optional[torch.Tensor] = None  # set directly by the attention baselines
    blocks: list[str] = field(default_factory=list)


#: method name -> function(ctx) -> Partial
METHODS: dict[str, Callable[[Context], Partial]] = {}


def register(name: str):
    """Register an attribution method under ``name`` (used by :func:`libra_fx.attribute`)."""
    def decorate(fn):
        METHODS[name] = fn
        return fn
    return decorate
