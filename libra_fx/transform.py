"""The pipeline, in one place: trace → analyse → rewrite → recompile → verify."""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

import passes as passes_pkg

from .analysis import analyse, unbalanced
from .errors import ForwardMismatchError, UnbalancedError
from .opset import arg, op_name
from .report import TransformReport, finding_record, rewrite_record
from .tracing import _as_tuple, model_name, trace

_TRAINING_ARGS = {"dropout": ("training", 2), "batch_norm": ("training", 5)}


@contextmanager
def _timed(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def is_transformed(module: Any) -> bool:
    """Whether ``module`` is already the output of :func:`transform`."""
    return isinstance(getattr(module, "libra_report", None), TransformReport)


def as_eval_graph(gm: fx.GraphModule) -> int:
    """Set ``training=False`` on dropout and batch-norm calls: the eval graph of a train-mode model.

    The user's model keeps its mode; only the captured graph changes. Returns how many calls changed.
    """
    changed = 0
    for node in gm.graph.nodes:
        spec = _TRAINING_ARGS.get(op_name(node, gm)) if node.op == "call_function" else None
        if spec is None:
            continue
        name, position = spec
        if name in node.kwargs and node.kwargs[name] is not False:
            node.kwargs = {**node.kwargs, name: False}
            changed += 1
        elif len(node.args) > position and node.args[position] is not False:
            node.args = node.args[:position] + (False,) + node.args[position + 1:]
            changed += 1
    return changed


def _copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    copy = fx.GraphModule(gm, graph, type(gm).__name__)
    copy.meta.update(gm.meta)
    return copy


def run_passes(gm: fx.GraphModule, selected: Sequence, inputs: Optional[Iterable[str]] = None) -> list:
    """Apply each pass once, in order, re-analysing the graph before each; returns the rewrites."""
    rewrites = []
    for rewrite_pass in selected:
        facts = analyse(gm, inputs)
        for node in list(rewrite_pass.match(facts)):
            rewrites.append(rewrite_record(rewrite_pass.name, facts, node))
            rewrite_pass.rewrite(facts, node)
        gm.graph.lint()
    return rewrites


def _warn_training(model: nn.Module, name: str) -> None:
    if model.training:
        warnings.warn(f"{name} is in train mode: dropout and batch statistics would make attributions "
                      "random; the transformed graph runs them in eval mode (the model itself is not "
                      "changed). Pass eval_mode=False to keep train-mode behaviour.", stacklevel=3)


def _verify_forward(model: nn.Module, gm: fx.GraphModule, inputs: tuple, name: str) -> None:
    with torch.no_grad():
        expected, actual = model(*inputs), gm(*inputs)
    flat_expected = torch.utils._pytree.tree_leaves(expected)
    flat_actual = torch.utils._pytree.tree_leaves(actual)
    same = len(flat_expected) == len(flat_actual) and all(
        (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b) for a, b in zip(flat_expected, flat_actual))
    if not same:
        raise ForwardMismatchError(f"{name}: the rewritten forward differs from the original on the example inputs")


def _report_unbalanced(report: TransformReport, strict: bool) -> None:
    if not report.unbalanced:
        return
    if strict:
        raise UnbalancedError(report.model_name, report.unbalanced)
    listed = "; ".join(str(f) for f in report.unbalanced[:8])
    more = f" (+{len(report.unbalanced) - 8} more)" if len(report.unbalanced) > 8 else ""
    warnings.warn(f"libra_fx: {report.model_name}: {len(report.unbalanced)} gradient-relevant op(s) left "
                  f"unbalanced: {listed}{more}. See libra_fx.audit(); strict=True raises.", stacklevel=3)


def transform(model: nn.Module, example_inputs: Any = None, *, passes: Optional[Sequence[str]] = None,
              strict: bool = False, compile: bool = False, eval_mode: bool = True,
              verify: bool = True, leaf_types: Iterable[type] = (), inputs: Optional[Iterable[str]] = None,
              **compile_kwargs) -> fx.GraphModule:
    """Return a module with ``model``'s forward values and LibraGrad's balanced backward.

    Pipeline: trace (``torch.fx``; ``torch.export`` fallback) → analyse (dataflow, which values carry
    gradient and which ops are unbalanced) → rewrite (the passes in ``passes/``) → recompile →
    verify (forward bit-identical on ``example_inputs``; ops left unbalanced are reported).

    Args:
        model: the module to explain. It is not modified; the result shares its parameters.
        example_inputs: a tensor or tuple of tensors; enables the export fallback and the forward check.
        passes: pass or group names (``"attention"``, ``"norm"``, ``"activation"``, ``"gate"``,
            ``"generic"``); all passes when ``None``.
        strict: raise :class:`~libra_fx.errors.UnbalancedError` when an op stays unbalanced
            (the default warns once, listing them).
        compile: return ``torch.compile`` of the rewritten module (see :func:`libra_fx.compile`).
        eval_mode: run dropout and batch-norm in eval mode in the graph even if the model is in
            train mode (with a warning); the model's own mode is left alone.
        verify: check forward identity on ``example_inputs`` when they are given.
        leaf_types: extra module classes to keep whole when tracing.
        inputs: names of the placeholders to attribute (all by default).
        **compile_kwargs: passed to ``torch.compile`` when ``compile=True``.

    Returns:
        A ``torch.fx.GraphModule`` with a ``libra_report`` attribute
        (:class:`~libra_fx.report.TransformReport`). Transforming it again returns it unchanged.

    Example:
        >>> import timm, libra_fx
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32).eval()
        >>> balanced = libra_fx.transform(vit)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.equal(balanced(x), vit(x))
        True
    """
    if is_transformed(model):
        return model
    name, timings = model_name(model), {}
    selected = passes_pkg.select(passes)
    example = _as_tuple(example_inputs)
    with _timed(timings, "trace"):
        gm = trace(model, example, leaf_types=leaf_types)
    if eval_mode:
        if as_eval_graph(gm):
            _warn_training(model, name)
    traced = _copy_graph_module(gm)
    with _timed(timings, "rewrite"):
        rewrites = run_passes(gm, selected, inputs)
    with _timed(timings, "analyse"):
        facts = analyse(gm, inputs)
        findings = [finding_record(facts, node) for node in unbalanced(facts)]
    with _timed(timings, "recompile"):
        gm.recompile()
    gm.libra_report = TransformReport(name, traced, rewrites, findings, [p.name for p in selected], timings)
    if verify and example is not None:
        _verify_forward(model if not (model.training and eval_mode) else traced, gm, example, name)
    _report_unbalanced(gm.libra_report, strict)
    if compile:
        from .compile import compile as compile_module
        return compile_module(gm, **compile_kwargs)
    return gm
