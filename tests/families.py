"""The paper's model families (issue 2), small enough for CI: random weights, small images."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _timm(name: str, image_size: int, **kwargs):
    import timm

    def build():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
        head = model.get_classifier()
        if isinstance(head, nn.Linear):  # timm zero-inits some heads: every gradient would be 0
            nn.init.normal_(head.weight, std=0.5)
            nn.init.normal_(head.bias, std=0.1)
        return model, torch.randn(2, 3, image_size, image_size)
    return build


class ClipSimilarity(nn.Module):
    """100 · cos(normalize(encode_image(x)), fixed text embedding): CLIP's explained score."""

    def __init__(self, clip: nn.Module, text_embedding: torch.Tensor):
        super().__init__()
        self.clip = clip
        self.register_buffer("text", F.normalize(text_embedding, dim=-1))

    def forward(self, image):
        return 100.0 * F.normalize(self.clip.encode_image(image), dim=-1) @ self.text.T


def _open_clip(arch: str, image_size: int, depth: int):
    def build():
        import open_clip
        torch.manual_seed(0)
        clip = open_clip.create_model(arch, pretrained=None, force_image_size=image_size).eval()
        clip.visual.transformer.resblocks = clip.visual.transformer.resblocks[:depth]  # CI-sized
        text = torch.randn(3, clip.visual.output_dim)
        return ClipSimilarity(clip, text).eval(), torch.randn(2, 3, image_size, image_size)
    return build


FAMILIES = {
    "vit_tiny_patch16_224": _timm("vit_tiny_patch16_224", 32, img_size=32, patch_size=8),
    "deit3_small_patch16_224": _timm("deit3_small_patch16_224", 32, img_size=32, patch_size=8, depth=4),
    "eva02_tiny_patch14_224": _timm("eva02_tiny_patch14_224", 28, img_size=28, depth=4),
    "beitv2_base_patch16_224": _timm("beitv2_base_patch16_224", 32, img_size=32, patch_size=8, depth=2),
    "flexivit_small": _timm("flexivit_small", 32, img_size=32, patch_size=8, depth=4),
    "vit_base_patch16_siglip_224": _timm("vit_base_patch16_siglip_224", 32, img_size=32, patch_size=8, depth=2),
    "mixer_s16_224": _timm("mixer_s16_224", 64, img_size=64),
    "mambaout_femto": _timm("mambaout_femto", 32),
    "open_clip:ViT-B-32": _open_clip("ViT-B-32", 64, depth=3),
}

#: families with no unbalanced op: plain gradients already complete, Libra must not change them.
COMPLETE_CNNS = {"resnet18": _timm("resnet18", 32)}
