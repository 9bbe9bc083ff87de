"""What the engine knows about ops: one canonical name per op, whatever its spelling, and one
:class:`OpSchema` per canonical name.

A node's op may be a torch function (``F.gelu``), a Tensor method (``x.softmax``), a Python operator
(``a @ b``), an ATen overload (fallback captures) or a leaf module. :func:`op_name` maps all of them to
one name; :func:`schema` says everything else the engine knows about that name: its :class:`Kind`
(how it behaves for the balance analysis, spec §1, §4), its parameter names (:func:`arg`,
:func:`bound_args`, :func:`set_arg` read and write arguments by name, whether given by position or
keyword), which arguments are the factors of a product (:func:`factors`), the argument the gradient
flows through for ops that take their value from another one, whether it is a view, its bias rule
(``libra_fx.bias``) and its balanced twin (the ``libra_fx.functional`` op a pass substitutes).

Built-in torch ops are declared below; the Libra ops of :mod:`libra_fx.ops` and
:mod:`libra_fx.functional` declare themselves next to their definitions with
:func:`register_function`, so adding a balanced op touches one file.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import operator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

class Kind(Enum):
    """How an op transforms FullGrad-completeness of its inputs."""

    NO_GRAD = "no_grad"            # shapes, comparisons, index math: no Jacobian at all
    STRUCTURAL = "structural"      # linear, no offset: reshape, transpose, sum, getitem, ...
    AFFINE = "affine"              # linear in live args + constant offset: add, linear, conv, BN
    PIECEWISE = "piecewise"        # piecewise linear: relu, max-pool, clamp
    BILINEAR = "bilinear"          # product of its tensor args: mul, matmul, einsum
    DIVIDE = "divide"              # a / b: affine in a, unbalanced in b
    NONLINEAR = "nonlinear"        # not locally linear: exp, softmax, gelu, norms
    ATTENTION = "attention"        # sdpa: balanced iff q and k carry no gradient
    CONST = "const"                # libra const: value only
    SWAP = "swap"                  # libra swap_backward: Jacobian of arg 1
    SCALE = "scale"                # libra scale_grad on a product
    BALANCED = "balanced"          # libra balanced_* ops


def _names(mapping: dict[str, tuple]) -> dict[Any, str]:
    return {target: name for name, targets in mapping.items() for target in targets}


_FUNCTIONS = _names({
    "add": (operator.add, torch.add, operator.iadd), "sub": (operator.sub, torch.sub, operator.isub),
    "rsub": (torch.rsub,), "neg": (operator.neg, torch.neg), "mul": (operator.mul, torch.mul, operator.imul),
    "div": (operator.truediv, torch.div, torch.true_divide, operator.itruediv),
    "matmul": (operator.matmul, torch.matmul, torch.bmm, torch.mm), "einsum": (torch.einsum,),
    "baddbmm": (torch.baddbmm,), "addcmul": (torch.addcmul,), "linear": (F.linear, torch._C._nn.linear),
    "conv": (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d,
             F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d),
    "batch_norm": (F.batch_norm, torch.batch_norm), "layer_norm": (F.layer_norm, torch.layer_norm),
    "group_norm": (F.group_norm, torch.group_norm), "rms_norm": (F.rms_norm,),
    "normalize": (F.normalize,), "softmax": (F.softmax, torch.softmax),
    "log_softmax": (F.log_softmax, torch.log_softmax),
    "sdpa": (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention),
    "gelu": (F.gelu, torch._C._nn.gelu), "silu": (F.silu,), "hardswish": (F.hardswish,),
    "mish": (F.mish,), "relu": (F.relu, torch.relu, torch.relu_, F.relu_), "relu6": (F.relu6,), "leaky_relu": (F.leaky_relu,),
    "hardtanh": (F.hardtanh,), "elu": (F.elu,), "selu": (F.selu,), "softplus": (F.softplus,),
    "hardsigmoid": (F.hardsigmoid,), "sigmoid": (torch.sigmoid, F.sigmoid), "tanh": (torch.tanh, F.tanh),
    "exp": (torch.exp,), "log": (torch.log,), "sqrt": (torch.sqrt,), "rsqrt": (torch.rsqrt,),
    "pow": (torch.pow, operator.pow), "erf": (torch.erf,), "sin": (torch.sin,), "cos": (torch.cos,),
    "reciprocal": (torch.reciprocal,), "norm": (torch.norm, torch.linalg.vector_norm),
    "var": (torch.var,), "std": (torch.std,), "abs": (torch.abs, operator.abs),
    "clamp": (torch.clamp, torch.clip), "where": (torch.where,), "masked_fill": (torch.masked_fill,),
    "cat": (torch.cat, torch.concat), "stack": (torch.stack,), "getitem": (operator.getitem,),
    "flatten": (torch.flatten,), "reshape": (torch.reshape,), "transpose": (torch.transpose,),
    "permute": (torch.permute,), "unbind": (torch.unbind,), "split": (torch.split, torch.tensor_split), "chunk": (torch.chunk,),
    "squeeze": (torch.squeeze,), "unsqueeze": (torch.unsqueeze,), "roll": (torch.roll,), "flip": (torch.flip,),
    "mean": (torch.mean,), "sum": (torch.sum,), "amax": (torch.amax,), "max": (torch.max,),
    "dropout": (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.dropout),
    "pad": (F.pad,), "avg_pool": (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                                 F.adaptive_avg_pool2d, F.adaptive_avg_pool3d),
    "max_pool": (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                 F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.max_pool1d, torch.max_pool2d,
                 torch.max_pool3d, torch._C._nn.max_pool2d_with_indices if hasattr(torch._C._nn, "max_pool2d_with_indices") else F.max_pool2d),
    "interpolate": (F.interpolate,), "index_select": (torch.index_select,), "gather": (torch.gather,),
    "repeat_interleave": (torch.repeat_interleave,), "movedim": (torch.movedim,),
    "narrow": (torch.narrow,), "select": (torch.select,), "tile": (torch.tile,),
    "shape": (getattr, len, torch._assert, operator.eq, operator.ne, operator.lt, operator.le,
              operator.gt, operator.ge, operator.floordiv, operator.mod, torch.arange, torch.zeros,
              torch.ones, torch.full, torch.ones_like, torch.zeros_like, torch.full_like,
              torch.empty, torch.tensor, torch.argmax, torch.argmin, torch.meshgrid, torch.triu,
              torch.tril, int, float, torch.is_floating_point),
    "square": (torch.square,),
    # libra_fx.ops and libra_fx.functional add their own (register_function)
})

#: Tensor method name -> canonical name; methods not listed keep their own name.
_METHODS = {
    "__add__": "add", "__radd__": "add", "add_": "add", "__sub__": "sub", "__rsub__": "rsub",
    "sub_": "sub", "__mul__": "mul", "__rmul__": "mul", "mul_": "mul", "__truediv__": "div",
    "div_": "div", "__matmul__": "matmul", "bmm": "matmul", "mm": "matmul", "view": "reshape",
    "view_as": "reshape", "reshape_as": "reshape", "expand_as": "expand", "contiguous": "identity",
    "clone": "identity", "to": "cast", "float": "cast", "half": "cast", "bfloat16": "cast",
    "double": "cast", "type": "cast", "type_as": "cast", "size": "shape", "dim": "shape",
    "numel": "shape", "clamp_min": "clamp", "clamp_max": "clamp", "clip": "clamp", "relu_": "relu",
    "sigmoid_": "sigmoid", "masked_fill_": "masked_fill", "new_zeros": "shape", "new_ones": "shape",
    "new_full": "shape", "argmax": "shape", "argmin": "shape", "eq": "shape", "ne": "shape",
    "gt": "shape", "lt": "shape", "detach": "const", "t": "transpose", "swapaxes": "transpose",
    "moveaxis": "movedim", "repeat": "tile", "unfold": "unfold", "__getitem__": "getitem",
    "softmax": "softmax", "exp_": "exp", "sqrt_": "sqrt", "rsqrt_": "rsqrt", "pow_": "pow",
    "addcmul_": "addcmul", "norm": "norm", "tensor_split": "split", "square": "square", "pow": "pow", "__pow__": "pow",
}

#: Library helpers that model code calls as opaque functions (timm's autowrapped functions,
#: torchvision's ``torch.fx.wrap``-ed ones), keyed by (top-level package, function name). Only the
#: ones whose maths is one of the canonical ops: pure re-layouts of a tensor are ``reshape``;
#: ``maybe_add_mask(scores, mask)`` adds a constant mask; torchvision's ``stochastic_depth`` is the
#: identity in eval mode (and a per-sample dropout in training, like ``dropout``). Wrapped
#: functions that hide attention (torchvision's ``shifted_window_attention``) stay unknown, so the
#: audit reports them.
_LIBRARY_FUNCTIONS = {
    **{("timm", n): "reshape" for n in (
        "window_reverse", "window_reverse_nchw", "grid_reverse", "grid_reverse_nchw", "deblockify",
        "reshape_pre_pool", "reshape_post_pool")},
    ("timm", "maybe_add_mask"): "add",
    ("torchvision", "stochastic_depth"): "stochastic_depth",
    ("torchvision", "_patch_merging_pad"): "reshape",
}

#: ``getattr(tensor, name)`` nodes whose value is a tensor computed from the tensor (others, such
#: as ``shape`` and ``dtype``, are metadata)
_TENSOR_ATTRIBUTES = {"T": "transpose", "mT": "transpose", "H": "transpose", "mH": "transpose",
                      "real": "identity", "data": "const"}

#: ATen packet names (fallback captures) that differ from the canonical name.
_ATEN = {
    # tensor factories: their values do not depend on the input, whatever tensor gives their shape
    **{factory: "shape" for factory in ("new_zeros", "new_ones", "new_full", "new_empty", "zeros_like",
                                         "ones_like", "full_like", "empty_like", "zeros", "ones",
                                         "full", "empty", "arange", "scalar_tensor")},
    "_softmax": "softmax", "scaled_dot_product_attention": "sdpa", "bmm": "matmul", "mm": "matmul",
    "native_layer_norm": "layer_norm", "_log_softmax": "log_softmax", "view": "reshape",
    "_unsafe_view": "reshape", "t": "transpose", "clone": "identity", "_to_copy": "cast",
    "convolution": "conv", "conv2d": "conv", "conv1d": "conv", "conv3d": "conv", "alias": "identity",
    "sym_size": "shape", "lift_fresh_copy": "identity", "detach": "const", "addmm": "linear_addmm",
    "expand": "expand", "slice": "getitem", "native_dropout": "dropout", "mean": "mean",
    "linalg_vector_norm": "norm", "hardswish": "hardswish", "silu": "silu", "reshape_as": "reshape",
    "split_with_sizes": "split", "unsafe_split": "split", "unsafe_chunk": "chunk", "view_as": "reshape",
    "expand_as": "expand", "avg_pool2d": "avg_pool", "avg_pool1d": "avg_pool", "avg_pool3d": "avg_pool",
    "adaptive_avg_pool2d": "avg_pool", "adaptive_avg_pool1d": "avg_pool", "_adaptive_avg_pool2d": "avg_pool",
    "max_pool2d_with_indices": "max_pool", "max_pool2d": "max_pool", "adaptive_max_pool2d": "max_pool",
    # dtype and device casts (Hugging Face RMSNorm: ``x.to(float32)``, ``w * y.to(input_dtype)``)
    "to": "cast", "type_as": "cast", "_assert_tensor_metadata": "shape",
    # comparisons and mask logic: booleans carry no gradient
    **{op: "shape" for op in ("le", "ge", "lt", "gt", "eq", "ne", "__and__", "__or__", "bitwise_and",
                              "bitwise_or", "logical_and", "logical_or", "logical_not")},
    "index": "getitem", "embedding": "index_select", "tensor_split": "split",
    # grouped matmul of mixture-of-experts layers (transformers' CPU fallback is a torch.library op)
    "_grouped_mm": "matmul", "grouped_mm": "matmul", "grouped_mm_fallback": "matmul",
}

_MODULES: dict[type, str] = {
    nn.Linear: "linear", nn.Conv1d: "conv", nn.Conv2d: "conv", nn.Conv3d: "conv",
    nn.MultiheadAttention: "multihead_attention", nn.Identity: "identity", nn.Dropout: "dropout",
    nn.BatchNorm1d: "batch_norm", nn.BatchNorm2d: "batch_norm", nn.ReLU: "relu",
}

_KINDS: dict[Kind, tuple[str, ...]] = {
    Kind.NO_GRAD: ("shape",),
    Kind.STRUCTURAL: (
        "getitem", "reshape", "flatten", "unflatten", "transpose", "permute", "unbind", "split",
        "chunk", "squeeze", "unsqueeze", "roll", "flip", "mean", "sum", "dropout", "identity",
        "cast", "expand", "stack", "neg", "avg_pool", "interpolate", "index_select", "gather",
        "repeat_interleave", "movedim", "narrow", "select", "tile", "unfold", "pixel_shuffle",
        "masked_fill", "contiguous", "stochastic_depth"),
    Kind.AFFINE: ("add", "sub", "rsub", "linear", "conv", "batch_norm", "cat", "pad"),
    Kind.PIECEWISE: ("relu", "relu6", "leaky_relu", "hardtanh", "max_pool", "amax", "max", "abs", "clamp",
                     "where"),
    Kind.BILINEAR: ("mul", "matmul", "einsum", "baddbmm", "linear_addmm", "addcmul"),
    Kind.DIVIDE: ("div",),
    Kind.NONLINEAR: (
        "softmax", "log_softmax", "gelu", "silu", "hardswish", "mish", "elu", "selu", "softplus",
        "hardsigmoid", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "pow", "erf", "sin", "cos",
        "reciprocal", "norm", "var", "std", "layer_norm", "group_norm", "rms_norm", "normalize",
        "multihead_attention", "square"),
    Kind.ATTENTION: ("sdpa",),
}

#: Elementwise ops of one tensor (used to recognise gate(x) in x·gate(x)).
_ELEMENTWISE = (
    "gelu", "silu", "hardswish", "mish", "elu", "selu", "softplus", "hardsigmoid", "sigmoid", "tanh",
    "exp", "log", "sqrt", "rsqrt", "pow", "square", "erf", "sin", "cos", "reciprocal", "relu", "relu6",
    "leaky_relu", "hardtanh", "abs", "clamp", "add", "sub", "rsub", "mul", "div", "neg", "cast",
    "identity", "dropout")

#: ops whose result may share storage with their first argument (``libra_fx.tracing``'s in-place
#: checks: a mutation through one is seen through the other)
_VIEWS = (
    "getitem", "reshape", "flatten", "unflatten", "transpose", "permute", "expand", "squeeze",
    "unsqueeze", "narrow", "select", "unbind", "split", "chunk", "movedim", "unfold", "const",
    "identity", "cast", "view_as_real", "view_as_complex", "diagonal", "as_strided")

#: canonical op -> its arguments, fields as in :class:`OpSchema` (parameter names in the order the
#: functional / method form takes them)
_DETAILS: dict[str, dict] = {
    "sdpa": dict(args=("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"),
                 defaults={"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                           "enable_gqa": False}),
    "multihead_attention": dict(args=("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                                      "average_attn_weights", "is_causal"),
                                defaults={"is_causal": False}),
    "layer_norm": dict(args=("input", "normalized_shape", "weight", "bias", "eps"), bias_rule="bias"),
    "rms_norm": dict(args=("input", "normalized_shape", "weight", "eps")),
    "group_norm": dict(args=("input", "num_groups", "weight", "bias", "eps"), bias_rule="channel_bias"),
    "batch_norm": dict(args=("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
                             "eps"), bias_rule="batch_norm"),
    "dropout": dict(args=("input", "p", "training", "inplace")),
    "normalize": dict(args=("input", "p", "dim", "eps")),
    "linear": dict(args=("input", "weight", "bias"), factors=("input", "weight"), bias_rule="bias"),
    "conv": dict(args=("input", "weight", "bias"), factors=("input", "weight"), bias_rule="channel_bias"),
    "gelu": dict(args=("input", "approximate"), defaults={"approximate": "none"}),
    **{n: dict(args=("input", "inplace")) for n in ("silu", "hardswish", "mish")},
    "softmax": dict(args=("input", "dim")),
    "clamp": dict(args=("input", "min", "max"), bias_rule="clamp"),
    "hardtanh": dict(args=("input", "min_val", "max_val"), bias_rule="clamp"),
    "relu6": dict(args=("input", "inplace"), bias_rule="clamp"),
    "cat": dict(args=("tensors", "dim"), bias_rule="cat"),
    "add": dict(args=("input", "other", "alpha"), bias_rule="add"),
    "sub": dict(args=("input", "other", "alpha"), bias_rule="sub"),
    "div": dict(args=("input", "other")),
    "pow": dict(args=("input", "exponent")),
    "getitem": dict(args=("input", "index"), gradient_arg="input"),
    "mul": dict(args=("input", "other"), factors=("input", "other")),
    "matmul": dict(args=("input", "other"), factors=("input", "other")),
    "einsum": dict(args=("equation", "operands"), factors=("operands",)),
    # fused "constant + product" ops: the first operand is added as is (beta = 1 by default)
    "addcmul": dict(args=("input", "tensor1", "tensor2", "value"), factors=("tensor1", "tensor2"),
                    bias_rule="added_input"),
    "baddbmm": dict(args=("input", "batch1", "batch2", "beta", "alpha"), factors=("batch1", "batch2"),
                    bias_rule="added_input"),
    "linear_addmm": dict(args=("input", "mat1", "mat2", "beta", "alpha"), factors=("mat1", "mat2"),
                         bias_rule="added_input"),
}

#: keyword spellings of one parameter: any of them names the others (``self`` in ATen schemas and
#: Tensor methods, ``x`` in libra_fx.functional, ``train`` in ``torch.dropout``, ``mat2`` in ``bmm``)
_SYNONYMS = (("input", "self", "x", "a"), ("tensors", "seq"), ("query", "q"), ("key", "k"), ("value", "v"),
             ("training", "train"), ("other", "mat2"))
_SPELLINGS = {name: group for group in _SYNONYMS for name in group}


@dataclass(frozen=True)
class OpSchema:
    """Everything the engine knows about one canonical op.

    Attributes:
        name: the canonical name (:func:`op_name`).
        kind: how the op transforms FullGrad-completeness (:class:`Kind`).
        args: parameter names in the order the functional form takes them (ATen overloads are read
            with their own schema instead).
        defaults: defaults of parameters the engine reads with :func:`bound_args`.
        factors: the parameters multiplied together, for products (the rest is an additive term).
        gradient_arg: for ops whose gradient flows through one argument only (the others give the
            value or an index): that parameter.
        view: the result may share storage with the first argument.
        elementwise: an elementwise op (used to recognise ``gate(x)`` in ``x·gate(x)``).
        bias_rule: the name of its rule in ``libra_fx.bias.BIAS_RULES``, if it adds constants.
        balanced_twin: the canonical name of the balanced op that replaces it (``balanced_layer_norm``).
        function: the callable, for ops defined by libra_fx (``None`` for torch's).
    """

    name: str
    kind: Kind
    args: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    factors: tuple[str, ...] = ()
    gradient_arg: Optional[str] = None
    view: bool = False
    elementwise: bool = False
    bias_rule: Optional[str] = None
    balanced_twin: Optional[str] = None
    function: Optional[Callable] = None


_SCHEMAS: dict[str, OpSchema] = {}


def register_op(name: str, kind: Optional[Kind] = None, *, targets: tuple = (), methods: tuple = (),
                **fields: Any) -> OpSchema:
    """Declare an op, or add to an op already declared.

    Args:
        name: the canonical name.
        kind: its :class:`Kind`; may be omitted when ``name`` is already declared.
        targets: callables that are this op (graph targets ``op_name`` maps to ``name``).
        methods: Tensor method names that are this op.
        **fields: the other :class:`OpSchema` fields (``args``, ``factors``, ``bias_rule``, ...);
            fields not given keep their current value.

    Returns:
        The op's schema.

    Example:
        >>> register_op("my_gate", Kind.NONLINEAR, args=("input",)).kind
        <Kind.NONLINEAR: 'nonlinear'>
    """
    current = _SCHEMAS.get(name)
    if current is None:
        if kind is None:
            raise ValueError(f"register_op: {name!r} is new, so it needs a kind")
        current = OpSchema(name, kind)
    updated = dataclasses.replace(current, **({"kind": kind} if kind is not None else {}), **fields)
    _SCHEMAS[name] = updated
    _FUNCTIONS.update({target: name for target in targets})
    _METHODS.update({method: name for method in methods})
    return updated


def register_function(kind: Kind, *, name: Optional[str] = None, twin_of: tuple[str, ...] = (), **fields: Any):
    """Decorator: declare a libra_fx function as an op; its parameters are read from its signature.

    Args:
        kind: its :class:`Kind` (``Kind.BALANCED`` for the ``libra_fx.functional`` ops).
        name: the canonical name (the function's name by default).
        twin_of: canonical ops this function is the balanced twin of (their ``balanced_twin``).
        **fields: other :class:`OpSchema` fields (``gradient_arg``, ``bias_rule``, ...).

    Returns:
        The decorator; it returns the function unchanged.

    Example:
        >>> @register_function(Kind.BALANCED, gradient_arg="x")
        ... def my_balanced_op(x, value): ...
        >>> schema("my_balanced_op").args
        ('x', 'value')
    """
    def decorate(function: Callable) -> Callable:
        parameters = inspect.signature(function).parameters.values()
        op = name or function.__name__
        registered = {"args": tuple(p.name for p in parameters),
                      "defaults": {p.name: p.default for p in parameters if p.default is not p.empty},
                      "function": function, **fields}
        if op in _SCHEMAS:  # another spelling of a declared op (block_gradient is a const)
            registered = fields
        register_op(op, kind, targets=(function,), **registered)
        for original in twin_of:
            register_op(original, balanced_twin=op)
        return function
    return decorate


for _kind, _ops in _KINDS.items():
    for _op in _ops:
        register_op(_op, _kind)
for _op, _fields in _DETAILS.items():
    register_op(_op, **_fields)
for _op in _ELEMENTWISE:
    register_op(_op, elementwise=True, args=_SCHEMAS[_op].args or ("input",))
for _op in _VIEWS:
    if _op in _SCHEMAS:
        register_op(_op, view=True)
_UNKNOWN_VIEWS = frozenset(op for op in _VIEWS if op not in _SCHEMAS)  # views with no kind yet


def schema(name: str) -> Optional[OpSchema]:
    """The :class:`OpSchema` of a canonical op name, or ``None`` when the engine does not know it.

    Example:
        >>> schema("baddbmm").factors
        ('batch1', 'batch2')
    """
    return _SCHEMAS.get(name)


def op_kind(name: str) -> Optional[Kind]:
    """The :class:`Kind` of a canonical op name, or ``None`` when the engine does not know it."""
    op = _SCHEMAS.get(name)
    return op.kind if op is not None else None


def view_ops() -> frozenset[str]:
    """Canonical names of the ops whose result may share storage with their first argument."""
    return frozenset(n for n, s in _SCHEMAS.items() if s.view) | _UNKNOWN_VIEWS


def elementwise_ops() -> frozenset[str]:
    """Canonical names of the elementwise ops (a gate ``g(x)`` is built from these)."""
    return frozenset(n for n, s in _SCHEMAS.items() if s.elementwise)


def balanced_twin(name: str) -> Optional[OpSchema]:
    """The schema of the balanced op that replaces ``name`` (``layer_norm`` → ``balanced_layer_norm``).

    Example:
        >>> balanced_twin("rms_norm").function.__name__
        'balanced_rms_norm'
    """
    op = _SCHEMAS.get(name)
    return _SCHEMAS.get(op.balanced_twin) if op is not None and op.balanced_twin else None


def _node_op(node: fx.Node) -> str:
    owner = node.graph.owning_module if node.op == "call_module" else None
    return op_name(node, owner)


def _positions(node: fx.Node) -> tuple[str, ...]:
    # ATen overloads (torch.export captures) order their arguments differently from the functional
    # form (aten.batch_norm takes weight, bias before the running stats): read their schema.
    if isinstance(node.target, torch._ops.OpOverload):
        return tuple(a.name for a in node.target._schema.arguments)
    op = _SCHEMAS.get(_node_op(node))
    return op.args if op is not None else ()


def _spellings(name: str) -> tuple[str, ...]:
    return _SPELLINGS.get(name, (name,))


_MISSING = object()


def _find(node: fx.Node, name: str) -> tuple[str, Any]:
    """Where argument ``name`` is: ``("kwarg", key)``, ``("arg", index)`` or ``("", None)``."""
    spellings = _spellings(name)
    for key in spellings:
        if key in node.kwargs:
            return "kwarg", key
    positions = _positions(node)
    index = next((positions.index(k) for k in spellings if k in positions), None)
    if index is not None and index < len(node.args):
        return "arg", index
    return "", None


def arg(node: fx.Node, name: str, default: Any = None) -> Any:
    """Argument ``name`` of ``node``, found by keyword or by position (see :func:`schema`).

    Args:
        node: a call node of an op the schema knows (or an ATen overload: its own schema is read).
        name: the parameter name in the functional form (``"weight"``, ``"eps"``, ...); its other
            spellings (``self``/``input``, ``train``/``training``) are accepted.
        default: returned when the argument was not given.

    Returns:
        The argument (a Node or a Python value), or ``default``.

    Example:
        >>> g = torch.fx.symbolic_trace(lambda x: F.layer_norm(x, (4,), eps=1e-3)).graph
        >>> arg(list(g.nodes)[1], "eps")
        0.001
    """
    where, key = _find(node, name)
    if where == "kwarg":
        return node.kwargs[key]
    return node.args[key] if where == "arg" else default


def bound_args(node: fx.Node) -> dict[str, Any]:
    """Every parameter of ``node``'s op by name, given or defaulted (:attr:`OpSchema.defaults`).

    Example:
        >>> g = torch.fx.symbolic_trace(lambda q: F.scaled_dot_product_attention(q, q, q)).graph
        >>> bound_args(list(g.nodes)[1])["is_causal"]
        False
    """
    op = _SCHEMAS.get(_node_op(node))
    if op is None:
        return {}
    return {name: arg(node, name, op.defaults.get(name)) for name in op.args}


def set_arg(node: fx.Node, name: str, value: Any) -> None:
    """Set argument ``name`` of ``node`` where it was given (position or keyword), else as a keyword.

    Example:
        >>> g = torch.fx.symbolic_trace(lambda x: F.dropout(x, 0.1, True)).graph
        >>> node = list(g.nodes)[1]; set_arg(node, "training", False); node.args
        (x, 0.1, False)
    """
    where, key = _find(node, name)
    if where == "arg":
        node.args = node.args[:key] + (value,) + node.args[key + 1:]
    else:
        node.kwargs = {**node.kwargs, (key if where == "kwarg" else name): value}


def factors(node: fx.Node) -> list[Any]:
    """The multiplied operands of a product node (``[a, b]`` for ``a @ b``, ``[b1, b2]`` for
    ``baddbmm``, every operand of an ``einsum``), repeats kept; ``[]`` for other ops."""
    op = _SCHEMAS.get(_node_op(node))
    if op is None or not op.factors:
        return []
    if op.name == "einsum":
        return list(node.args[1:] if len(node.args) > 2 else node.args[1])
    return [arg(node, name) for name in op.factors]


def gradient_source(node: fx.Node) -> Any:
    """For an op whose gradient flows through one argument only (:attr:`OpSchema.gradient_arg`), that
    argument; ``None`` for other ops (every argument carries gradient)."""
    op = _SCHEMAS.get(_node_op(node))
    return arg(node, op.gradient_arg) if op is not None and op.gradient_arg else None


def has_gradient_arg(name: str) -> bool:
    """Whether the gradient of op ``name`` flows through one argument only."""
    op = _SCHEMAS.get(name)
    return op is not None and op.gradient_arg is not None


def _module(gm: Optional[fx.GraphModule], node: fx.Node) -> Optional[nn.Module]:
    if gm is None:
        return None
    try:
        return gm.get_submodule(node.target)
    except AttributeError:
        return None


def _module_name(module: nn.Module) -> str:
    # Exact type only: a subclass that stays a leaf (timm's BatchNormAct2d subclasses BatchNorm2d but
    # adds an activation) does more than its base, so it is an opaque module until traced through.
    name = _MODULES.get(type(module))
    return name if name is not None else "module:" + type(module).__name__


def _library_function(target: Any) -> Optional[str]:
    package = (getattr(target, "__module__", None) or "").split(".")[0]
    return _LIBRARY_FUNCTIONS.get((package, getattr(target, "__name__", None)))


def op_name(node: fx.Node, gm: Optional[fx.GraphModule] = None) -> str:
    """The canonical name of ``node``'s op (``"layer_norm"``, ``"mul"``, ``"sdpa"``, ...).

    Args:
        node: an FX node.
        gm: the owning GraphModule, to resolve ``call_module`` targets.

    Returns:
        The canonical op name; ``placeholder``/``get_attr``/``output`` for those node kinds, the
        module class as ``module:Name`` for unknown leaf modules, ``unknown:<target>`` otherwise.

    Example:
        >>> g = torch.fx.symbolic_trace(lambda x: x.softmax(-1)).graph
        >>> op_name(list(g.nodes)[1])
        'softmax'
    """
    if node.op in ("placeholder", "get_attr", "output"):
        return node.op
    if node.op == "call_method":
        return _METHODS.get(node.target, node.target)
    if node.op == "call_module":
        module = _module(gm, node)
        return _module_name(module) if module is not None else "module:?"
    target = node.target
    if target is getattr and len(node.args) > 1:  # tensor attributes: ``x.T`` carries gradient, ``x.shape`` not
        return _TENSOR_ATTRIBUTES.get(node.args[1], "shape")
    if isinstance(target, torch._ops.OpOverload):
        packet = target.overloadpacket.__name__
        return _ATEN.get(packet, packet)
    try:
        return _FUNCTIONS[target]
    except (KeyError, TypeError):
        pass
    library = _library_function(target)
    return library if library is not None else "unknown:" + getattr(target, "__qualname__", str(target))




# the Libra ops declare themselves next to their definitions (register_function); importing them
# here makes the registry complete whichever module is imported first
for _libra_module in ("ops", "functional"):
    importlib.import_module(f".{_libra_module}", __package__)
