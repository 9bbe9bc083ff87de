"""Where the text models' checkpoints live and how they load (torch + transformers only, so lxt's
venv can load them too)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .models import build_model

DEFAULT_CACHE = Path("benchmarks/cache")  # git-ignored


def checkpoint_path(model: str, seed: int, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Where the checkpoint of ``model`` trained with ``seed`` is cached.

    Args:
        model: key of :data:`~benchmarks.text_faithfulness.models.MODELS`.
        seed: training seed.
        cache_dir: the (git-ignored) cache folder.

    Returns:
        ``<cache_dir>/text_<model>_seed<seed>.pt``.

    Example:
        >>> checkpoint_path("llama", 1).name
        'text_llama_seed1.pt'
    """
    return Path(cache_dir) / f"text_{model}_seed{seed}.pt"


def load_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    """Load a checkpoint file, in any transformers version.

    Args:
        path: a file written by :func:`benchmarks.text_faithfulness.train.load_or_train`.

    Returns:
        ``(HF model in eval mode, checkpoint dict)``.

    Example:
        >>> model, ckpt = load_checkpoint(checkpoint_path("bert", 0))  # doctest: +SKIP
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return model_from(ckpt), ckpt


def model_from(ckpt: dict) -> nn.Module:
    """The HF model of a loaded checkpoint dict.

    Args:
        ckpt: dict with ``train`` (the training configuration) and ``state_dict``.

    Returns:
        The model in eval mode.

    Example:
        >>> model = model_from(torch.load(checkpoint_path("bert", 0), weights_only=False))  # doctest: +SKIP
    """
    model = build_model(ckpt["train"]["model"], 0)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
