"""Resolve a model *spec* string (as typed on the command line) into a ready-to-use model.

Specs:

==============================  =====================================================
``vit_tiny_patch16_224``        a timm model (the default namespace)
``timm:NAME``                   the same, explicit
``open_clip:ARCH``              an open_clip image tower scored against text prompts
``torchvision:NAME``            a torchvision classification model
``hf:tiny-llama``               a built-in tiny Llama with a character tokenizer (offline)
``hf:MODEL_TYPE``               a tiny random ``transformers`` model of that type (``hf:gpt2``)
``hf:HUB_NAME --pretrained``    a ``transformers`` hub checkpoint and its tokenizer (downloads)
``path/to/file.py:factory``     ``factory()`` from a user file (``:factory`` optional)
==============================  =====================================================

Weights are random unless ``pretrained=True`` or ``checkpoint=PATH`` is given: nothing here
downloads anything unless asked to.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from libra_fx.errors import LibraError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Prompts an ``open_clip:`` model is scored against when the user gives none; they name the
#: shapes of the packaged default image so the maps have something to find.
DEFAULT_PROMPTS = ("a photo of a red ball", "a photo of a blue square", "a photo of a green triangle")

#: Names tried, in order, when a ``file.py`` spec gives no ``:factory``.
DEFAULT_FACTORIES = ("create_model", "build_model", "model")

#: how many missing/unexpected state-dict keys a checkpoint error names
LISTED_KEY_PROBLEMS = 3


@dataclass
class LoadedModel:
    """A model plus what the CLI needs to feed it images and name its outputs.

    Attributes:
        model: the ``nn.Module`` in eval mode.
        name: the spec it was loaded from.
        input_size: ``(C, H, W)`` the model expects.
        transform: PIL image -> ``(C, H, W)`` normalised tensor.
        target_fn: optional ``outputs -> (B,)`` score function (user files may define one).
        kind: the loader used: ``"timm"``, ``"open_clip"``, ``"torchvision"``, ``"hf"`` or ``"file"``.
        mean, std: normalisation applied by ``transform`` (to show the image un-normalised).
        labels: names of the output classes where known (CLIP: the prompts).
        pretrained: whether real weights were loaded (pretrained or checkpoint).
    """

    model: nn.Module
    name: str
    input_size: tuple[int, int, int]
    transform: Callable
    target_fn: Callable | None = None
    kind: str = "timm"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    labels: list[str] | None = None
    pretrained: bool = False
    extras: dict = field(default_factory=dict)

    def example_input(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """A random normal input of the model's size (what ``diff``/``audit`` trace with).

        Example:
            >>> load_model("resnet18", input_size=32).example_input().shape
            torch.Size([1, 3, 32, 32])
        """
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, *self.input_size, generator=gen)

    def capture_args(self) -> tuple[nn.Module, tuple, dict]:
        """What ``diff``/``audit`` transform: ``(module, example inputs, transform keywords)``.

        Images: the model on :meth:`example_input`. ``hf:`` models: the model called on
        embeddings (:class:`libra_fx.text.EmbeddingsForward`), only the embeddings attributed.

        Example:
            >>> module, inputs, kwargs = load_model("resnet18", input_size=32).capture_args()
        """
        text_model = self.extras.get("text_model")
        if text_model is not None:
            from libra_fx.text import ATTRIBUTED

            return text_model.wrapper, text_model.example_inputs(length=self.input_size[0]), {"inputs": ATTRIBUTED}
        return self.model, (self.example_input(),), {}

    def label(self, index: int) -> str:
        """Human-readable name of output ``index`` (``"class 7"`` when unknown)."""
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return f"class {index}"


# --------------------------------------------------------------------------- helpers


def parse_input_size(value: int | str | Sequence[int] | None) -> tuple[int, int, int] | None:
    """Normalise ``--input-size`` (``64``, ``"64"``, ``"96x64"``, ``"3,64,64"``) to ``(C, H, W)``.

    Example:
        >>> parse_input_size("96x64")
        (3, 96, 64)
    """
    if value is None:
        return None
    if isinstance(value, int):
        return (3, value, value)
    if isinstance(value, str):
        parts = [p for p in re.split(r"[x,\s]+", value.strip()) if p]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise LibraError(f"--input-size must look like 224, 224x224 or 3,224,224 (got {value!r})") from None
    else:
        nums = [int(v) for v in value]
    if len(nums) == 1:
        return (3, nums[0], nums[0])
    if len(nums) == 2:
        return (3, nums[0], nums[1])
    if len(nums) == 3:
        return tuple(nums)  # type: ignore[return-value]
    raise LibraError(f"--input-size must have 1 to 3 numbers (got {value!r})")


def _unknown(kind: str, name: str, candidates: Sequence[str]) -> LibraError:
    """A ``LibraError`` naming the unknown model and up to three close matches."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return LibraError(f"unknown {kind} model {name!r}{hint}")


def _imagenet_labels() -> list[str] | None:
    """ImageNet-1k class names shipped with timm (no download), or None."""
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(info.num_classes())]
    except Exception:  # an old timm or a missing data file only costs the pretty labels
        return None


def _image_transform(input_size, mean, std, crop_pct: float = 0.875, interpolation: str = "bicubic"):
    """Resize-shorter-side, centre-crop, to-tensor, normalise (the usual eval transform)."""
    from torchvision import transforms as T

    _, h, w = input_size
    scale = int(round(max(h, w) / crop_pct))
    interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}.get(
        interpolation, T.InterpolationMode.BICUBIC
    )
    return T.Compose(
        [
            T.Lambda(lambda im: im.convert("RGB")),
            T.Resize(scale, interpolation=interp),
            T.CenterCrop((h, w)),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def load_state_dict(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into ``model`` (plain state dict, or wrapped under state_dict/model/ema).

    Raises:
        LibraError: unreadable file, or keys that do not match (names a few of them).
    """
    path = Path(path)
    if not path.is_file():
        raise LibraError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LibraError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise LibraError(f"checkpoint {path} does not hold a state dict")
    # DataParallel/DDP checkpoints prefix every key; strip it so plain models load them.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        listed = LISTED_KEY_PROBLEMS
        more = f" (+{len(problems) - listed} more)" if len(problems) > listed else ""
        raise LibraError(f"checkpoint {path} does not fit the model: {', '.join(problems[:listed])}{more}")


# --------------------------------------------------------------------------- loaders


def _load_timm(name, pretrained, input_size):
    import timm
    import timm.data

    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    kwargs = {"img_size": input_size[1:]} if input_size else {}
    try:
        model = _create(timm.create_model, name, pretrained=pretrained, **kwargs)
    except TypeError:
        # CNNs take any size and reject img_size; the data config alone sets the size.
        model = _create(timm.create_model, name, pretrained=pretrained)
    cfg = timm.data.resolve_data_config({}, model=model)
    if input_size:
        cfg["input_size"] = input_size
    transform = timm.data.create_transform(**cfg)
    labels = _imagenet_labels() if getattr(model, "num_classes", None) == 1000 else None
    return LoadedModel(
        model, name, tuple(cfg["input_size"]), transform, kind="timm",
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), labels=labels,
    )


def _load_torchvision(name, pretrained, input_size):
    from torchvision import models as tvm

    available = tvm.list_models(module=tvm)  # classification models only
    if name not in available:
        raise _unknown("torchvision", name, available)
    weights = "DEFAULT" if pretrained else None
    model = _create(tvm.get_model, name, weights=weights)
    size = input_size or (3, 224, 224)
    labels = _imagenet_labels() if getattr(getattr(model, "fc", None), "out_features", 1000) == 1000 else None
    transform = _image_transform(size, IMAGENET_MEAN, IMAGENET_STD, interpolation="bilinear")
    return LoadedModel(model, name, size, transform, kind="torchvision", labels=labels)


class ClipSimilarity(nn.Module):
    """An open_clip image tower scored against fixed text prompts.

    ``forward(image)`` returns ``100 · cos(normalize(encode_image(x)), normalize(text))`` of
    shape ``(B, num_prompts)``; the text embeddings are computed once, normalised, and stored
    as a buffer, so the traced graph holds only the image path.

    Example:
        >>> wrapper = ClipSimilarity(clip_model, tokenizer, ["a dog", "a cat"])
        >>> wrapper(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 2])
    """

    def __init__(self, clip: nn.Module, tokenizer, prompts: Sequence[str], scale: float = 100.0):
        super().__init__()
        self.visual = clip.visual
        self.prompts = list(prompts)
        self.scale = scale
        with torch.no_grad():
            text = clip.encode_text(tokenizer(self.prompts))
        self.register_buffer("text_features", F.normalize(text.float(), dim=-1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.visual(image), dim=-1)
        return self.scale * features @ self.text_features.t()


def _load_open_clip(name, pretrained, input_size, prompts=None, checkpoint=None):
    import open_clip

    if name not in open_clip.list_models():
        raise _unknown("open_clip", name, open_clip.list_models())
    tag = None
    if pretrained:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if not tags:
            raise LibraError(f"open_clip has no pretrained weights for {name!r}; use --checkpoint")
        tag = tags[0]
    kwargs = {"force_image_size": input_size[1:]} if input_size else {}
    clip = _create(open_clip.create_model, name, pretrained=tag, **kwargs)
    if checkpoint:  # the checkpoint is of the full CLIP model, so text features use it too
        load_state_dict(clip, checkpoint)
    clip.eval()
    pre = clip.visual.preprocess_cfg
    size = (3, *pre["size"]) if isinstance(pre["size"], (tuple, list)) else (3, pre["size"], pre["size"])
    transform = open_clip.image_transform(size[1:], is_train=False, mean=pre["mean"], std=pre["std"])
    prompts = list(prompts or DEFAULT_PROMPTS)
    model = ClipSimilarity(clip, open_clip.get_tokenizer(name), prompts)
    return LoadedModel(
        model, f"open_clip:{name}", size, transform, kind="open_clip",
        mean=tuple(pre["mean"]), std=tuple(pre["std"]), labels=prompts,
    )


def _load_file(spec, pretrained, input_size):
    path_str, _, factory_name = spec.rpartition(":") if re.search(r"\.py:\w+$", spec) else (spec, "", "")
    path = Path(path_str)
    if not path.is_file():
        raise LibraError(f"model file not found: {path}")
    module = _import_file(path)
    names = (factory_name,) if factory_name else DEFAULT_FACTORIES
    factory = next((getattr(module, n) for n in names if callable(getattr(module, n, None))), None)
    if factory is None:
        raise LibraError(f"{path} defines no {' / '.join(names)}(); name the factory as {path}:FUNCTION")
    try:
        model = factory()
    except Exception as exc:
        raise LibraError(f"{path}:{factory.__name__}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise LibraError(f"{path}:{factory.__name__}() returned {type(model).__name__}, not an nn.Module")
    size = input_size or parse_input_size(getattr(module, "input_size", None)) or (3, 224, 224)
    mean, std = getattr(module, "mean", IMAGENET_MEAN), getattr(module, "std", IMAGENET_STD)
    return LoadedModel(
        model, spec, size, _image_transform(size, mean, std), target_fn=getattr(module, "target_fn", None),
        kind="file", mean=tuple(mean), std=tuple(std), labels=getattr(module, "labels", None),
    )


def _import_file(path: Path):
    """Import a user file as a module, turning its import-time errors into a one-liner."""
    mod_name = "_libra_user_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses & co. look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise LibraError(f"cannot import {path}: {type(exc).__name__}: {exc}") from exc
    return module


def _create(fn, name, **kwargs):
    """Call a library constructor; turn failed weight downloads into one readable line."""
    try:
        return fn(name, **kwargs)
    except TypeError:
        raise
    except Exception as exc:
        wants_weights = kwargs.get("pretrained") or kwargs.get("weights")
        why = "pretrained weights unavailable (offline?)" if wants_weights else "construction failed"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LibraError(f"cannot create {name}: {why}: {first}") from exc


def _load_hf(name, pretrained, input_size):
    from libra_fx.hf import pretrained_model, tiny_model
    from libra_fx.text import TextModel

    model, tokenizer = pretrained_model(name) if pretrained else tiny_model(name)
    length = input_size[-1] if input_size else 8  # example sequence length for diff/audit
    return LoadedModel(
        model, f"hf:{name}", (length,), tokenizer.encode, kind="hf",
        extras={"tokenizer": tokenizer, "text_model": TextModel(model)},
    )


#: namespace prefix -> loader(name, pretrained, input_size)
LOADERS: dict[str, Callable[..., LoadedModel]] = {
    "timm": _load_timm,
    "torchvision": _load_torchvision,
    "open_clip": _load_open_clip,
    "hf": _load_hf,
    "file": _load_file,
}


def split_spec(spec: str) -> tuple[str, str]:
    """Split a spec into ``(loader, name)``.

    Example:
        >>> split_spec("open_clip:ViT-S-32"), split_spec("net.py:make"), split_spec("resnet18")
        (('open_clip', 'ViT-S-32'), ('file', 'net.py:make'), ('timm', 'resnet18'))
    """
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in LOADERS and prefix != "file":
        return prefix, rest
    if re.search(r"\.py(:\w+)?$", spec):
        return "file", spec
    return "timm", spec


def load_model(
    spec: str,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    input_size: int | str | Sequence[int] | None = None,
    prompts: Sequence[str] | None = None,
) -> LoadedModel:
    """Build the model a spec names, in eval mode.

    Args:
        spec: ``NAME``, ``timm:NAME``, ``open_clip:ARCH``, ``torchvision:NAME`` or ``file.py[:factory]``.
        pretrained: download/load the library's pretrained weights (default: random weights).
        checkpoint: a state-dict file to load after construction.
        input_size: override the input size (``64``, ``"64x64"``, ``(3, 64, 64)``).
        prompts: text prompts of an ``open_clip:`` model (default: ``DEFAULT_PROMPTS``).

    Returns:
        A ``LoadedModel``.

    Raises:
        LibraError: unknown name (with close matches), missing file, bad checkpoint.

    Example:
        >>> lm = load_model("vit_tiny_patch16_224", input_size=64)
        >>> lm.input_size, lm.kind
        ((3, 64, 64), 'timm')
    """
    kind, name = split_spec(spec)
    size = parse_input_size(input_size)
    if kind == "open_clip":
        loaded = _load_open_clip(name, pretrained, size, prompts=prompts, checkpoint=checkpoint)
    else:
        loaded = LOADERS[kind](name, pretrained, size)
        if checkpoint:
            load_state_dict(loaded.model, checkpoint)
    loaded.model.eval()
    loaded.pretrained = bool(pretrained or checkpoint)
    return loaded
