"""FullGrad completeness read from ``.grad`` alone — the way a user checks it, independent of
:mod:`libra_fx.bias`.

A user computes FullGrad as ``Σ x·x.grad + Σ b·b.grad`` over the input and every *additive*
parameter or buffer ``b`` (biases, position and type embeddings, class/register tokens), after one
``backward()``. :func:`grad_completeness` does exactly that on a (transformed) module: it finds the
additive tensors by name (:func:`is_additive`), asks autograd for their ``.grad``, and returns how
far the sum is from the explained output. An eval BatchNorm's implied bias ``−γ·μ/√(σ²+ε)`` has no
tensor of its own; it enters where β does, so its term is ``implied · β.grad``.

If any parameter's gradient in the balanced graph were not the balanced one (a q-projection bias
reached through the softmax, say), ``b·b.grad`` would include it and this check would fail, while a
decomposition built from the graph's bias sites could still look complete.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn

#: leaf names of tensors that enter the output additively (weights and layer scales do not)
ADDITIVE_LEAVES = frozenset(("bias", "bias_k", "bias_v", "class_embedding", "positional_embedding",
                             "position_embeddings", "running_mean"))
#: modules whose every tensor is a bias term: embedding tables *added* to the token embeddings, and
#: position-encoding modules fed by constants (XCiT's Fourier features through a 1×1 conv)
ADDITIVE_MODULES = frozenset(("position_embeddings", "token_type_embeddings", "wpe", "embed_positions",
                              "pos_embed", "position_embedding"))
_ADDITIVE_LEAF = re.compile(r"^(\w+_bias|(cls|reg|dist|class)_token\d*|pos_embed(ding)?\d*)$")


def is_additive(name: str) -> bool:
    """Whether the parameter or buffer called ``name`` is a bias term (spec §1), judged by its name.

    Args:
        name: a qualified name from ``named_parameters()`` / ``named_buffers()``.

    Returns:
        ``True`` for biases (``*.bias``, ``q_bias``, MHA ``in_proj_bias``), position/type embeddings
        (parameters, embedding tables, and every tensor of a ``pos_embed`` module), class, register
        and distillation tokens; ``False`` for weights, scales, running statistics and tables such
        as ``relative_position_bias_table`` that feed the attention scores.

    Example:
        >>> is_additive("blocks.0.attn.qkv.bias"), is_additive("blocks.0.attn.qkv.weight")
        (True, False)
    """
    *owners, leaf = name.split(".")
    if leaf == "running_mean":  # its term is taken through β (see grad_completeness)
        return False
    return leaf in ADDITIVE_LEAVES or bool(_ADDITIVE_LEAF.match(leaf)) or any(o in ADDITIVE_MODULES for o in owners)


@dataclass
class GradCompleteness:
    """What :func:`grad_completeness` measured: totals over the batch (floats), or per sample
    ((B,) tensors) with ``per_sample=True``.

    Attributes:
        score: the explained output f (Σ_b f_b, or f_b).
        input_term: Σ x·x.grad over the attributed inputs.
        bias_term: Σ b·b.grad over the additive tensors (BatchNorm implied biases included).
        scale: what the error is relative to (Σ_b |f_b|, or |f_b|).
        additive: the names of the additive tensors found.
    """

    score: Union[float, torch.Tensor]
    input_term: Union[float, torch.Tensor]
    bias_term: Union[float, torch.Tensor]
    scale: Union[float, torch.Tensor]
    additive: list[str]

    @property
    def residual(self) -> Union[float, torch.Tensor]:
        """``f − Σ terms`` (absolute)."""
        return self.score - self.input_term - self.bias_term

    @property
    def error(self) -> Union[float, torch.Tensor]:
        """``|f − Σ terms| / scale``."""
        if isinstance(self.scale, torch.Tensor):
            return self.residual.abs() / self.scale.clamp_min(1e-12)
        return abs(self.residual) / max(self.scale, 1e-12)


@contextmanager
def _gradients_on(tensors: Sequence[torch.Tensor], others: Sequence[torch.Tensor]) -> Iterator[None]:
    """Ask for gradients of ``tensors`` only; every flag and ``.grad`` is restored afterwards."""
    saved = [(t, t.requires_grad, t.grad) for t in (*tensors, *others)]
    try:
        for t in others:
            t.requires_grad_(False)
        for t in tensors:
            t.grad = None
            t.requires_grad_(True)
        yield
    finally:
        for t, flag, grad in saved:
            t.grad = grad
            t.requires_grad_(flag)


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.running_mean is not None and m.bias is not None]


def _implied_bias(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    return -bn.running_mean * (scale if bn.weight is None else bn.weight * scale)


def _terms(inputs: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
           batch_norms: Sequence[nn.modules.batchnorm._BatchNorm]) -> tuple[float, float]:
    """``(Σ x·x.grad, Σ b·b.grad)`` after a backward."""
    input_term = sum(float((x * x.grad).sum()) for x in inputs if x.grad is not None)
    bias_term = sum(float((b * b.grad).sum()) for b in biases if b.grad is not None)
    # β is additive by name, so β.grad is there; the implied bias enters at the same place
    bias_term += sum(float((_implied_bias(bn) * bn.bias.grad).sum()) for bn in batch_norms if bn.bias.grad is not None)
    return input_term, bias_term


def grad_completeness(module: nn.Module, inputs: Sequence[torch.Tensor], target: Callable[[Any], torch.Tensor],
                      model: Optional[nn.Module] = None, additive: Callable[[str], bool] = is_additive,
                      per_sample: bool = False) -> GradCompleteness:
    """FullGrad completeness of ``module`` computed only from ``.grad`` after ``backward()``.

    Args:
        module: the module whose gradients are judged (``libra_fx.transform``'s output, or a plain one).
        inputs: positional inputs; floating tensors are attributed.
        target: ``output -> (B,)`` scores (e.g. :func:`libra_fx.auditing.default_target`).
        model: the module whose ``BatchNorm`` layers give implied biases (``module`` by default; a
            transformed module keeps the parameters but not the layer classes, so pass the original).
        additive: which tensor names are bias terms (:func:`is_additive` by default).
        per_sample: one backward per sample (B backwards) and (B,) results, instead of one backward
            of Σ_b f_b. Needs outputs whose rows depend on their own input row only.

    Returns:
        :class:`GradCompleteness`; ``.error`` is ``|Σ_b f_b − Σ terms| / Σ_b |f_b|`` (per sample:
        ``|f_b − Σ terms_b| / |f_b|``). ``module``'s flags and ``.grad`` are restored.

    Example:
        >>> import libra_fx
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.Linear(4, 2))
        >>> gm = libra_fx.transform(net)
        >>> grad_completeness(gm, (torch.randn(3, 4),), lambda out: out[:, 0]).error < 1e-5
        True
    """
    named = dict(module.named_parameters())
    named.update((n, b) for n, b in module.named_buffers() if b.is_floating_point())
    bias_names = sorted(n for n in named if additive(n))
    biases = [named[n] for n in bias_names]
    others = [p for n, p in module.named_parameters() if n not in set(bias_names)]
    batch_norms = _batch_norms(model or module)
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    with _gradients_on(biases, others):
        with torch.enable_grad():
            score = target(module(*xs))
        if not per_sample:
            score.sum().backward()
            with torch.no_grad():
                terms = _terms(xs, biases, batch_norms)
            total = score.detach()
            return GradCompleteness(float(total.sum()), *terms, float(total.abs().sum()), bias_names)
        rows = []
        for b in range(score.shape[0]):
            for t in (*xs, *biases):
                t.grad = None
            score[b].backward(retain_graph=b + 1 < score.shape[0])
            with torch.no_grad():
                rows.append(_terms(xs, biases, batch_norms))
    score = score.detach()
    input_term, bias_term = (torch.tensor(column, dtype=torch.float64) for column in zip(*rows))
    return GradCompleteness(score.double(), input_term, bias_term, score.abs().double(), bias_names)


def randomise_bias_terms(model: nn.Module, std: float = 0.05, seed: int = 1) -> nn.Module:
    """Add seeded noise to every bias term (:func:`is_additive`) of ``model``, in place.

    Many layers initialise their biases to 0, and ``b·b.grad`` is then 0 whatever ``b.grad`` is: a
    q-projection bias wrongly reached through the softmax would go unseen. Checks of completeness
    on random-weight models call this first.

    Args:
        model: the model to edit (its additive parameters and floating buffers).
        std: the noise's standard deviation.
        seed: the generator's seed.

    Returns:
        ``model``.

    Example:
        >>> layer = randomise_bias_terms(torch.nn.LayerNorm(3))
        >>> bool(layer.bias.abs().sum() > 0)
        True
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if is_additive(name) and tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator).to(tensor.dtype)
                tensor.add_(std * noise.to(tensor.device))
    return model
