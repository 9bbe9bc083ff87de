"""The attribution methods the text speed benchmark compares, each one forward + one backward.

Every method explains one logit (the token predicted at the last position) with input×gradient on
the token embeddings: plain autograd, libra_fx's balanced module (eager or ``torch.compile``d), or
lxt's efficient LRP (AttnLRP, CP-LRP), which is input×gradient after lxt monkey-patches the
``transformers`` modeling module. Methods marked ``env="lxt"`` run only in lxt's environment
(``lxt_env.sh``), one method per process: lxt's patches are global and cannot be undone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from .text_models import FAMILIES, LastTokenLogits

Explain = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Prepared:
    """A method ready to run on one model and sequence length.

    Attributes:
        explain: ``explain(embeds, target) -> (relevance (L,), score ())``, one forward + backward.
        setup_s: one-off preparation (libra_fx transform, compile) excluded from the timed calls.
        module: the module explained (for the sanity checks).
        info: method-specific facts for the report (unbalanced ops left, capture ...).
    """

    explain: Explain
    setup_s: float
    module: nn.Module
    info: dict = field(default_factory=dict)


def input_x_gradient(module: nn.Module) -> Explain:
    """Input×gradient of ``module(embeds)[0, target]`` summed over the hidden dimension.

    Args:
        module: maps embeddings (1, L, D) to logits (1, V).

    Returns:
        ``explain(embeds, target) -> (relevance (L,), score)``.

    Example:
        >>> relevance, score = input_x_gradient(nn.Flatten(1))(torch.ones(1, 2, 3), 0)
        >>> relevance.tolist(), float(score)
        ([1.0, 0.0], 1.0)
    """
    def explain(embeds: torch.Tensor, target: int):
        x = embeds.detach().requires_grad_()
        score = module(x)[0, target]
        (grad,) = torch.autograd.grad(score, x)
        return (x.detach() * grad).sum(-1)[0], score.detach()
    return explain


def _plain(model: nn.Module, embeds: torch.Tensor) -> Prepared:
    module = LastTokenLogits(model)
    return Prepared(input_x_gradient(module), 0.0, module)


def _plain_compiled(model: nn.Module, embeds: torch.Tensor) -> Prepared:
    # the warm-up call compiles; dynamo turns the length dynamic at the second length it sees
    module = torch.compile(LastTokenLogits(model))
    return Prepared(input_x_gradient(module), 0.0, module)


def _captured(model: nn.Module, embeds: torch.Tensor) -> Prepared:
    """libra_fx's capture without its rewrites: separates the cost of the graph torch.export
    records (a dense causal mask, see the report) from the cost of the balancing rewrites."""
    import libra_fx
    start = time.perf_counter()
    gm = libra_fx.trace(LastTokenLogits(model), (embeds,))
    return Prepared(input_x_gradient(gm), time.perf_counter() - start, gm,
                    {"capture": gm.meta.get("libra_capture", "?")})


def _libra(model: nn.Module, embeds: torch.Tensor, compiled: bool, **compile_kwargs) -> Prepared:
    import warnings
    import libra_fx
    start = time.perf_counter()
    with warnings.catch_warnings():
        # unbalanced ops are counted in info below, not printed per length
        warnings.simplefilter("ignore")
        gm = libra_fx.transform(LastTokenLogits(model), (embeds,))
    module = libra_fx.compile(gm, **compile_kwargs) if compiled else gm
    report = gm.libra_report
    info = {"capture": gm.meta.get("libra_capture", "?"), "rewrites": len(report.rewrites),
            "unbalanced": len(report.unbalanced),
            "unbalanced_ops": sorted({f.op for f in report.unbalanced})}
    prepared = Prepared(input_x_gradient(module), 0.0, module, info)
    prepared.info["eager_gm"] = gm
    prepared.setup_s = time.perf_counter() - start
    return prepared


def _lxt(model: nn.Module, embeds: torch.Tensor, rule: str) -> Prepared:
    # lxt skips (with a warning) a class it already patched, whatever the rule: the worker serves
    # one method per process, so a process never sees two rules
    import importlib
    import warnings
    from lxt.efficient import monkey_patch
    family = next(f for f in FAMILIES.values() if type(model).__name__ == f.model_class)
    if rule == "cp_LRP" and not family.lxt_cp:
        raise NotImplementedError(f"lxt has no CP-LRP patch map for {family.name}")
    modeling = importlib.import_module(f"transformers.models.{family.lxt_module}.modeling_{family.lxt_module}")
    maps = importlib.import_module(f"lxt.efficient.models.{family.lxt_module}")
    with warnings.catch_warnings():
        # a second family re-patches the shared torch.nn Dropout/LayerNorm: lxt warns and skips
        warnings.simplefilter("ignore")
        monkey_patch(modeling, patch_map=getattr(maps, rule))
    prepared = _plain(model, embeds)
    prepared.info["rule"] = rule
    return prepared


@dataclass(frozen=True)
class Method:
    """A benchmarked method: its label, the environment it needs and how to prepare it."""

    name: str
    label: str
    env: str
    prepare: Callable[[nn.Module, torch.Tensor], Prepared]


METHODS = {m.name: m for m in (
    Method("plain", "plain IxG", "project", _plain),
    Method("plain_compiled", "plain IxG compiled", "project", _plain_compiled),
    Method("captured", "libra_fx capture, no rewrites", "project", _captured),
    Method("libra_eager", "libra_fx eager", "project", lambda m, e: _libra(m, e, False)),
    Method("libra_compiled", "libra_fx compiled", "project", lambda m, e: _libra(m, e, True)),
    # the fused SDPA backward instead of libra_fx.compile's value-only attention (which recomputes
    # the L x L weights): shows which of the two wins at each length
    Method("libra_compiled_fused", "libra_fx compiled, fast_attention=False", "project",
           lambda m, e: _libra(m, e, True, fast_attention=False)),
    Method("lxt_plain", "plain IxG (lxt env)", "lxt", _plain),
    Method("lxt_attnlrp", "lxt AttnLRP", "lxt", lambda m, e: _lxt(m, e, "attnLRP")),
    Method("lxt_cplrp", "lxt CP-LRP", "lxt", lambda m, e: _lxt(m, e, "cp_LRP")),
)}
