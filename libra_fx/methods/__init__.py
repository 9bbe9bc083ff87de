"""Attribution methods, one concept per module, registered in :data:`METHODS` on import.

* :mod:`.gradients` — ``gradient``, ``input_x_gradient``, ``integrated_gradients``;
* :mod:`.fullgrad` — ``fullgrad``, ``fullgrad+``;
* :mod:`.cams` — ``gradcam``, ``hirescam``, ``gradcam+``, ``xgradcam+``;
* :mod:`.attention` — ``raw_attention``, ``rollout`` (non-gradient baselines).
"""
from . import gradients, fullgrad, cams, attention  # registration order = METHODS order
from .registry import METHODS, Partial, register

__all__ = ["METHODS", "Partial", "register", "gradients", "fullgrad", "cams", "attention"]
