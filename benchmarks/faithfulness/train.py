"""Train (or load cached) small timm models on :mod:`benchmarks.faithfulness.data`.

Checkpoints live at ``<cache_dir>/<model>_seed<k>.pt`` and hold the weights, the training
configuration and the metrics; :func:`load_or_train` re-uses one when its configuration matches
the request and regenerates it otherwise, so deleting the cache is always safe.

CLI:
    python -m benchmarks.faithfulness.train --model vit --seed 0 --steps 600
    python -m benchmarks.faithfulness.train --model all --seed 0      # every model, cached
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import DATA_VERSION, SyntheticObjects
from .models import MODEL_FACTORIES, build_model, count_parameters

__all__ = ["TrainConfig", "DEFAULTS", "train", "load_or_train", "evaluate", "checkpoint_path", "main"]

DEFAULT_CACHE = "benchmarks/cache"
TEST_SEED = 0  # one fixed test set, shared by every model and training seed


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained checkpoint (compared when re-using a cache)."""

    model: str
    seed: int
    steps: int = 500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    num_classes: int = 8
    image_size: int = 64
    train_size: int = 8192
    test_size: int = 2048
    data_version: int = DATA_VERSION


# Per-model budgets. On the shared 2-core CPU a step takes ~1-3 s, so the benchmark's checkpoints
# were trained on the lent GPU (benchmarks/gpu_run.sh); the cache key is this config, not the device.
DEFAULTS: dict[str, dict] = {name: dict(steps=1500, batch_size=128) for name in ("vit", "eva02", "mixer", "siglip")}


def checkpoint_path(model_name: str, seed: int, cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """Where the checkpoint of ``model_name`` trained with ``seed`` is cached.

    Args:
        model_name: key of ``MODEL_FACTORIES``.
        seed: training seed.
        cache_dir: cache folder (git-ignored).

    Returns:
        ``<cache_dir>/<model_name>_seed<seed>.pt``.

    Example:
        >>> checkpoint_path("vit", 0).name
        'vit_seed0.pt'
    """
    return Path(cache_dir) / f"{model_name}_seed{seed}.pt"


def _config(model_name: str, seed: int, steps: int | None, batch_size: int | None, **overrides) -> TrainConfig:
    opts = {**DEFAULTS.get(model_name, {}), **{k: v for k, v in overrides.items() if v is not None}}
    if steps is not None:
        opts["steps"] = steps
    if batch_size is not None:
        opts["batch_size"] = batch_size
    return TrainConfig(model=model_name, seed=seed, **opts)


def _lr_lambda(cfg: TrainConfig):
    """Linear warm-up then cosine decay to zero, as a multiplier of the base lr."""
    warmup = max(1, int(cfg.warmup_frac * cfg.steps))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))

    return f


def _train_data(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    # A pre-rendered pool (rendering costs about as much as a training step); horizontal flips
    # in the loop double its variety. Every shape is mirror-symmetric, so flips keep the label.
    ds = SyntheticObjects(cfg.train_size, cfg.seed, cfg.image_size, cfg.num_classes, split="train")
    x, y, _ = ds.tensors()
    return x, y


def _batches(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig):
    """Endless stream of shuffled, randomly flipped batches, deterministic from cfg.seed."""
    gen = torch.Generator().manual_seed(cfg.seed)
    while True:
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(perm) - cfg.batch_size + 1, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            yield xb, y[idx]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256, device="cpu") -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``.

    Args:
        model: classifier; switched to eval mode (and left there).
        x: images (N, 3, H, W), normalised.
        y: labels (N,).
        batch_size: evaluation batch size.
        device: device to run on.

    Returns:
        Accuracy in [0, 1].

    Example:
        >>> from benchmarks.faithfulness.data import make_batch
        >>> x, y, _ = make_batch(8, seed=0, split="test")
        >>> 0.0 <= evaluate(build_model("vit", seed=0), x, y) <= 1.0
        True
    """
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device))
        correct += (logits.argmax(-1).cpu() == y[i : i + batch_size]).sum().item()
    return correct / max(1, len(x))


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )


def _fit(model, cfg: TrainConfig, x, y, device, progress: bool) -> float:
    """The optimisation loop; returns the mean loss over the last 10% of steps."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "pos_embed" in n]
    # Norm gains, biases and embeddings are not weight-decayed (standard ViT recipe).
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    tail, tail_start = [], int(0.9 * cfg.steps)
    bar = _progress(progress)
    task = bar.add_task(f"{cfg.model} seed {cfg.seed}", total=cfg.steps, info="") if bar else None
    if bar:
        bar.start()
    try:
        model.train()
        for step, (xb, yb) in zip(range(cfg.steps), _batches(x, y, cfg)):
            loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # early ViT steps can spike
            opt.step()
            sched.step()
            if step >= tail_start:
                tail.append(loss.item())
            if bar and (step % 10 == 0 or step == cfg.steps - 1):
                bar.update(task, completed=step + 1, info=f"loss {loss.item():.3f}")
                if not bar.console.is_terminal and step % 50 == 0:
                    # rich draws nothing live when piped; leave a trace in logs instead.
                    bar.console.print(f"{cfg.model} step {step}/{cfg.steps} loss {loss.item():.3f}")
    finally:
        if bar:
            bar.stop()
    return sum(tail) / max(1, len(tail))


def train(
    model_name: str,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    device: str = "cpu",
    progress: bool = False,
    **overrides,
) -> tuple[torch.nn.Module, dict]:
    """Train a model from scratch, evaluate it and (if ``cache_dir``) save the checkpoint.

    Args:
        model_name: key of ``MODEL_FACTORIES`` ("vit", "eva02", "mixer", "siglip").
        seed: seeds the initialisation, the training data and the batch order.
        steps: optimisation steps (default: ``DEFAULTS[model_name]``).
        batch_size: batch size (default 128).
        cache_dir: where to write ``<model>_seed<k>.pt``; ``None`` writes nothing.
        device: torch device.
        progress: show a rich progress bar.
        **overrides: other :class:`TrainConfig` fields (lr, train_size, test_size, ...).

    Returns:
        ``(model in eval mode, metrics)``; metrics holds ``test_acc``, ``train_loss``,
        ``train_time_s`` (wall), ``train_cpu_s`` (process CPU time), ``params`` and the config.

    Example:
        >>> model, metrics = train("vit", seed=0, steps=2, batch_size=8, train_size=16,
        ...                        test_size=16, cache_dir=None)
        >>> sorted(metrics)[:3]
        ['config', 'params', 'test_acc']
    """
    if device == "cpu":
        torch.set_num_threads(2)  # the benchmark machine has two cores; more threads only thrash
    cfg = _config(model_name, seed, steps, batch_size, **overrides)
    model = build_model(cfg.model, num_classes=cfg.num_classes, img_size=cfg.image_size, seed=cfg.seed).to(device)
    x, y = _train_data(cfg)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_loss = _fit(model, cfg, x, y, device, progress)
    # CPU seconds too: on a shared machine wall time measures the neighbours, CPU time the job.
    train_time, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    xt, yt, _ = SyntheticObjects(cfg.test_size, TEST_SEED, cfg.image_size, cfg.num_classes, split="test").tensors()
    metrics = {
        "test_acc": evaluate(model, xt, yt, device=device),
        "train_loss": train_loss,
        "train_time_s": train_time,
        "train_cpu_s": train_cpu,
        "params": count_parameters(model),
        "config": dataclasses.asdict(cfg),
    }
    if cache_dir is not None:
        path = checkpoint_path(cfg.model, cfg.seed, cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "metrics": metrics, "config": metrics["config"]}, path)
    return model.eval(), metrics


def load_or_train(
    model_name: str,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    cache_dir: str | Path = DEFAULT_CACHE,
    device: str = "cpu",
    progress: bool = False,
    **overrides,
) -> tuple[torch.nn.Module, dict]:
    """Load the cached checkpoint if it matches the requested config, else train and cache it.

    Args:
        model_name: key of ``MODEL_FACTORIES``.
        seed: training seed.
        steps: optimisation steps (default: ``DEFAULTS[model_name]``).
        batch_size: batch size (default 128).
        cache_dir: cache folder.
        device: torch device.
        progress: show a progress bar when training.
        **overrides: other :class:`TrainConfig` fields.

    Returns:
        ``(model in eval mode, metrics)`` as in :func:`train`; ``metrics["cached"]`` tells
        whether the checkpoint was re-used.

    Example:
        >>> model, metrics = load_or_train("vit", seed=0)   # doctest: +SKIP
    """
    cfg = _config(model_name, seed, steps, batch_size, **overrides)
    path = checkpoint_path(model_name, seed, cache_dir)
    if path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("config") == dataclasses.asdict(cfg):
            model = build_model(model_name, num_classes=cfg.num_classes, img_size=cfg.image_size)
            model.load_state_dict(ckpt["state_dict"])
            return model.to(device).eval(), {**ckpt["metrics"], "cached": True}
    model, metrics = train(model_name, seed, steps, batch_size, cache_dir, device, progress, **overrides)
    return model, {**metrics, "cached": False}


def main(argv: list[str] | None = None) -> None:
    """CLI entry point; see the module docstring.

    Args:
        argv: argument list (default ``sys.argv[1:]``).

    Returns:
        None; prints one line of metrics per model.

    Example:
        >>> main(["--model", "vit", "--seed", "0"])  # doctest: +SKIP
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit", choices=[*MODEL_FACTORIES, "all"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE)
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="retrain even if a matching checkpoint exists")
    args = p.parse_args(argv)
    from rich.console import Console

    console = Console()
    names = list(MODEL_FACTORIES) if args.model == "all" else [args.model]
    for name in names:
        fn = train if args.force else load_or_train
        _, m = fn(name, args.seed, args.steps, args.batch_size, args.cache_dir, args.device, progress=True, lr=args.lr)
        console.print(
            f"[bold]{name}[/] seed {args.seed}: test acc {m['test_acc']:.4f}  train loss {m['train_loss']:.3f}  "
            f"time {m['train_time_s']:.0f}s (cpu {m.get('train_cpu_s', float('nan')):.0f}s)  params {m['params']:,}  steps {m['config']['steps']}"
            + ("  (cached)" if m.get("cached") else "")
        )


if __name__ == "__main__":
    main()
