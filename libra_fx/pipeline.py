"""The pipeline, in one place: trace → analyse → rewrite → recompile → verify."""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from .analysis import analyse, unbalanced
from .errors import LISTED_FINDINGS, ForwardMismatchError, InputError, LibraWarning, UnbalancedError
from .graph_copy import copy_graph_module, preserve_attribute
from .module_paths import inherit_provenance, module_path, source_line
from .ops import contiguous_grad
from .opset import arg, op_name, schema, set_arg
from .outputs import flatten_value
from .report import Finding, TransformReport, finding_record, rewrite_record
from .tracing import _as_tuple, eval_clone, model_name, trace
from .validation import check_capture, check_inputs, check_passes, shapes


@contextmanager
def _timed(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def is_transformed(module: Any) -> bool:
    """Whether ``module`` is already the output of :func:`transform`."""
    return isinstance(getattr(module, "libra_report", None), TransformReport)


def _standardises_weights(node: fx.Node, gm: fx.GraphModule) -> bool:
    """``F.batch_norm(w, None, None, training=True)``: weight standardisation, not a BatchNorm layer."""
    return op_name(node, gm) == "batch_norm" and arg(node, "running_mean") is None


def eval_batch_norms(gm: fx.GraphModule) -> list[fx.Node]:
    """The inference-mode ``batch_norm`` calls of ``gm`` (running statistics, ``training=False``)."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and op_name(n, gm) == "batch_norm"
            and not _standardises_weights(n, gm) and arg(n, "training") is False]


def guard_batch_norm_gradients(gm: fx.GraphModule) -> int:
    """Put :func:`libra_fx.ops.contiguous_grad` after every eval ``batch_norm`` (a CPU kernel bug
    at batch size 1, see there); forward values are unchanged. Returns how many were guarded."""
    guarded = 0
    for node in eval_batch_norms(gm):
        if any(user.target is contiguous_grad for user in node.users):
            continue
        with gm.graph.inserting_after(node):
            guard = gm.graph.call_function(contiguous_grad, (node,))
        inherit_provenance(guard, node)
        node.replace_all_uses_with(guard, delete_user_cb=lambda user: user is not guard)
        guarded += 1
    return guarded


def as_eval_graph(gm: fx.GraphModule) -> int:
    """Set ``training=False`` on dropout and batch-norm calls: the eval graph of a train-mode model.

    The user's model keeps its mode; only the captured graph changes. Returns how many calls changed.
    """
    changed, missing = 0, object()
    for node in gm.graph.nodes:
        op = schema(op_name(node, gm)) if node.op == "call_function" else None
        if op is None or "training" not in op.args or _standardises_weights(node, gm):
            continue
        training = arg(node, "training", missing)
        if training is not missing and training is not False:
            set_arg(node, "training", False)
            changed += 1
    return changed


def align_state_dict(gm: fx.GraphModule, model: nn.Module) -> None:
    """Give ``gm`` exactly ``model``'s state-dict keys, so that state dicts load both ways.

    FX keeps only the tensors the graph uses and registers every buffer, and every tensor constant
    it lifted, as persistent; this adds the unused parameters and buffers (shared, not copied) and
    marks the others non-persistent.

    Args:
        gm: the captured module (edited in place).
        model: the module it was captured from.
    """
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        owner_path, _, leaf = name.rpartition(".")
        owner = _ensure_submodule(gm, owner_path)
        if not hasattr(owner, leaf):
            if isinstance(tensor, nn.Parameter):
                owner.register_parameter(leaf, tensor)
            else:
                owner.register_buffer(leaf, tensor)
    for path, module in model.named_modules():
        hidden = getattr(module, "_non_persistent_buffers_set", ())
        if hidden:
            owner = _ensure_submodule(gm, path)
            owner._non_persistent_buffers_set |= {b for b in hidden if b in owner._buffers}
    # constants the tracer lifted into buffers (``_tensor_constant0``, ...) are not model state
    persistent = set(model.state_dict())
    for name, _ in list(gm.named_buffers()):
        if name not in persistent:
            owner_path, _, leaf = name.rpartition(".")
            gm.get_submodule(owner_path)._non_persistent_buffers_set.add(leaf)


def _ensure_submodule(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in filter(None, path.split(".")):
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    return module


#: a later pass can enable an earlier one (tanh linearised after the gate pass saw it unbalanced)
MAX_ROUNDS = 3


def _run_round(gm: fx.GraphModule, selected: Sequence, inputs: Optional[Iterable[str]]) -> list:
    rewrites = []
    for rewrite_pass in selected:
        facts = analyse(gm, inputs)
        for node in rewrite_pass.match(facts):
            # match-then-rewrite: an earlier rewrite of this pass may have changed the graph around
            # this node since ``facts`` were computed; re-analyse then, and re-check the match
            if not facts.knows(node):
                facts = analyse(gm, inputs)
            if not rewrite_pass.still_applies(facts, node):
                continue
            rewrites.append(rewrite_record(rewrite_pass.name, facts, node))
            rewrite_pass.rewrite(facts, node)
        gm.graph.lint()
    return rewrites


def apply_passes(gm: fx.GraphModule, selected: Sequence, inputs: Optional[Iterable[str]] = None) -> list:
    """Apply the passes to ``gm`` in place, in order, until a round rewrites nothing or nothing is
    left unbalanced (at most ``MAX_ROUNDS`` rounds).

    Each pass sees a fresh analysis; each of its matches is re-checked with
    :meth:`passes.api.Pass.still_applies` right before it is rewritten, on facts recomputed when an
    earlier rewrite touched that node, its inputs or its users.

    Args:
        gm: a captured GraphModule (edited in place; not recompiled).
        selected: :class:`passes.api.Pass` objects, in order (``passes.select(...)``).
        inputs: names of the attributed placeholders; all by default.

    Returns:
        The :class:`~libra_fx.report.Rewrite` records, in the order they were made.

    Example:
        >>> import passes
        >>> gm = libra_fx.trace(model)  # doctest: +SKIP
        >>> [r.pass_name for r in apply_passes(gm, passes.select("norm"))]  # doctest: +SKIP
        ['normalization']
    """
    rewrites = []
    for _ in range(MAX_ROUNDS):
        made = _run_round(gm, selected, inputs)
        rewrites += made
        if not made or not unbalanced(analyse(gm, inputs)):
            break
    return rewrites


def _warn_training(name: str) -> None:
    warnings.warn(f"{name} is in train mode: dropout, drop-path and batch statistics would make attributions "
                  "random; the transformed graph runs in eval mode (the model itself is not changed). "
                  "Pass eval_mode=False to keep train-mode behaviour.", LibraWarning, stacklevel=3)


def _mode_dependent(model: nn.Module) -> bool:
    """Whether some train-mode submodule behaves differently in eval (dropout, drop-path, norms
    with running statistics); other train-mode models get no warning, only the eval graph."""
    stateful = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase, nn.MultiheadAttention)
    return any(m.training and (isinstance(m, stateful) or "drop" in type(m).__name__.lower())
               for m in model.modules())


def _fresh(inputs: tuple) -> tuple:
    """Copies of the tensor inputs, floating ones asking for gradient as in attribution: a model that
    mutates its input must not change the next run's, and a frozen model must not take a no-grad
    kernel (``nn.TransformerEncoder``'s fused fast path) that attribution never runs."""
    return tuple(x.detach().clone().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor) else x
                 for x in inputs)


def _same_output(expected: Any, actual: Any) -> bool:
    spec_e, leaves_e = flatten_value(expected, leaf=lambda v: isinstance(v, torch.Tensor))
    spec_a, leaves_a = flatten_value(actual, leaf=lambda v: isinstance(v, torch.Tensor))
    return spec_e == spec_a and all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(leaves_e, leaves_a))


def _verify_forward(model: nn.Module, gm: fx.GraphModule, inputs: tuple, name: str) -> None:
    # grad mode on and inputs asking for gradient, as in attribution: otherwise some modules take
    # other kernels (nn.MultiheadAttention's fast path), which would compare two computations
    with torch.enable_grad():
        try:
            expected = model(*_fresh(inputs))
        except Exception as exc:  # the inputs are wrong for the model itself: say so in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{name}: the model's own forward fails on example inputs of shape "
                             f"{shapes(inputs)}: {first}") from None
        try:
            actual = gm(*_fresh(inputs))
        except Exception as exc:
            raise ForwardMismatchError(f"{name}: the rewritten module fails on the example inputs where the "
                                       f"model does not ({type(exc).__name__}: {exc}); please report this") from exc
    if not _same_output(expected, actual):
        raise ForwardMismatchError(f"{name}: the rewritten forward differs from the original on the example inputs")


def _capture_findings(gm: fx.GraphModule, facts) -> list[Finding]:
    """Findings the analysis cannot see: in-place ops left in place on values that carry gradient
    (a mask filled in place is harmless), Functions export inlined."""
    nodes = {n.name: n for n in gm.graph.nodes}
    findings = []
    for node_name, reason in gm.meta.get("libra_inplace", []):
        node = nodes.get(node_name)
        if node is not None and any(facts.is_live(n) for n in (node, *node.all_input_nodes)):
            findings.append(Finding(node.name, op_name(node, gm), module_path(node), reason, source_line(node)))
    for function in gm.meta.get("libra_inlined_functions", []):
        findings.append(Finding(function, f"{function}.apply", "", "custom autograd.Function inlined by "
                                "torch.export: its backward is not used", None))
    return findings


def _opaque_pieces(findings: list) -> bool:
    """Pieces symbolic tracing could not enter: timm leaves kept whole (``module:TinyVitBlock``) and
    ``torch.fx.wrap``-ed functions (torchvision's ``shifted_window_attention``); custom
    ``autograd.Function``s are meant to stay opaque."""
    return any((f.op.startswith("unknown:") and not f.op.endswith(".apply")) or f.op.startswith("module:")
               for f in findings)


def _fewer_findings(symbolic: tuple, balance) -> tuple:
    """The ``torch.export`` capture enters such pieces: keep it when it leaves less unbalanced."""
    try:
        exported = balance("export")
    except Exception:  # export cannot capture it either: the symbolic result and its report stand
        return symbolic
    return exported if len(exported[3]) < len(symbolic[3]) else symbolic


def _report_unbalanced(report: TransformReport, strict: bool) -> None:
    if not report.unbalanced:
        return
    if strict:
        raise UnbalancedError(report.model_name, report.unbalanced)
    listed = "; ".join(str(f) for f in report.unbalanced[:LISTED_FINDINGS])
    more = f" (+{len(report.unbalanced) - LISTED_FINDINGS} more)" if len(report.unbalanced) > LISTED_FINDINGS else ""
    warnings.warn(f"libra_fx: {report.model_name}: {len(report.unbalanced)} gradient-relevant op(s) left "
                  f"unbalanced: {listed}{more}. See libra_fx.audit(); strict=True raises.", LibraWarning,
                  stacklevel=3)


def transform(model: nn.Module, example_inputs: Any = None, *, passes: Optional[Sequence[Any]] = None,
              strict: bool = False, compile: bool = False, eval_mode: bool = True,
              verify: bool = True, leaf_types: Iterable[type] = (), inputs: Optional[Iterable[str]] = None,
              capture: str = "auto", dynamic_shapes: Any = None, **compile_kwargs) -> fx.GraphModule:
    """Return a module with ``model``'s forward values and LibraGrad's balanced backward.

    Pipeline: trace (``torch.fx``; ``torch.export`` fallback) → analyse (dataflow, which values carry
    gradient and which ops are unbalanced) → rewrite (the passes in ``passes/``) → recompile →
    verify (forward bit-identical on ``example_inputs``; ops left unbalanced are reported).

    Args:
        model: the module to explain. It is not modified; the result shares its parameters.
        example_inputs: a tensor or tuple of tensors; enables the export fallback and the forward check.
        passes: pass or group names (``"attention"``, ``"norm"``, ``"activation"``, ``"gate"``,
            ``"generic"``) and :class:`passes.api.Pass` objects of your own, as for
            :func:`passes.select`; all built-in passes when ``None``. A list runs only what it
            names: ``[MY_PASS, *passes.REGISTRY]`` runs yours before the built-ins.
        strict: raise :class:`~libra_fx.errors.UnbalancedError` when an op stays unbalanced
            (the default warns once, listing them).
        compile: return ``torch.compile`` of the rewritten module (see :func:`libra_fx.compile`).
        eval_mode: capture a train-mode model as it runs in eval mode (dropout, drop-path and
            batch-norm statistics included; a warning says so); the model's own flags are left alone.
        verify: check forward identity on ``example_inputs`` when they are given (against the model
            in eval mode when ``eval_mode`` applied).
        leaf_types: extra module classes to keep whole when tracing.
        inputs: names of the placeholders to attribute (all by default).
        capture: ``"auto"`` (symbolic tracing; ``torch.export`` when it fails or leaves opaque
            pieces) or ``"export"`` (``torch.export`` only; needs ``example_inputs``).
        dynamic_shapes: for the export capture, as ``torch.export.export`` takes them, or
            ``"auto"`` (every dimension dynamic where the model allows it; see :func:`libra_fx.trace`).
        **compile_kwargs: passed to ``torch.compile`` when ``compile=True``.

    Returns:
        A ``torch.fx.GraphModule`` with a ``libra_report`` attribute
        (:class:`~libra_fx.report.TransformReport`). Transforming it again returns it unchanged.
        Its state-dict keys are the model's.

    Raises:
        UnknownPassError: ``passes`` names an unknown pass or group (lists the known ones).
        InputError: ``example_inputs`` do not fit the model (rank, channels, or its own forward fails);
            :class:`~libra_fx.errors.DeviceMismatchError` when they are on another device.
        TraceError: no capture worked; names the model class, op and ``file:line``.
        UnbalancedError: ``strict=True`` and some op (or an in-place op through a view, or a
            custom ``autograd.Function``) stays unbalanced.
        ForwardMismatchError: the rewritten forward differs (a bug).

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
    selected = check_passes(passes)
    example = _as_tuple(example_inputs)
    check_capture(capture, example, name)
    if example is not None:
        check_inputs(model, example, name)
    reference = model
    if eval_mode and any(m.training for m in model.modules()):
        if _mode_dependent(model):
            _warn_training(name)
        reference = eval_clone(model)  # shares the weights; the user's modules keep their flags
    def balance(capture: str):
        with _timed(timings, "trace"):
            gm = trace(reference, example, leaf_types=leaf_types, capture=capture, dynamic_shapes=dynamic_shapes)
        if eval_mode:
            as_eval_graph(gm)
        guard_batch_norm_gradients(gm)
        align_state_dict(gm, model)
        traced = copy_graph_module(gm)
        with _timed(timings, "rewrite"):
            rewrites = apply_passes(gm, selected, inputs)
        with _timed(timings, "analyse"):
            facts = analyse(gm, inputs)
            findings = [finding_record(facts, node) for node in unbalanced(facts)] + _capture_findings(gm, facts)
        return gm, traced, rewrites, findings

    gm, traced, rewrites, findings = balance(capture)
    if _opaque_pieces(findings) and example is not None and gm.meta.get("libra_capture") == "symbolic_trace":
        gm, traced, rewrites, findings = _fewer_findings((gm, traced, rewrites, findings), balance)
    with _timed(timings, "recompile"):
        gm.recompile()
    preserve_attribute(gm, "libra_report",
                       TransformReport(name, traced, rewrites, findings, [p.name for p in selected], timings))
    if verify and example is not None:
        _verify_forward(reference, gm, example, name)
    _report_unbalanced(gm.libra_report, strict)
    if compile:
        from .compilation import compile as compile_module
        return compile_module(gm, **compile_kwargs)
    return gm
