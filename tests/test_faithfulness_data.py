"""Fast checks of the faithfulness benchmark's synthetic data, model factories and trainer."""

import math

import pytest
import torch

from benchmarks.faithfulness.data import (
    CLASS_SHAPES,
    PALETTE,
    SyntheticObjects,
    class_names,
    denormalize,
    make_batch,
    two_object_images,
)
from benchmarks.faithfulness.models import MODEL_FACTORIES, build_model
from benchmarks.faithfulness.train import train


def _class_rgb(label: int) -> torch.Tensor:
    colour = list(PALETTE)[label // len(CLASS_SHAPES)]
    return torch.tensor(PALETTE[colour])


def test_make_batch_is_deterministic_from_seed():
    a = make_batch(16, seed=3)
    b = make_batch(16, seed=3)
    c = make_batch(16, seed=4)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])


def test_splits_and_step_seeds_are_independent():
    train_x = make_batch(8, seed=0, split="train")[0]
    test_x = make_batch(8, seed=0, split="test")[0]
    step_x = make_batch(8, seed=(0, 1))[0]
    assert not torch.equal(train_x, test_x)
    assert not torch.equal(train_x, step_x)


def test_shapes_dtypes_and_label_range():
    x, y, m = make_batch(16, seed=0, num_classes=8)
    assert x.shape == (16, 3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 8
    assert m.shape == (16, 64, 64) and m.dtype == torch.bool
    raw = make_batch(16, seed=0, normalized=False)[0]
    assert raw.min() >= 0 and raw.max() <= 1
    assert torch.allclose(denormalize(x), raw, atol=1e-5)


def test_mask_marks_the_decisive_object_in_its_class_colour():
    x, y, m = make_batch(64, seed=1, normalized=False)
    for img, label, mask in zip(x, y, m):
        area = int(mask.sum())
        assert area > 30, "decisive object too small to matter"
        # Mean colour under the mask is the class colour (up to brightness jitter and grain).
        mean_rgb = img[:, mask].mean(1)
        target = _class_rgb(int(label))
        cos = torch.nn.functional.cosine_similarity(mean_rgb, target, dim=0)
        assert cos > 0.97, (class_names()[int(label)], mean_rgb, target)
        # ... and the pixels just outside the object are not (it is a tight mask).
        ring = _dilate(mask) & ~mask
        assert torch.nn.functional.cosine_similarity(img[:, ring].mean(1), target, dim=0) < cos


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    pooled = torch.nn.functional.max_pool2d(mask[None, None].float(), 3, stride=1, padding=1)
    return pooled[0, 0].bool()


def test_no_distractor_is_a_class_object():
    # Decoys share a class colour or a class shape, never both: only the decisive object
    # carries the label, so a correct classifier has to look at it.
    from benchmarks.faithfulness import data

    layout, labels = data._sample_layout(
        data._rng(0, "train"), 200, 64, 8, 1, 5, data._default_radius(64), colour_decoy_p=0.3
    )
    n_col = 8 // len(CLASS_SHAPES)
    is_class = (layout.shape < len(CLASS_SHAPES)) & (layout.colour < n_col)
    assert is_class[:, 0].all() and layout.present[:, 0].all()
    assert not (is_class[:, 1:] & layout.present[:, 1:]).any()
    assert (layout.shape[:, 0] + len(CLASS_SHAPES) * layout.colour[:, 0] == labels[:, 0]).all()
    # Both kinds of decoy occur when colour decoys are switched on.
    decoys = layout.present[:, 1:]
    assert ((layout.shape[:, 1:] >= len(CLASS_SHAPES)) & (layout.colour[:, 1:] < n_col) & decoys).any()
    assert ((layout.shape[:, 1:] < len(CLASS_SHAPES)) & decoys).any()
    x, _, _ = make_batch(4, seed=0, colour_decoy_p=0.5)
    assert x.shape == (4, 3, 64, 64)


def test_dataset_prefix_property_and_item_format():
    small = SyntheticObjects(10, seed=5, split="val")
    large = SyntheticObjects(70, seed=5, split="val")  # spans two render chunks
    for i in (0, 9):
        xs, ys, ms = small[i]
        xl, yl, ml = large[i]
        assert torch.equal(xs, xl) and ys == yl and torch.equal(ms, ml)
    x, y, m = large[69]
    assert x.shape == (3, 64, 64) and isinstance(y, int) and m.dtype == torch.bool
    with pytest.raises(IndexError):
        large[70]
    xt, yt, mt = small.tensors()
    assert xt.shape == (10, 3, 64, 64) and torch.equal(xt[3], small[3][0])


def test_two_object_images_have_disjoint_masks_of_different_classes():
    x, y, m = two_object_images(32, seed=0, normalized=False)
    assert x.shape == (32, 3, 64, 64) and y.shape == (32, 2) and m.shape == (32, 2, 64, 64)
    assert bool((y[:, 0] != y[:, 1]).all())
    assert not bool((m[:, 0] & m[:, 1]).any())
    assert bool((m.sum((2, 3)) > 30).all())
    for img, labels, masks in zip(x, y, m):
        for label, mask in zip(labels, masks):
            mean_rgb = img[:, mask].mean(1)
            assert torch.nn.functional.cosine_similarity(mean_rgb, _class_rgb(int(label)), dim=0) > 0.97


def test_other_sizes_and_class_counts():
    x, y, m = make_batch(4, seed=0, image_size=32, num_classes=16)
    assert x.shape == (4, 3, 32, 32) and m.shape == (4, 32, 32) and int(y.max()) < 16
    with pytest.raises(ValueError):
        make_batch(2, seed=0, num_classes=6)


@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_model_factories_build_timm_models(name):
    model = build_model(name, num_classes=8, seed=0)
    assert type(model).__module__.startswith("timm.")
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 8)


def test_one_training_step_gives_finite_loss():
    model, metrics = train("vit", seed=0, steps=1, batch_size=4, train_size=8, test_size=8, cache_dir=None)
    assert math.isfinite(metrics["train_loss"])
    assert 0.0 <= metrics["test_acc"] <= 1.0
    assert not model.training


@pytest.mark.slow
def test_faithfulness_pipeline_smoke(tmp_path):
    """The whole benchmark on tiny data: one training step, four images, one model and seed."""
    from benchmarks.faithfulness.evaluate import main

    main(["--models", "vit", "--seeds", "0", "--images", "4", "--steps", "1",
          "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "results")])
    table = (tmp_path / "results" / "faithfulness.md").read_text()
    assert "fullgrad+ (Libra)" in table and "AttnLRP-style IxG" in table
    for picture in ("faithfulness_srg.png", "class_discrimination.png"):
        assert (tmp_path / "results" / picture).stat().st_size > 1000
