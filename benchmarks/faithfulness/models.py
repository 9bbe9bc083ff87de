"""Small, randomly initialised models built from timm's own classes.

The faithfulness benchmark attributes these models, so they must be the *real* timm
architectures (the graph passes of libra_fx are exercised on timm's attention, norm, MLP,
RoPE and attention-pool code), just shrunk to train on two CPU cores in a few minutes at
64x64 with 8x8 patches (64 tokens).

Example:
    >>> from benchmarks.faithfulness.models import MODEL_FACTORIES, build_model
    >>> model = build_model("eva02", num_classes=8)
    >>> model(torch.randn(2, 3, 64, 64)).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from timm.models.eva import Eva
from timm.models.mlp_mixer import MlpMixer
from timm.models.vision_transformer import VisionTransformer

__all__ = ["MODEL_FACTORIES", "build_model", "vit", "eva02", "mixer", "siglip", "count_parameters"]

# Shared by all transformers; width and depth are the main knobs of CPU training cost.
_EMBED_DIM = 96
_DEPTH = 4
_HEADS = 4


def vit(num_classes: int = 8, img_size: int = 64, patch_size: int = 8, **kwargs) -> VisionTransformer:
    """Plain ViT (CLS token pooling, GELU MLP, LayerNorm), as in DeiT/ViT-B but tiny.

    Args:
        num_classes: classifier outputs.
        img_size: input side length.
        patch_size: patch side length.
        **kwargs: overrides passed to ``VisionTransformer``.

    Returns:
        A randomly initialised ``timm.models.vision_transformer.VisionTransformer``.

    Example:
        >>> vit(num_classes=8).global_pool
        'token'
    """
    cfg = dict(
        img_size=img_size, patch_size=patch_size, num_classes=num_classes,
        embed_dim=_EMBED_DIM, depth=_DEPTH, num_heads=_HEADS, mlp_ratio=4.0,
        global_pool="token", class_token=True,
    )
    return VisionTransformer(**{**cfg, **kwargs})


def eva02(num_classes: int = 8, img_size: int = 64, patch_size: int = 8, **kwargs) -> Eva:
    """EVA02-style model: SwiGLU MLP, 2-D RoPE inside attention, abs pos-emb, CLS pooling.

    Args:
        num_classes: classifier outputs.
        img_size: input side length.
        patch_size: patch side length.
        **kwargs: overrides passed to ``timm.models.eva.Eva``.

    Returns:
        A randomly initialised ``timm.models.eva.Eva``.

    Example:
        >>> eva02().rope is not None
        True
    """
    cfg = dict(
        img_size=img_size, patch_size=patch_size, num_classes=num_classes,
        embed_dim=_EMBED_DIM, depth=_DEPTH, num_heads=_HEADS,
        # EVA02 uses mlp_ratio 4*2/3 with SwiGLU so the MLP costs about as much as a GELU MLP.
        mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True,
        use_rot_pos_emb=True, use_abs_pos_emb=True, global_pool="token",
        ref_feat_shape=(img_size // patch_size, img_size // patch_size),
    )
    return Eva(**{**cfg, **kwargs})


def mixer(num_classes: int = 8, img_size: int = 64, patch_size: int = 8, **kwargs) -> MlpMixer:
    """MLP-Mixer: token-mixing and channel-mixing GELU MLPs, LayerNorm, average pooling.

    Args:
        num_classes: classifier outputs.
        img_size: input side length.
        patch_size: patch side length.
        **kwargs: overrides passed to ``timm.models.mlp_mixer.MlpMixer``.

    Returns:
        A randomly initialised ``timm.models.mlp_mixer.MlpMixer``.

    Example:
        >>> mixer().global_pool
        'avg'
    """
    cfg = dict(
        img_size=img_size, patch_size=patch_size, num_classes=num_classes,
        embed_dim=_EMBED_DIM, num_blocks=_DEPTH + 2, mlp_ratio=(0.5, 4.0),
    )
    return MlpMixer(**{**cfg, **kwargs})


def siglip(num_classes: int = 8, img_size: int = 64, patch_size: int = 8, **kwargs) -> VisionTransformer:
    """SigLIP-style ViT: no CLS token, attention pooling with a learned query (MAP head).

    Args:
        num_classes: classifier outputs.
        img_size: input side length.
        patch_size: patch side length.
        **kwargs: overrides passed to ``VisionTransformer``.

    Returns:
        A randomly initialised ``VisionTransformer`` with ``global_pool='map'``.

    Example:
        >>> siglip().attn_pool is not None
        True
    """
    cfg = dict(
        img_size=img_size, patch_size=patch_size, num_classes=num_classes,
        embed_dim=_EMBED_DIM, depth=_DEPTH, num_heads=_HEADS, mlp_ratio=4.0,
        global_pool="map", class_token=False,
        # SigLIP uses tanh-approximated GELU; keeps that gate spelling in the benchmark.
        act_layer=partial(torch.nn.GELU, approximate="tanh"),
    )
    return VisionTransformer(**{**cfg, **kwargs})


MODEL_FACTORIES: dict[str, Callable[..., torch.nn.Module]] = {
    "vit": vit,
    "eva02": eva02,
    "mixer": mixer,
    "siglip": siglip,
}


def build_model(name: str, num_classes: int = 8, img_size: int = 64, seed: int | None = None, **kwargs):
    """Build a registered model, optionally with a seeded initialisation.

    Args:
        name: key of :data:`MODEL_FACTORIES`.
        num_classes: classifier outputs.
        img_size: input side length.
        seed: if given, the initial weights depend only on it (the global RNG is restored).
        **kwargs: overrides for the factory.

    Returns:
        The model in train mode.

    Example:
        >>> a, b = build_model("vit", seed=0), build_model("vit", seed=0)
        >>> torch.equal(a.head.weight, b.head.weight)
        True
    """
    if name not in MODEL_FACTORIES:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(MODEL_FACTORIES)}")
    factory = MODEL_FACTORIES[name]
    if seed is None:
        return factory(num_classes=num_classes, img_size=img_size, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(num_classes=num_classes, img_size=img_size, **kwargs)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters.

    Args:
        model: any module.

    Returns:
        The parameter count.

    Example:
        >>> count_parameters(torch.nn.Linear(2, 3))
        9
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
