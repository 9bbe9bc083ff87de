"""Fixtures shared by the attribution and interoperability tests: one tiny random ViT."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

import libra_fx


def random_timm(name: str, dtype=torch.float32, **kwargs) -> nn.Module:
    """A timm model with random weights, 10 classes and a non-zero head (timm zero-inits some)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval().to(dtype)
    torch.nn.init.normal_(model.get_classifier().weight, std=0.02)
    return model


@pytest.fixture(scope="module")
def vit():
    return random_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)


@pytest.fixture(scope="module")
def balanced_vit(vit):
    return libra_fx.transform(vit)


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
