"""The transformed module is an ordinary nn.Module: Captum and pytorch-grad-cam work on it unchanged.

Hook-based tools need a module to hook; a transformed graph calls almost none (LayerNorm, Linear …
are traced into functional calls), so :func:`libra_fx.attribution.hook_points` inserts an identity
at each block input. Random weights only.
"""
from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

from libra_fx.attribution import attribute, hook_points

captum_attr = pytest.importorskip("captum.attr")
grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

warnings.filterwarnings("ignore", message=".*unbalanced.*")


def test_captum_input_x_gradient_matches(balanced_vit, image):
    target = torch.tensor([1, 4])
    theirs = captum_attr.InputXGradient(balanced_vit).attribute(image, target=target)
    ours = attribute(balanced_vit, image, target, method="input_x_gradient")
    torch.testing.assert_close(theirs, ours.input_attr)


def test_captum_integrated_gradients_matches(balanced_vit, image):
    # Captum's right Riemann sum is the rule attribute() uses
    ig = captum_attr.IntegratedGradients(balanced_vit)
    theirs = ig.attribute(image, target=2, n_steps=8, method="riemann_right", internal_batch_size=8)
    ours = attribute(balanced_vit, image, 2, method="integrated_gradients", steps=8)
    torch.testing.assert_close(theirs, ours.input_attr, rtol=1e-4, atol=1e-6)


def _vit_reshape(tensor: torch.Tensor, prefix: int = 1, grid: int = 4) -> torch.Tensor:
    """(B, 1 + h·w, D) tokens -> (B, D, h, w) for pytorch-grad-cam."""
    patches = tensor[:, prefix:]
    return patches.reshape(patches.shape[0], grid, grid, -1).permute(0, 3, 1, 2)


def _min_max(cam: torch.Tensor) -> torch.Tensor:
    cam = cam - cam.flatten(1).min(1).values.view(-1, 1, 1)
    return cam / (1e-7 + cam.flatten(1).max(1).values.view(-1, 1, 1))


def _ours_as_gradcam_image(scores_grid: torch.Tensor, size: int) -> torch.Tensor:
    """pytorch-grad-cam's post-processing: ReLU, min-max scaling, bilinear resize, min-max again
    (once per layer, once after aggregating layers)."""
    cam = _min_max(scores_grid.clamp_min(0))
    cam = F.interpolate(cam.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    return _min_max(cam)


def test_gradcam_on_the_plain_vit(vit, image):
    """Reference use: a module of the plain model as target layer (the last block's first norm)."""
    with grad_cam.GradCAM(vit, target_layers=[vit.blocks[-1].norm1], reshape_transform=_vit_reshape) as cam:
        maps = cam(input_tensor=image, targets=[ClassifierOutputTarget(0)] * 2)
    assert maps.shape == (2, 32, 32)


def test_gradcam_on_the_balanced_vit_equals_attribute(balanced_vit, image):
    hooked, points = hook_points(balanced_vit)
    assert torch.equal(hooked(image), balanced_vit(image))
    with grad_cam.GradCAM(hooked, target_layers=[points[-1]], reshape_transform=_vit_reshape) as cam:
        theirs = torch.from_numpy(cam(input_tensor=image, targets=[ClassifierOutputTarget(0)] * 2))
    ours = attribute(balanced_vit, image, 0, method="gradcam").token_scores.reshape(2, 4, 4)
    torch.testing.assert_close(theirs, _ours_as_gradcam_image(ours, 32), rtol=1e-3, atol=1e-4)


def test_gradcam_on_a_balanced_cnn():
    """A CNN captured by torch.export: no call_module left at all, hook points still work."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    hooked, points = hook_points(model, example_inputs=x)
    assert len(points) == 8  # layer1.0 … layer4.1
    with grad_cam.GradCAM(hooked, target_layers=[points[-1]]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(3)]))
    # nearest upsampling keeps the 2×2 stage map recoverable exactly: each cell is a constant block
    # of the density, scaled by the block's area in pixels
    ours = attribute(hooked, x, 3, method="gradcam", upsample="nearest")
    assert ours.token_scores is None and ours.image_map.shape == (1, 64, 64)
    cells = ours.image_map[:, ::32, ::32] * 32 * 32
    torch.testing.assert_close(theirs, _ours_as_gradcam_image(cells, 64).float(), rtol=1e-3, atol=1e-4)
