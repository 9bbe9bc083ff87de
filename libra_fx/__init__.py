"""libra_fx: LibraGrad as a compiler pass — balanced, FullGrad-complete gradients for any model.

``libra_fx.transform(model)`` traces the model with torch.fx, finds the ops whose gradients break
completeness (softmax attention, normalisation, gated activations, self-gating products, divisions
by input-dependent values), rewrites their backward with ``const``/``swap_backward`` and returns a
module with bit-identical forward values.
"""
from . import analysis, bias, functional, ops
from .analysis import analyse
from .attribution import METHODS, Attribution, attribute
from .auditing import AuditReport, audit
from .compilation import compile
from .completeness import completeness_error
from .errors import LibraError, TraceError, UnbalancedError
from .ops import const, scale_grad, swap_backward
from .pipeline import is_transformed, transform
from .runner import fullgrad_terms
from .targets import target_score
from .text import Contrast, TextAttribution, TextModel
from .tracing import trace

__all__ = [
    "transform", "compile", "trace", "audit", "AuditReport", "attribute", "Attribution", "METHODS",
    "analyse", "completeness_error", "fullgrad_terms", "target_score", "const", "swap_backward",
    "scale_grad", "is_transformed", "LibraError", "TraceError", "UnbalancedError", "ops", "functional",
    "analysis", "bias", "TextModel", "TextAttribution", "Contrast",
]
__version__ = "0.1.0"
