"""Tests for libra_fx.maps and libra_fx.metrics (fast, CPU only, random weights)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from libra_fx.maps import patch_scores, pixel_scores, token_scores, tokens_to_grid, upsample_map
from libra_fx.metrics import (
    DEFAULT_FRACTIONS,
    average_precision,
    decomposition_error,
    deletion_curve,
    mif_lif,
)

# --------------------------------------------------------------------------- helpers


class CallCounter(nn.Module):
    """Counts forward calls and the images seen by the wrapped model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls = 0
        self.seen = 0

    def forward(self, x):
        self.calls += 1
        self.seen += x.shape[0]
        return self.model(x)


class OnePatchModel(nn.Module):
    """Logits depend only on the mean of patch ``k``: class 0 iff that mean > 0.5."""

    def __init__(self, patch_size: int, grid: int, k: int):
        super().__init__()
        self.p, self.grid, self.k = patch_size, grid, k

    def forward(self, x):
        r, c = divmod(self.k, self.grid)
        m = x[:, :, r * self.p : (r + 1) * self.p, c * self.p : (c + 1) * self.p].mean(dim=(1, 2, 3))
        return torch.stack([m, torch.full_like(m, 0.5)], dim=1) * 10.0


def naive_deletion(model, images, scores, patch_size, order, fractions, baseline):
    """Reference: one forward per image per step, patches zeroed by slicing."""
    b, _, h, w = images.shape
    gw = w // patch_size
    n = (h // patch_size) * gw
    accs, drops = [], []
    with torch.no_grad():
        base_logits = torch.cat([model(images[i : i + 1]) for i in range(b)])
    labels = base_logits.argmax(1)
    base_p = base_logits.softmax(1)[torch.arange(b), labels]
    for f in fractions:
        k = int(math.floor(f * n + 0.5))
        hits, drop = 0, 0.0
        for i in range(b):
            ranking = sorted(range(n), key=lambda j: (-scores[i, j].item(), j))
            if order == "least":
                ranking = sorted(range(n), key=lambda j: (scores[i, j].item(), j))
            img = images[i].clone()
            fill = baseline(images[i])
            for j in ranking[:k]:
                r, c = divmod(j, gw)
                sl = (slice(None), slice(r * patch_size, (r + 1) * patch_size),
                      slice(c * patch_size, (c + 1) * patch_size))
                img[sl] = fill.expand_as(img)[sl]
            with torch.no_grad():
                logits = model(img[None])
            hits += int(logits.argmax(1).item() == labels[i].item())
            drop += (base_p[i] - logits.softmax(1)[0, labels[i]]).item()
        accs.append(hits / b)
        drops.append(drop / b)
    return torch.tensor(accs), torch.tensor(drops)


# --------------------------------------------------------------------------- maps


def test_token_scores_drops_prefix_and_sums_signed():
    h = torch.randn(2, 1 + 4 + 16, 8)
    s = token_scores(h, num_prefix_tokens=5)
    assert s.shape == (2, 16)
    torch.testing.assert_close(s, h[:, 5:].sum(-1))


def test_tokens_to_grid_square_and_rect():
    s = torch.arange(2 * 16.0).reshape(2, 16)
    g = tokens_to_grid(s)
    assert g.shape == (2, 4, 4)
    assert g[1, 2, 3] == s[1, 2 * 4 + 3]  # raster order
    assert tokens_to_grid(torch.randn(3, 12), grid_size=(3, 4)).shape == (3, 3, 4)
    with pytest.raises(ValueError):
        tokens_to_grid(torch.randn(1, 12))


def test_upsample_map_shapes_and_modes():
    g = torch.randn(2, 4, 4)
    assert upsample_map(g, 32).shape == (2, 32, 32)
    assert upsample_map(g, (16, 24), mode="bicubic").shape == (2, 16, 24)
    near = upsample_map(g, 8, mode="nearest")
    torch.testing.assert_close(near[:, ::2, ::2], g)


def test_pixel_and_patch_scores_preserve_totals():
    a = torch.randn(2, 3, 16, 24)
    px = pixel_scores(a)
    assert px.shape == (2, 16, 24)
    ps = patch_scores(px, 8)
    assert ps.shape == (2, 2 * 3)
    torch.testing.assert_close(ps.sum(1), a.sum((1, 2, 3)))
    torch.testing.assert_close(ps[0, 4], px[0, 8:16, 8:16].sum())  # row 1, col 1
    with pytest.raises(ValueError):
        patch_scores(px, 5)


# --------------------------------------------------------------------------- completeness


def test_decomposition_error_zero_for_linear_model():
    torch.manual_seed(0)
    lin = nn.Linear(12, 1)
    x = torch.randn(5, 12, requires_grad=True)
    f = lin(x).squeeze(1)
    (g,) = torch.autograd.grad(f.sum(), x)
    ce = decomposition_error(f, [x * g, lin.bias.expand(5, 1)])
    assert ce.shape == (5,)
    assert ce.max() < 1e-6


def test_decomposition_error_known_value_and_absolute():
    out = torch.tensor([2.0, -4.0])
    attr = [torch.tensor([[1.0, 0.5]]).expand(2, 2), torch.tensor([[0.0], [-1.0]])]
    # sums: 1.5 and 0.5 -> |2 - 1.5| = 0.5, |-4 - 0.5| = 4.5
    torch.testing.assert_close(decomposition_error(out, attr, relative=False),
                               torch.tensor([0.5, 4.5], dtype=torch.float64))
    torch.testing.assert_close(decomposition_error(out[:, None], attr),
                               torch.tensor([0.25, 1.125], dtype=torch.float64))


def test_decomposition_error_zero_output_is_guarded():
    ce = decomposition_error(torch.zeros(2), torch.zeros(2, 3))
    assert torch.isfinite(ce).all() and (ce == 0).all()


# --------------------------------------------------------------------------- average precision


def test_ap_perfect_map_is_one():
    masks = torch.rand(3, 10, 10) > 0.7
    res = average_precision(masks.float() + 0.01 * torch.rand(3, 10, 10), masks)
    torch.testing.assert_close(res.per_sample, torch.ones(3, dtype=torch.float64))
    assert res.mean == pytest.approx(1.0)


def test_ap_reversed_map_matches_formula():
    mask = torch.zeros(1, 6, 5, dtype=torch.bool)
    mask[0, :2] = True  # P = 10 positives, Q = 20 negatives
    p, q = int(mask.sum()), int((~mask).sum())
    # Distinct scores, every negative ranked above every positive: the j-th positive
    # sits at rank q + j, so AP = (1/P) Σ_j j / (q + j).
    expected = sum(j / (q + j) for j in range(1, p + 1)) / p
    scores = torch.arange(30.0).reshape(1, 6, 5)  # positives (first rows) lowest
    assert average_precision(scores, mask).mean == pytest.approx(expected, rel=1e-12)


def test_ap_random_map_is_near_positive_rate_and_constant_is_exact():
    torch.manual_seed(1)
    masks = torch.rand(4, 64, 64) < 0.3
    rate = masks.float().mean((1, 2)).double()
    res = average_precision(torch.rand(4, 64, 64), masks)
    assert torch.allclose(res.per_sample, rate, atol=0.03)
    # One tie group: AP is exactly the positive rate regardless of pixel order.
    const = average_precision(torch.zeros(4, 64, 64), masks)
    torch.testing.assert_close(const.per_sample, rate)


def test_ap_empty_mask_is_nan_and_excluded_from_mean():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[1, 0, 0] = True
    res = average_precision(torch.rand(2, 4, 4), masks)
    assert math.isnan(res.per_sample[0].item())
    assert res.mean == pytest.approx(res.per_sample[1].item())


def test_ap_upsamples_small_maps():
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, :8, :8] = True
    grid = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    explicit = average_precision(upsample_map(grid, 16), masks).mean
    assert average_precision(grid, masks).mean == pytest.approx(explicit)
    # Nearest upsampling keeps the block structure, so the top-left block is exact.
    assert average_precision(upsample_map(grid, 16, mode="nearest"), masks).mean == pytest.approx(1.0)


def test_ap_matches_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    torch.manual_seed(2)
    maps = torch.randint(0, 5, (3, 12, 12)).float()  # heavy ties
    masks = torch.rand(3, 12, 12) < 0.4
    res = average_precision(maps, masks)
    for i in range(3):
        ref = metrics.average_precision_score(masks[i].flatten().numpy(), maps[i].flatten().numpy())
        assert res.per_sample[i].item() == pytest.approx(ref, rel=1e-12)


# --------------------------------------------------------------------------- deletion

P, GRID, K = 4, 4, 5  # 16x16 images, 4x4 grid of 4x4 patches, model reads patch 5


def _one_patch_setup():
    images = torch.rand(3, 3, P * GRID, P * GRID) * 0.5 + 0.6  # every patch mean > 0.5
    model = OnePatchModel(P, GRID, K)
    first = torch.rand(3, GRID * GRID)
    first[:, K] = 10.0  # ranks patch K first
    last = first.clone()
    last[:, K] = -10.0  # ranks patch K last
    return model, images, first, last


def test_one_patch_model_mif_much_lower_than_lif_for_good_map():
    model, images, first, _ = _one_patch_setup()
    out = mif_lif(model, images, first, P)
    assert out["mif"].accuracy.max() == 0.0  # patch K goes in the first 10%
    assert out["lif"].accuracy.min() == 1.0  # 90% of 16 is 14 patches: K survives
    assert out["mif_auc"] == pytest.approx(0.0) and out["lif_auc"] == pytest.approx(1.0)
    assert out["srg"] == pytest.approx(1.0)
    assert out["mif"].aopc > out["lif"].aopc


def test_one_patch_model_reverse_for_bad_map():
    model, images, _, last = _one_patch_setup()
    out = mif_lif(model, images, last, P)
    assert out["mif_auc"] == pytest.approx(1.0) and out["lif_auc"] == pytest.approx(0.0)
    assert out["srg"] == pytest.approx(-1.0)


def test_given_labels_and_tensor_baseline():
    model, images, first, _ = _one_patch_setup()
    # Baseline above the threshold keeps class 0 alive even after patch K is removed.
    res = deletion_curve(model, images, first, P, baseline=torch.full((3, 1, 1), 0.9),
                         labels=torch.zeros(3, dtype=torch.long))
    assert res.accuracy.min() == 1.0
    wrong = deletion_curve(model, images, first, P, labels=torch.ones(3, dtype=torch.long))
    assert wrong.base_prob.max() < 0.5 and wrong.accuracy.min() == 1.0  # removed K -> class 1


def _small_cnn():
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(8 * 16, 5),
    ).eval()


@pytest.mark.parametrize("order", ["most", "least"])
@pytest.mark.parametrize("baseline", ["mean", 0.0])
def test_batched_deletion_equals_naive_loop(order, baseline):
    model = _small_cnn()
    torch.manual_seed(4)
    images = torch.randn(5, 3, 16, 16)
    scores = torch.randn(5, 16)
    scores[0, :4] = 0.0  # ties must be broken the same way (by patch index)
    fill = {"mean": lambda im: im.mean((1, 2), keepdim=True), 0.0: lambda im: torch.zeros(())}[baseline]
    ref_acc, ref_drop = naive_deletion(model, images, scores, 4, order, DEFAULT_FRACTIONS, fill)
    res = deletion_curve(model, images, scores, 4, order=order, baseline=baseline, batch_size=7)
    torch.testing.assert_close(res.accuracy, ref_acc)
    torch.testing.assert_close(res.prob_drop, ref_drop.float(), atol=1e-5, rtol=1e-4)
    assert res.num_removed == tuple(int(math.floor(f * 16 + 0.5)) for f in DEFAULT_FRACTIONS)


@pytest.mark.parametrize("batch_size", [1, 8, 13, 1000])
def test_forward_calls_are_batched(batch_size):
    counter = CallCounter(_small_cnn())
    images, scores = torch.randn(6, 3, 16, 16), torch.randn(6, 16)
    fr = DEFAULT_FRACTIONS
    deletion_curve(counter, images, scores, 4, batch_size=batch_size)
    total = 6 * (1 + len(fr))  # originals + every masked variant
    assert counter.seen == total
    assert counter.calls == math.ceil(total / batch_size)

    counter.calls = counter.seen = 0
    mif_lif(counter, images, scores, 4, batch_size=batch_size)
    total = 6 * (1 + 2 * len(fr))  # originals shared by both curves
    assert counter.seen == total
    assert counter.calls == math.ceil(total / batch_size)


def test_auc_is_normalised_trapezoid():
    model, images, first, _ = _one_patch_setup()
    res = deletion_curve(model, images, first, P, order="least", fractions=(0.0, 0.5, 1.0))
    # LIF removes patch K only at 100%: accuracy (1, 1, 0) -> area 0.75 over span 1.
    torch.testing.assert_close(res.accuracy, torch.tensor([1.0, 1.0, 0.0]))
    assert res.auc == pytest.approx(0.75)


def test_deletion_rejects_bad_inputs():
    model, images, first, _ = _one_patch_setup()
    with pytest.raises(ValueError):
        deletion_curve(model, images, first[:, :8], P)
    with pytest.raises(ValueError):
        deletion_curve(model, images, first, P, order="middle")
    with pytest.raises(ValueError):
        deletion_curve(model, images, first, P, baseline="median")
    with pytest.raises(TypeError):
        mif_lif(model, images, first, P, order="most")


def test_per_image_tensor_baseline_equals_named_mean():
    model = _small_cnn()
    images, scores = torch.randn(4, 3, 16, 16), torch.randn(4, 16)
    full = images.mean((2, 3), keepdim=True).expand_as(images).clone()
    a = deletion_curve(model, images, scores, 4, baseline="mean")
    b = deletion_curve(model, images, scores, 4, baseline=full, batch_size=5)
    torch.testing.assert_close(a.prob, b.prob)
    with pytest.raises(ValueError):
        deletion_curve(model, images, scores, 4, baseline=torch.zeros(2, 3, 1, 1))
