"""Evaluation metrics for attribution maps (LibraGrad spec, section 5).

- :func:`decomposition_error` — ``|f(x) - Σ attributions|`` of attributions already computed (the
  paper's CE; :func:`libra_fx.completeness_error` runs FullGrad on a graph and checks it).
- :func:`deletion_curve` / :func:`mif_lif` — MIF / LIF patch deletion, AUC, AOPC, SRG.
- :func:`average_precision` — segmentation AP of a map against a ground-truth mask.

Deletion is batched: every masked variant of every image (plus each original,
needed for the predicted label and its probability) forms one stream that is built
lazily and run through the model in chunks of ``batch_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .maps import _pair, upsample_map

__all__ = [
    "decomposition_error",
    "DeletionResult",
    "deletion_curve",
    "mif_lif",
    "APResult",
    "average_precision",
    "DEFAULT_FRACTIONS",
    "BASELINES",
    "ORDERS",
]

DEFAULT_FRACTIONS: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))

Tensorish = Union[torch.Tensor, Sequence[torch.Tensor]]
Baseline = Union[float, str, torch.Tensor]


# --------------------------------------------------------------------------- completeness


def decomposition_error(
    output: torch.Tensor,
    attributions: Tensorish,
    relative: bool = True,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Completeness error ``|f(x) - Σ attributions|`` per sample of a decomposition you computed.

    The sum runs over every non-batch dimension of every attribution tensor, so
    FullGrad-style decompositions (input×grad plus one bias×grad per bias) are
    passed as a list. The reduction is done in float64 so the error measures the
    attribution, not the round-off of summing it.

    Args:
        output: ``(B,)`` or ``(B, 1)`` attributed scalar per sample (a logit, or a
            similarity), the value the attributions should add up to.
        attributions: a tensor ``(B, ...)`` or a list of tensors each ``(B, ...)``.
        relative: divide by ``|f(x)|`` (clamped below at ``eps`` so ``f = 0`` does not
            divide by zero).
        eps: floor of the denominator when ``relative``.

    Returns:
        ``(B,)`` float64 tensor of (relative) errors.

    Example::

        >>> x = torch.randn(4, 8, requires_grad=True)
        >>> lin = torch.nn.Linear(8, 1)
        >>> f = lin(x).squeeze(1)
        >>> g, = torch.autograd.grad(f.sum(), x)
        >>> ce = decomposition_error(f, [x * g, lin.bias.expand(4, 1)])
        >>> bool(ce.max() < 1e-6)
        True
    """
    f = output.detach().reshape(output.shape[0], -1)
    if f.shape[1] != 1:
        raise ValueError(f"output must hold one scalar per sample, got shape {tuple(output.shape)}")
    f = f[:, 0].double()
    parts = [attributions] if isinstance(attributions, torch.Tensor) else list(attributions)
    if not parts:
        raise ValueError("attributions is empty")
    total = torch.zeros_like(f)
    for a in parts:
        if a.shape[0] != f.shape[0]:
            raise ValueError(f"attribution batch {a.shape[0]} != output batch {f.shape[0]}")
        total = total + a.detach().reshape(a.shape[0], -1).double().sum(dim=1).to(f.device)
    err = (f - total).abs()
    return err / f.abs().clamp_min(eps) if relative else err


# --------------------------------------------------------------------------- deletion

# Removal orders: map scores (B, N) to patch indices in removal order.
# Stable sorts make ties deterministic (lower patch index removed first).
ORDERS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "most": lambda s: torch.sort(s, dim=1, descending=True, stable=True).indices,
    "least": lambda s: torch.sort(s, dim=1, descending=False, stable=True).indices,
}

# Named baselines: images (B, C, H, W) -> tensor broadcastable to images.
BASELINES: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "zero": lambda x: torch.zeros((), dtype=x.dtype, device=x.device),
    "mean": lambda x: x.mean(dim=(2, 3), keepdim=True),  # per image, per channel
}


@dataclass
class DeletionResult:
    """One deletion curve.

    Attributes:
        order: ``"most"`` (MIF) or ``"least"`` (LIF).
        fractions: removed fraction of patches at each step.
        num_removed: patches removed at each step (``round(fraction * N)``, half up).
        accuracy: ``(F,)`` fraction of images whose prediction still equals the label.
        prob_drop: ``(F,)`` mean over images of ``p_label(x) - p_label(x_masked)``.
        auc: trapezoidal area under ``accuracy`` over ``fractions``, divided by the
            fraction span so it lies in ``[0, 1]``.
        aopc: mean of ``prob_drop`` over the steps.
        correct: ``(B, F)`` bool, per-image correctness at each step.
        prob: ``(B, F)`` probability of the label at each step.
        base_prob: ``(B,)`` probability of the label on the unmasked image.
        labels: ``(B,)`` labels scored (given, or the model's original prediction).
    """

    order: str
    fractions: Tuple[float, ...]
    num_removed: Tuple[int, ...]
    accuracy: torch.Tensor
    prob_drop: torch.Tensor
    auc: float
    aopc: float
    correct: torch.Tensor
    prob: torch.Tensor
    base_prob: torch.Tensor
    labels: torch.Tensor


def _num_removed(fractions: Sequence[float], n: int) -> Tuple[int, ...]:
    # Round half up (not Python's banker's rounding) so e.g. 0.5 of 9 patches is 5.
    ks = tuple(int(math.floor(f * n + 0.5)) for f in fractions)
    if any(not 0 <= f <= 1 for f in fractions):
        raise ValueError(f"fractions must lie in [0, 1], got {tuple(fractions)}")
    return ks


def _resolve_baseline(baseline: Baseline, images: torch.Tensor) -> torch.Tensor:
    """Baseline as a 4-D tensor broadcastable to ``images``, kept at its own size.

    Not expanded to the image batch: a scalar or per-channel baseline then costs
    nothing per variant, and only a per-image baseline (leading dim ``B``) is indexed.
    """
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; choose from {sorted(BASELINES)}")
        value = BASELINES[baseline](images)
    else:
        value = torch.as_tensor(baseline, device=images.device)
    value = value.to(images.dtype)
    try:
        torch.broadcast_shapes(value.shape, images.shape)
    except RuntimeError as e:
        raise ValueError(f"baseline {tuple(value.shape)} does not broadcast to {tuple(images.shape)}") from e
    if value.dim() > 4 or (value.dim() == 4 and value.shape[0] not in (1, images.shape[0])):
        raise ValueError(f"baseline {tuple(value.shape)} does not broadcast to {tuple(images.shape)}")
    return value.reshape((1,) * (4 - value.dim()) + tuple(value.shape))


def _inverse_rank(order: torch.Tensor) -> torch.Tensor:
    """``rank[b, n]`` = position at which patch ``n`` is removed for image ``b``."""
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _accuracy_auc(fractions: Sequence[float], accuracy: torch.Tensor) -> float:
    if len(fractions) == 1:
        return float(accuracy[0])
    xs = torch.tensor(fractions, dtype=torch.float64)
    span = float(xs[-1] - xs[0])
    area = float(torch.trapezoid(accuracy.double().cpu(), xs))
    return area / span if span > 0 else float(accuracy.double().mean())


class _DeletionStream:
    """Lazily built masked variants of all images, for one or more removal curves.

    The stream is image-major: image ``b`` contributes its original first, then
    ``num_curves * num_steps`` masked variants. Putting the original first means its
    prediction (the default label) is always known before any of its variants is
    scored, even within a single chunk.
    """

    def __init__(self, images, baseline, ranks, ks, patch_size):
        self.images = images
        self.baseline = baseline
        self.ranks = ranks  # (num_curves, B, N)
        # Step 0 of every image is the original: zero patches removed.
        self.ks = torch.tensor((0,) + tuple(ks), device=images.device)
        self.num_steps = len(ks)
        self.per_image = 1 + ranks.shape[0] * self.num_steps
        self.grid = (images.shape[2] // patch_size[0], images.shape[3] // patch_size[1])
        self.patch_size = patch_size

    def __len__(self) -> int:
        return self.images.shape[0] * self.per_image

    def decode(self, idx: torch.Tensor):
        """Stream index -> (image, curve, step); step 0 is the original."""
        b, j = idx // self.per_image, idx % self.per_image
        curve = (j - 1).clamp_min(0) // self.num_steps
        step = torch.where(j == 0, torch.zeros_like(j), (j - 1) % self.num_steps + 1)
        return b, curve, step

    def build(self, idx: torch.Tensor) -> torch.Tensor:
        b, curve, step = self.decode(idx)
        removed = self.ranks[curve, b] < self.ks[step].unsqueeze(1)  # (chunk, N)
        mask = removed.reshape(-1, 1, *self.grid)
        mask = mask.repeat_interleave(self.patch_size[0], dim=2)
        mask = mask.repeat_interleave(self.patch_size[1], dim=3)
        per_image = self.baseline.shape[0] > 1
        return torch.where(mask, self.baseline[b] if per_image else self.baseline, self.images[b])

    def chunks(self, batch_size: int) -> Iterator[torch.Tensor]:
        total = len(self)
        device = self.images.device
        for start in range(0, total, batch_size):
            yield torch.arange(start, min(start + batch_size, total), device=device)


def _run_deletion(
    model: nn.Module,
    images: torch.Tensor,
    scores: torch.Tensor,
    patch_size,
    orders: Sequence[str],
    fractions: Sequence[float],
    baseline: Baseline,
    labels: Optional[torch.Tensor],
    batch_size: int,
) -> Dict[str, DeletionResult]:
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    ph, pw = _pair(patch_size)
    bsz, _, h, w = images.shape
    if h % ph or w % pw:
        raise ValueError(f"image {h}x{w} is not divisible into {ph}x{pw} patches")
    n = (h // ph) * (w // pw)
    if scores.shape != (bsz, n):
        raise ValueError(f"scores must be (B, N) = ({bsz}, {n}), got {tuple(scores.shape)}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    unknown = [o for o in orders if o not in ORDERS]
    if unknown:
        raise ValueError(f"unknown order(s) {unknown}; choose from {sorted(ORDERS)}")

    fractions = tuple(float(f) for f in fractions)
    ks = _num_removed(fractions, n)
    scores = scores.detach().to(images.device)
    ranks = torch.stack([_inverse_rank(ORDERS[o](scores)) for o in orders])
    stream = _DeletionStream(images, _resolve_baseline(baseline, images), ranks, ks, (ph, pw))

    given = labels is not None
    lab = (
        labels.to(images.device).long()
        if given
        else torch.full((bsz,), -1, dtype=torch.long, device=images.device)
    )
    n_curves, n_steps = len(orders), len(ks)
    correct = torch.zeros(n_curves, bsz, n_steps, dtype=torch.bool, device=images.device)
    prob = torch.zeros(n_curves, bsz, n_steps, device=images.device)
    base_prob = torch.zeros(bsz, device=images.device)

    with torch.no_grad():
        for idx in stream.chunks(batch_size):
            logits = model(stream.build(idx))
            b, curve, step = stream.decode(idx)
            pred = logits.argmax(dim=1)
            is_orig = step == 0
            if not given:
                lab[b[is_orig]] = pred[is_orig]
            p = logits.float().softmax(dim=1).gather(1, lab[b].unsqueeze(1)).squeeze(1)
            base_prob[b[is_orig]] = p[is_orig]
            var = ~is_orig
            c, bb, s = curve[var], b[var], step[var] - 1
            correct[c, bb, s] = pred[var] == lab[bb]
            prob[c, bb, s] = p[var]

    results = {}
    for ci, order in enumerate(orders):
        acc = correct[ci].float().mean(dim=0)
        drop = (base_prob.unsqueeze(1) - prob[ci]).mean(dim=0)
        results[order] = DeletionResult(
            order=order,
            fractions=fractions,
            num_removed=ks,
            accuracy=acc.cpu(),
            prob_drop=drop.cpu(),
            auc=_accuracy_auc(fractions, acc),
            aopc=float(drop.mean()),
            correct=correct[ci].cpu(),
            prob=prob[ci].cpu(),
            base_prob=base_prob.cpu(),
            labels=lab.cpu(),
        )
    return results


def deletion_curve(
    model: nn.Module,
    images: torch.Tensor,
    scores: torch.Tensor,
    patch_size: Union[int, Tuple[int, int]],
    order: str = "most",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    baseline: Baseline = 0.0,
    labels: Optional[torch.Tensor] = None,
    batch_size: int = 64,
) -> DeletionResult:
    """Patch-deletion curve (MIF with ``order="most"``, LIF with ``order="least"``).

    Patches are ranked per image by ``scores``; at each fraction ``f`` the top (MIF)
    or bottom (LIF) ``round(f * N)`` patches are replaced by the baseline and the
    model is re-run. The originals and all ``B * len(fractions)`` variants are
    streamed through the model in chunks, i.e. ``ceil(B * (1 + F) / batch_size)``
    forward calls in total. The model is run under ``torch.no_grad`` in whatever
    mode it is in (call ``model.eval()`` first).

    Args:
        model: maps ``(b, C, H, W)`` images to ``(b, num_classes)`` logits.
        images: ``(B, C, H, W)``; ``H, W`` must be multiples of the patch size.
        scores: ``(B, N)`` patch relevance in raster order (see
            :func:`libra_fx.maps.patch_scores` for pixel maps). Ties are broken by
            patch index (lower index removed first).
        patch_size: ``int`` or ``(ph, pw)``.
        order: key of :data:`ORDERS`: ``"most"`` or ``"least"``.
        fractions: removed fractions in ``[0, 1]``; default ``0.1, ..., 0.9``.
        baseline: value replacing removed pixels: a float, a tensor broadcastable to
            ``images`` (e.g. ``(C, 1, 1)`` or ``(B, C, H, W)``), or a key of
            :data:`BASELINES` (``"mean"``: per-image channel mean, ``"zero"``).
        labels: ``(B,)`` labels to score; default: the model's prediction on the
            unmasked image (then the curve starts from accuracy 1).
        batch_size: images per forward call.

    Returns:
        :class:`DeletionResult` with per-fraction ``accuracy`` and ``prob_drop``,
        ``auc`` (normalised to ``[0, 1]``) and ``aopc``.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
        >>> images = torch.randn(4, 3, 32, 32)
        >>> scores = torch.randn(4, 16)  # 4x4 grid of 8x8 patches
        >>> res = deletion_curve(model, images, scores, patch_size=8, order="most")
        >>> res.accuracy.shape, 0.0 <= res.auc <= 1.0
        (torch.Size([9]), True)
    """
    return _run_deletion(
        model, images, scores, patch_size, (order,), fractions, baseline, labels, batch_size
    )[order]


def mif_lif(
    model: nn.Module,
    images: torch.Tensor,
    scores: torch.Tensor,
    patch_size: Union[int, Tuple[int, int]],
    **kw,
) -> Dict[str, object]:
    """MIF and LIF deletion curves and their gap ``SRG = LIF_auc - MIF_auc``.

    Both curves share one stream, so each original image is run once:
    ``ceil(B * (1 + 2F) / batch_size)`` forward calls.

    Args:
        model, images, scores, patch_size: as in :func:`deletion_curve`.
        **kw: ``fractions``, ``baseline``, ``labels``, ``batch_size`` as in
            :func:`deletion_curve`.

    Returns:
        dict with ``"mif"`` and ``"lif"`` (:class:`DeletionResult`), ``"mif_auc"``,
        ``"lif_auc"`` and ``"srg"`` (floats; higher SRG = better map).

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
        >>> out = mif_lif(model, torch.randn(4, 3, 32, 32), torch.randn(4, 16), patch_size=8)
        >>> sorted(out)
        ['lif', 'lif_auc', 'mif', 'mif_auc', 'srg']
    """
    allowed = {"fractions", "baseline", "labels", "batch_size"}
    extra = set(kw) - allowed
    if extra:
        raise TypeError(f"unexpected keyword(s) {sorted(extra)}")
    opts = {"fractions": DEFAULT_FRACTIONS, "baseline": 0.0, "labels": None, "batch_size": 64}
    opts.update(kw)
    res = _run_deletion(model, images, scores, patch_size, ("most", "least"), **opts)
    mif, lif = res["most"], res["least"]
    return {"mif": mif, "lif": lif, "mif_auc": mif.auc, "lif_auc": lif.auc, "srg": lif.auc - mif.auc}


# --------------------------------------------------------------------------- segmentation AP


@dataclass
class APResult:
    """Average precision per sample (``nan`` where the mask is empty) and their mean."""

    per_sample: torch.Tensor
    mean: float


def average_precision(maps: torch.Tensor, masks: torch.Tensor) -> APResult:
    """Average precision of pixel maps against boolean ground-truth masks.

    ``AP = Σ_t (R_t - R_{t-1}) · P_t`` over the distinct score thresholds ``t``
    (descending), the step-wise definition scikit-learn uses. Tied scores form one
    threshold, so the result does not depend on pixel order: a constant map scores
    exactly the positive rate. Without ties it reduces to the mean, over positive
    pixels, of the precision at that pixel's rank.

    Args:
        maps: ``(B, h, w)`` (or ``(B, ...)``) relevance; a ``(B, h, w)`` map smaller
            than the masks is upsampled bilinearly to the mask size first.
        masks: ``(B, H, W)`` (or ``(B, ...)``) boolean object masks.

    Returns:
        :class:`APResult` with ``per_sample`` ``(B,)`` (``nan`` for empty masks) and
        ``mean`` over the non-empty ones.

    Example::

        >>> mask = torch.zeros(1, 4, 4, dtype=torch.bool); mask[0, :2] = True
        >>> average_precision(mask.float(), mask).mean
        1.0
    """
    if maps.dim() == 3 and masks.dim() == 3 and maps.shape[1:] != masks.shape[1:]:
        maps = upsample_map(maps, tuple(masks.shape[1:]))
    scores = maps.detach().reshape(maps.shape[0], -1).double()
    pos = masks.reshape(masks.shape[0], -1).to(scores.device, torch.float64)
    if scores.shape != pos.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} do not match")

    sorted_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    pos = pos.gather(1, order)
    m = scores.shape[1]
    ranks = torch.arange(1, m + 1, device=scores.device, dtype=torch.float64)
    precision = pos.cumsum(dim=1) / ranks
    # Every pixel takes the precision at the end of its tie group (the threshold it belongs to).
    is_end = torch.ones_like(pos, dtype=torch.bool)
    is_end[:, :-1] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    end_idx = torch.where(is_end, ranks.long() - 1, torch.full_like(is_end, m - 1, dtype=torch.long))
    group_end = end_idx.flip(1).cummin(dim=1).values.flip(1)
    n_pos = pos.sum(dim=1)
    ap = (pos * precision.gather(1, group_end)).sum(dim=1) / n_pos  # nan when n_pos == 0
    valid = n_pos > 0
    mean = float(ap[valid].mean()) if bool(valid.any()) else float("nan")
    return APResult(per_sample=ap, mean=mean)
