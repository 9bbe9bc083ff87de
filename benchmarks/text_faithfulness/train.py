"""Train (or load cached) the tiny text models on their procedural tasks, on CPU.

Checkpoints: ``<cache_dir>/text_<model>_seed<k>.pt`` (git-ignored) with the HF config, the weights,
the training configuration and the test accuracy; reused when the configuration matches.
Fresh batches are drawn every step from a generator seeded with the training seed (no fixed pool),
with distractors masked at ``mask_prob`` so deletion by ``MASK`` stays in distribution.

    python -m benchmarks.text_faithfulness.train --model all --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.faithfulness.train import _lr_lambda

from .adapter import EmbedsModel
from .checkpoints import DEFAULT_CACHE, checkpoint_path, model_from
from .data import TASKS, Batch, make_batch
from .models import MODELS, build_model

TEST_SEED_OFFSET = 100_000  # test sequences of seed k come from generator seed 100_000 + k


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a checkpoint (compared when re-using the cache)."""

    model: str
    seed: int
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    mask_prob: float = 0.1
    version: int = 2  # bump when the data format changes: cached checkpoints are then retrained


#: per-model budgets (CPU, one thread: under a minute each on an idle core). At lr 3e-3 Llama's
#: recall circuit did not form (see data.sample_kv_train) and one BERT seed stayed at 50%.
DEFAULTS: dict[str, dict] = {"llama": dict(steps=1200), "bert": dict(steps=600)}


def config_for(model: str, seed: int, steps: int | None = None) -> TrainConfig:
    """The training configuration of ``model`` at ``seed``.

    Args:
        model: key of :data:`MODELS`.
        seed: training seed.
        steps: overrides the default budget of :data:`DEFAULTS`.

    Returns:
        :class:`TrainConfig`.

    Example:
        >>> config_for("bert", 0).steps
        600
    """
    opts = dict(DEFAULTS.get(model, {}))
    if steps is not None:
        opts["steps"] = steps
    return TrainConfig(model=model, seed=seed, **opts)


def batch_loss(wrapper: EmbedsModel, batch: Batch) -> torch.Tensor:
    """Cross-entropy of a batch: next-token loss at every supervised position when the batch has
    ``targets`` (language model), else of the explained logits against ``labels``.

    Args:
        wrapper: the model being trained.
        batch: a training :class:`Batch`.

    Returns:
        Scalar loss (with gradient).

    Example:
        >>> from .models import build_model
        >>> w = EmbedsModel(build_model("bert", 0), "bert")
        >>> float(batch_loss(w, make_batch("keyword", 8, 0))) > 0
        True
    """
    embeds = wrapper.model.get_input_embeddings()(batch.ids)
    if batch.targets is None:
        return F.cross_entropy(wrapper(embeds), batch.labels)
    logits = wrapper.model(inputs_embeds=embeds, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)


def train_step(wrapper: EmbedsModel, batch: Batch, opt: torch.optim.Optimizer) -> float:
    """One optimisation step (:func:`batch_loss`, gradient clipping at 1).

    Args:
        wrapper: the model (switched to train mode).
        batch: a training :class:`Batch`.
        opt: its optimiser.

    Returns:
        The loss as a float.

    Example:
        >>> from .models import build_model
        >>> w = EmbedsModel(build_model("bert", 0), "bert")
        >>> loss = train_step(w, make_batch("keyword", 8, 0), torch.optim.AdamW(w.parameters()))
    """
    wrapper.train()
    loss = batch_loss(wrapper, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(wrapper.parameters(), 1.0)
    opt.step()
    return loss.item()


@torch.no_grad()
def accuracy(wrapper: EmbedsModel, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of the explained prediction (eval mode; left there).

    Args:
        wrapper: the model.
        ids: ``(B, T)`` content ids.
        labels: ``(B,)`` answers.

    Returns:
        Accuracy in ``[0, 1]``.

    Example:
        >>> from .models import build_model
        >>> b = make_batch("keyword", 8, 0)
        >>> 0 <= accuracy(EmbedsModel(build_model("bert", 0), "bert"), b.ids, b.labels) <= 1
        True
    """
    wrapper.eval()
    return (wrapper(wrapper.embed(ids)).argmax(-1) == labels).float().mean().item()


def train(cfg: TrainConfig, log: bool = True) -> tuple[nn.Module, dict]:
    """Train ``cfg.model`` from scratch on fresh batches of its task.

    Args:
        cfg: the configuration.
        log: print the loss every 250 steps.

    Returns:
        ``(HF model in eval mode, {"test_acc", "final_loss", "train_s"})``.

    Example:
        >>> model, metrics = train(config_for("bert", 0, steps=5), log=False)
        >>> 0 <= metrics["test_acc"] <= 1
        True
    """
    spec = MODELS[cfg.model]
    wrapper = EmbedsModel(build_model(cfg.model, cfg.seed), cfg.model)
    opt = torch.optim.AdamW(wrapper.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    gen = torch.Generator().manual_seed(cfg.seed)
    start, losses = time.time(), []
    for step in range(cfg.steps):
        task = TASKS[spec.task]
        batch = (task.sample_train or task.sample)(cfg.batch_size, gen, cfg.mask_prob)
        losses.append(train_step(wrapper, batch, opt))
        sched.step()
        if log and step % 250 == 0:
            print(f"  {cfg.model} seed {cfg.seed} step {step} loss {losses[-1]:.3f}", flush=True)
    test = make_batch(spec.task, 2048, TEST_SEED_OFFSET + cfg.seed)
    metrics = {"test_acc": accuracy(wrapper, test.ids, test.labels),
               "final_loss": sum(losses[-50:]) / len(losses[-50:]), "train_s": time.time() - start}
    return wrapper.model.eval(), metrics


def load_or_train(model: str, seed: int, steps: int | None = None, cache_dir: Path = DEFAULT_CACHE,
                  log: bool = True) -> tuple[nn.Module, dict]:
    """The cached checkpoint when its configuration matches, else a freshly trained (and cached) one.

    Args:
        model: key of :data:`MODELS`.
        seed: training seed (initialisation, training data and test data).
        steps: training steps (default: :data:`DEFAULTS`).
        cache_dir: checkpoint folder.
        log: print training progress.

    Returns:
        ``(HF model in eval mode, metrics dict with test_acc, train_s)``.

    Example:
        >>> model, metrics = load_or_train("bert", seed=0)  # doctest: +SKIP
    """
    cfg = config_for(model, seed, steps)
    path = checkpoint_path(model, seed, cache_dir)
    if path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt["train"] == dataclasses.asdict(cfg):  # compared before loading: the vocabulary may differ
            return model_from(ckpt), ckpt["metrics"]
    hf, metrics = train(cfg, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train": dataclasses.asdict(cfg), "state_dict": hf.state_dict(), "metrics": metrics}, path)
    return hf, metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="train the text faithfulness models")
    parser.add_argument("--model", nargs="+", default=["all"], help=f"{sorted(MODELS)} or all")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = sorted(MODELS) if args.model == ["all"] else args.model
    for name in names:
        for seed in args.seeds:
            _, metrics = load_or_train(name, seed, args.steps, Path(args.cache_dir))
            print(f"{name} seed {seed}: test accuracy {metrics['test_acc']:.4f} "
                  f"(trained in {metrics['train_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
