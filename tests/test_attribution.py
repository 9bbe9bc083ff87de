"""libra_fx.attribute: shapes, known answers, completeness across architectures, cost (one forward,
one backward), and the plain/Libra switch. Random weights only; small images (32×32, patch 8)."""
from __future__ import annotations

from dataclasses import dataclass

import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import libra_fx
from libra_fx.errors import UnknownMethodError
from libra_fx.attribution import METHODS, attribute
from libra_fx.blocks import discover_block_names

from .conftest import random_timm

warnings.filterwarnings("ignore", message=".*unbalanced.*")

TOKEN_METHODS = sorted(METHODS)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_every_method_shapes_on_tiny_vit(balanced_vit, image, method):
    options = {"steps": 4} if method == "integrated_gradients" else {}
    result = attribute(balanced_vit, image, torch.tensor([1, 2]), method=method, **options)
    assert result.method == method and result.libra
    assert result.token_scores.shape == (2, 16)
    assert result.image_map.shape == (2, 32, 32)
    assert result.score.shape == (2,)
    assert torch.isfinite(result.image_map).all() and torch.isfinite(result.token_scores).all()
    if result.input_attr is not None:
        assert result.input_attr.shape == image.shape
    complete = method == "fullgrad"
    assert (result.completeness_error is not None) == complete
    assert (result.bias_attr is not None) == method.startswith("fullgrad")


def test_plain_module_is_transformed_on_the_fly(vit, image):
    result = attribute(vit, image, 0, method="fullgrad")
    # fp32: judge the absolute error against the batch's score scale (one score may be ~0)
    absolute = result.completeness_error * result.score.abs()
    assert absolute.max() < 1e-5 * result.score.abs().max()
    assert not libra_fx.is_transformed(vit)


def test_image_map_is_a_density(balanced_vit, image):
    """Token maps are spread over their pixels: summing the map gives the token scores' total."""
    result = attribute(balanced_vit, image, 0, method="fullgrad+", upsample="nearest")
    torch.testing.assert_close(result.image_map.sum((1, 2)), result.token_scores.sum(1))


def test_unknown_method_and_option(balanced_vit, image):
    with pytest.raises(UnknownMethodError, match="unknown attribution method 'fulgrad' .*did you mean 'fullgrad'"):
        attribute(balanced_vit, image, 0, method="fulgrad")
    with pytest.raises(UnknownMethodError, match="known methods: .*rollout"):
        attribute(balanced_vit, image, 0, method="lrp")
    with pytest.raises(libra_fx.LibraError, match="no option"):
        attribute(balanced_vit, image, 0, method="fullgrad", steps=3)


# --------------------------------------------------------------------------- known answers


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double().eval()
    return model, torch.randn(3, 3, 4, 4, dtype=torch.float64)


def test_linear_model_known_answers(linear):
    model, x = linear
    W, b = model[1].weight, model[1].bias
    target = 2
    row = W[target].detach().view(1, 3, 4, 4)
    logit = model(x)[:, target].detach()
    grad = attribute(model, x, target, method="gradient")
    torch.testing.assert_close(grad.input_attr, row.expand_as(x))
    ixg = attribute(model, x, target, method="input_x_gradient")
    torch.testing.assert_close(ixg.input_attr, x * row)
    ig = attribute(model, x, target, method="integrated_gradients", steps=7, internal_batch_size=5)
    torch.testing.assert_close(ig.input_attr, x * row)  # IG of a linear map is IxG at any step count
    fg = attribute(model, x, target, method="fullgrad")
    torch.testing.assert_close(fg.input_attr.flatten(1).sum(1) + fg.bias_attr, logit)
    torch.testing.assert_close(fg.bias_attr, b[target].detach().expand(3))
    torch.testing.assert_close(fg.score, logit)
    assert fg.completeness_error.max() < 1e-12


def test_integrated_gradients_baseline_and_chunks(balanced_vit, image):
    baseline = torch.full_like(image, 0.5)
    whole = attribute(balanced_vit, image, 3, method="integrated_gradients", steps=6, baseline=baseline)
    chunked = attribute(balanced_vit, image, 3, method="integrated_gradients", steps=6, baseline=baseline,
                        internal_batch_size=4)
    torch.testing.assert_close(whole.input_attr, chunked.input_attr)


def test_block_methods_need_blocks(linear):
    model, x = linear
    with pytest.raises(libra_fx.LibraError, match="blocks"):
        attribute(model, x, 0, method="fullgrad+")


# --------------------------------------------------------------------------- completeness

#: (timm name, kwargs, input size, batch): small sizes, depth reduced where the factory allows it
ZOO = [
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2), 32, 2),
    ("eva02_tiny_patch14_224", dict(img_size=32, patch_size=8, depth=2), 32, 2),
    ("mixer_s16_224", dict(img_size=32), 32, 2),
    ("deit3_small_patch16_224", dict(img_size=32, patch_size=8, depth=2), 32, 2),
    ("beitv2_base_patch16_224", dict(img_size=32, patch_size=8, depth=2), 32, 2),
    ("vit_base_patch16_siglip_224", dict(img_size=32, patch_size=8, depth=2), 32, 2),
    ("flexivit_small", dict(img_size=32, patch_size=8, depth=2), 32, 2),
    # fp64 depthwise convolutions are slow on CPU: one block per stage, 16×16
    ("mambaout_femto", dict(depths=(1, 1, 1, 1)), 16, 1),
]


@pytest.mark.parametrize("name,kwargs,size,batch", ZOO, ids=[z[0] for z in ZOO])
def test_libra_fullgrad_is_complete(name, kwargs, size, batch):
    model = random_timm(name, torch.float64, **kwargs)
    x = torch.randn(batch, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    balanced = libra_fx.transform(model)
    libra = attribute(balanced, x, 3, method="fullgrad")
    plain = attribute(balanced, x, 3, method="fullgrad", libra=False)
    print(f"\n{name}: FullGrad CE plain {plain.completeness_error.max():.2e}  "
          f"Libra {libra.completeness_error.max():.2e}")
    assert libra.completeness_error.max() < 1e-5
    torch.testing.assert_close(libra.score, plain.score)  # same forward, only the backward differs
    plus = attribute(balanced, x, 3, method="fullgrad+")  # not complete by design
    assert torch.isfinite(plus.image_map).all() and plus.image_map.shape == (batch, size, size)
    assert len(plus.blocks) == len(discover_block_names(balanced))


def test_libra_flag_changes_the_attribution(balanced_vit, image):
    libra = attribute(balanced_vit, image, 0, method="fullgrad+")
    plain = attribute(balanced_vit, image, 0, method="fullgrad+", libra=False)
    assert not torch.allclose(libra.token_scores, plain.token_scores)
    torch.testing.assert_close(libra.score, plain.score)


# --------------------------------------------------------------------------- cost


class ConvCounter(TorchDispatchMode):
    """Counts convolution forwards and backwards (the patch embedding runs once per pass) and records
    which gradients each convolution backward computed."""

    def __init__(self):
        super().__init__()
        self.forward = self.backward = 0
        self.weight_grads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.convolution.default:
            self.forward += 1
        elif func is torch.ops.aten.convolution_backward.default:
            self.backward += 1
            self.weight_grads.append(args[-1][1])  # output_mask = (input, weight, bias)
        return func(*args, **kwargs)


def test_one_forward_one_backward_on_12_blocks():
    model = random_timm("vit_tiny_patch16_224", img_size=32, patch_size=8)  # 12 blocks
    balanced = libra_fx.transform(model)
    x = torch.randn(2, 3, 32, 32)
    for method in ("fullgrad+", "xgradcam+"):
        with ConvCounter() as counter:
            result = attribute(balanced, x, 0, method=method)
        assert len(result.blocks) == 12
        assert (counter.forward, counter.backward) == (1, 1), method
        assert counter.weight_grads == [False]  # no weight gradient is ever computed


# --------------------------------------------------------------------------- attention baselines


def test_rollout_reads_sdpa_and_softmax_alike(vit, image):
    """The fused (sdpa) graph and the explicit softmax graph give the same attention maps."""
    fused = {m: attribute(vit, image, 0, method=m).token_scores for m in ("rollout", "raw_attention")}
    explicit = random_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
    for block in explicit.blocks:
        block.attn.fused_attn = False
    for method, scores in fused.items():
        torch.testing.assert_close(attribute(explicit, image, 0, method=method).token_scores, scores)
    # rows of a rollout are distributions: the CLS row over patch tokens is positive and below 1
    assert (fused["rollout"] > 0).all() and (fused["rollout"].sum(1) < 1).all()


def test_explicit_blocks(balanced_vit, image):
    result = attribute(balanced_vit, image, 0, method="gradcam+", blocks=["blocks.1"])
    assert result.blocks == ["blocks.1"]
    last = attribute(balanced_vit, image, 0, method="gradcam")
    torch.testing.assert_close(result.token_scores, last.token_scores)
    with pytest.raises(libra_fx.LibraError, match="no gradient-carrying node"):
        attribute(balanced_vit, image, 0, method="gradcam+", blocks=["nope.0"])


def test_cnn_feature_maps(image):
    """Block inputs of a CNN are (B, C, h, w) maps: channels summed, upsampled; no token scores."""
    model = random_timm("mambaout_femto", depths=(1, 1, 1, 1))
    result = attribute(model, image[:1], 0, method="gradcam+")
    assert result.token_scores is None and result.image_map.shape == (1, 32, 32)
    assert result.blocks == ["stages.0.blocks.0", "stages.1.blocks.0", "stages.2.blocks.0", "stages.3.blocks.0"]


@pytest.mark.slow  # torch.compile on CPU: about a minute
def test_compiled_matches_eager(balanced_vit, image):
    eager = attribute(balanced_vit, image, 3, method="fullgrad+")
    compiled = attribute(balanced_vit, image, 3, method="fullgrad+", compiled=True)
    torch.testing.assert_close(compiled.image_map, eager.image_map, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- structured outputs


@dataclass
class _FeaturesThenLogits:
    features: torch.Tensor
    logits: torch.Tensor


class _Structured(nn.Module):
    """Returns a dataclass whose FIRST tensor is not the logits (as many ModelOutputs do)."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(6, 4), nn.Linear(4, 3)

    def forward(self, x):
        features = torch.relu(self.body(x))
        return _FeaturesThenLogits(features, self.head(features))


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient", "integrated_gradients", "fullgrad"])
def test_every_method_explains_the_logits_field(method):
    torch.manual_seed(0)
    model, x = _Structured().eval(), torch.randn(2, 6)
    result = attribute(model, x, 2, method=method)
    torch.testing.assert_close(result.score, model(x).logits[:, 2].detach())
