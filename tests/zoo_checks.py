"""What the zoo tests (vision and Hugging Face) check beyond the zoo's own measurements."""
from __future__ import annotations

import warnings

import torch.nn as nn

import libra_fx


def strict_raises(model: nn.Module, inputs: tuple, **transform_kwargs) -> bool:
    """Whether ``libra_fx.transform(model, inputs, strict=True, ...)`` raises ``UnbalancedError``.

    Example:
        >>> import torch
        >>> strict_raises(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
        False
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the audit's warning is what strict=True turns into an error
        try:
            libra_fx.transform(model, inputs, strict=True, **transform_kwargs)
        except libra_fx.UnbalancedError:
            return True
    return False
