"""What the engine knows about ops: one canonical name per op, whatever its spelling.

A node's op may be a torch function (``F.gelu``), a Tensor method (``x.softmax``), a Python operator
(``a @ b``), an ATen overload (fallback captures) or a leaf module. :func:`op_name` maps all of them to
one name; :data:`OP_KINDS` says how each name behaves for the balance analysis (spec §1, §4).
"""
from __future__ import annotations

import operator
from enum import Enum
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import functional as LF
from . import ops as LO


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
    "const": (LO.const, LO.block_gradient), "swap_backward": (LO.swap_backward,), "scale_grad": (LO.scale_grad,),
    "identity": (LO.contiguous_grad,), "square": (torch.square,),
    **{fn.__name__: (fn,) for fn in LF.BALANCED_OPS},
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

OP_KINDS: dict[str, Kind] = {
    **{n: Kind.NO_GRAD for n in ("shape",)},
    **{n: Kind.STRUCTURAL for n in (
        "getitem", "reshape", "flatten", "unflatten", "transpose", "permute", "unbind", "split",
        "chunk", "squeeze", "unsqueeze", "roll", "flip", "mean", "sum", "dropout", "identity",
        "cast", "expand", "stack", "neg", "avg_pool", "interpolate", "index_select", "gather",
        "repeat_interleave", "movedim", "narrow", "select", "tile", "unfold", "pixel_shuffle",
        "masked_fill", "contiguous", "stochastic_depth")},
    **{n: Kind.AFFINE for n in ("add", "sub", "rsub", "linear", "conv", "batch_norm", "cat", "pad")},
    **{n: Kind.PIECEWISE for n in ("relu", "relu6", "leaky_relu", "hardtanh", "max_pool", "amax",
                                   "max", "abs", "clamp", "where")},
    **{n: Kind.BILINEAR for n in ("mul", "matmul", "einsum", "baddbmm", "linear_addmm", "addcmul")},
    "div": Kind.DIVIDE,
    **{n: Kind.NONLINEAR for n in (
        "softmax", "log_softmax", "gelu", "silu", "hardswish", "mish", "elu", "selu", "softplus",
        "hardsigmoid", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "pow", "erf", "sin", "cos",
        "reciprocal", "norm", "var", "std", "layer_norm", "group_norm", "rms_norm", "normalize",
        "multihead_attention", "square")},
    "sdpa": Kind.ATTENTION, "const": Kind.CONST, "swap_backward": Kind.SWAP, "scale_grad": Kind.SCALE,
    **{fn.__name__: Kind.BALANCED for fn in LF.BALANCED_OPS},
}

#: Elementwise ops of one tensor (used to recognise gate(x) in x·gate(x)).
ELEMENTWISE = frozenset((
    "gelu", "silu", "hardswish", "mish", "elu", "selu", "softplus", "hardsigmoid", "sigmoid", "tanh",
    "exp", "log", "sqrt", "rsqrt", "pow", "square", "erf", "sin", "cos", "reciprocal", "relu", "relu6",
    "leaky_relu", "hardtanh", "abs", "clamp", "add", "sub", "rsub", "mul", "div", "neg", "cast",
    "identity", "dropout"))


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


def op_kind(name: str) -> Optional[Kind]:
    """The :class:`Kind` of a canonical op name, or ``None`` when the engine does not know it."""
    return OP_KINDS.get(name)


_ARG_POSITIONS = {
    # canonical op -> parameter names in the order the functional / method form takes them
    "sdpa": ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "rms_norm": ("input", "normalized_shape", "weight", "eps"),
    "group_norm": ("input", "num_groups", "weight", "bias", "eps"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    "normalize": ("input", "p", "dim", "eps"),
    "linear": ("input", "weight", "bias"),
    "conv": ("input", "weight", "bias"),
    "gelu": ("input", "approximate"),
    "softmax": ("input", "dim"),
    "clamp": ("input", "min", "max"),
    "hardtanh": ("input", "min_val", "max_val"),
    "cat": ("tensors", "dim"),
    "addcmul": ("input", "tensor1", "tensor2", "value"),
    "baddbmm": ("input", "batch1", "batch2", "beta", "alpha"),
}
_ARG_POSITIONS.update({"balanced_" + n: _ARG_POSITIONS[n] for n in ("layer_norm", "rms_norm", "group_norm")})

_ALIASES = {"input": ("self", "x", "a"), "tensors": ("seq",), "query": ("q",), "key": ("k",), "value": ("v",)}


def arg(node: fx.Node, name: str, default: Any = None) -> Any:
    """Argument ``name`` of ``node``, found by keyword or by position (see ``_ARG_POSITIONS``).

    Args:
        node: a call node whose op is in ``_ARG_POSITIONS``.
        name: the parameter name in the functional form (``"weight"``, ``"eps"``, ...).
        default: returned when the argument was not given.

    Returns:
        The argument (a Node or a Python value), or ``default``.
    """
    for key in (name,) + _ALIASES.get(name, ()):
        if key in node.kwargs:
            return node.kwargs[key]
    positions = _positions(node)
    index = next((positions.index(k) for k in (name,) + _ALIASES.get(name, ()) if k in positions), None)
    if index is None:
        return default
    return node.args[index] if index < len(node.args) else default


def _positions(node: fx.Node) -> tuple[str, ...]:
    # ATen overloads (torch.export captures) order their arguments differently from the functional
    # form (aten.batch_norm takes weight, bias before the running stats): read their schema.
    if isinstance(node.target, torch._ops.OpOverload):
        return tuple(a.name for a in node.target._schema.arguments)
    return _ARG_POSITIONS.get(op_name(node), ())


#: Positions of the multiplied factors of each product op (the rest is an additive term).
FACTOR_POSITIONS = {"baddbmm": (1, 2), "linear_addmm": (1, 2), "addcmul": (1, 2)}


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """The Node inputs of ``node``, in order, flattened out of lists/tuples/kwargs."""
    return list(node.all_input_nodes)
