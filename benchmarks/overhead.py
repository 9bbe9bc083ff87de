"""What LibraGrad costs: plain vs balanced forward/backward, eager and ``torch.compile``d.

For each model (random weights) and each mode (eager, compiled) it times, interleaved
(``fwd, plain attr, libra attr, plain train`` per repetition) and reports medians:

* ``fwd``        — forward under ``torch.no_grad()`` (inference cost);
* ``plain attr`` — plain forward + input-gradient backward (``torch.autograd.grad`` w.r.t. the image,
  parameters frozen): what a plain gradient attribution costs;
* ``libra attr`` — the same on ``libra_fx.transform(model)`` (``libra_fx.compile`` when compiled);
* ``lowered attr``— eager only: ``libra attr`` after :func:`libra_fx.compilation.lower` (value-only
  attention backward), which ``libra_fx.compile`` applies anyway;
* ``plain train``— plain forward + backward with every weight gradient (a training step's autograd).

plus the ratios, the transform time (trace + passes, no forward check), the compile time (first
call minus a steady call) and memory: on CUDA the peak allocated during one call; on CPU the bytes
autograd saves for the backward (``saved_tensors_hooks``, parameters excluded) — RSS is useless for
interleaved runs. Parameters are frozen for the attribution rows because a compiled backward
computes every weight gradient otherwise (eager autograd prunes them).

Usage::

    python -m benchmarks.overhead --quick                       # ~1-2 min on a 2-core CPU
    python -m benchmarks.overhead --markdown perf.md             # all models, eager + compiled
    python -m benchmarks.overhead --device cuda --dtype bfloat16 --markdown perf_gpu.md
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn

import libra_fx
from libra_fx.compilation import lower
from libra_fx.graph_copy import copy_graph_module
from libra_fx.targets import first_tensor

VARIANTS = ("fwd", "plain_attr", "libra_attr", "lowered_attr", "plain_train")


@dataclass(frozen=True)
class Spec:
    """A benchmarked model: how to build it (random weights) and its input resolution."""

    name: str
    build: Callable[[], nn.Module]
    image: int = 224


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm
        return timm.create_model(name, pretrained=False)
    return build


def _clip_visual() -> nn.Module:
    import open_clip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_clip.create_model("ViT-B-32", pretrained=None).visual


SPECS = {spec.name: spec for spec in (
    Spec("vit_s16", _timm("vit_small_patch16_224")),
    Spec("vit_b16", _timm("vit_base_patch16_224")),
    Spec("eva02_tiny", _timm("eva02_tiny_patch14_224")),
    Spec("mixer_s16", _timm("mixer_s16_224")),
    Spec("clip_b32", _clip_visual),
)}


@dataclass
class Result:
    """Medians (seconds) per variant for one model and mode, plus one-off costs."""

    model: str
    mode: str
    times: dict[str, list[float]] = field(default_factory=dict)
    first: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    transform_s: float = float("nan")

    def median(self, variant: str) -> float:
        """Median seconds of ``variant`` (NaN when it was not run)."""
        values = self.times.get(variant)
        return statistics.median(values) if values else float("nan")

    def ratio(self, num: str, den: str) -> float:
        return self.median(num) / self.median(den)

    def compile_s(self, variant: str) -> float:
        return self.first.get(variant, float("nan")) - self.median(variant)


@contextlib.contextmanager
def requires_grad(model: nn.Module, flag: bool):
    """Temporarily set ``requires_grad`` on every parameter (restored afterwards)."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p, b in zip(params, before):
            p.requires_grad_(b)


def score(output) -> torch.Tensor:
    """The explained scalar per sample: logit 0 (or the first embedding unit for CLIP)."""
    return first_tensor(output)[:, 0].float()


def make_runs(plain: nn.Module, libra: nn.Module, owner: nn.Module,
              lowered: Optional[nn.Module] = None) -> dict[str, Callable]:
    """The timed callables, each taking the input batch.

    Args:
        plain: the model (or its compiled form).
        libra: the transformed model (or its compiled form).
        owner: the module owning the shared parameters (to freeze/unfreeze them).
        lowered: the transformed model after :func:`libra_fx.compilation.lower` (eager only).

    Returns:
        ``{variant: run(x)}`` for the variants in :data:`VARIANTS` that apply.
    """
    def fwd(x):
        with torch.no_grad():
            plain(x)

    def attr(module):
        def run(x):
            x = x.detach().requires_grad_()
            with requires_grad(owner, False):
                torch.autograd.grad(score(module(x)).sum(), x)
        return run

    def train(x):
        with requires_grad(owner, True):
            score(plain(x)).sum().backward()
        owner.zero_grad(set_to_none=True)

    runs = {"fwd": fwd, "plain_attr": attr(plain), "libra_attr": attr(libra), "plain_train": train}
    if lowered is not None:
        runs["lowered_attr"] = attr(lowered)
    return runs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable, x: torch.Tensor) -> float:
    """Wall time of one call, synchronised on CUDA."""
    _sync(x.device)
    start = time.perf_counter()
    run(x)
    _sync(x.device)
    return time.perf_counter() - start


def saved_bytes(run: Callable, x: torch.Tensor, owner: nn.Module) -> float:
    """MB autograd saves for the backward during ``run(x)`` (distinct storages, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in owner.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(x)
    return sum(seen.values()) / 2**20


def peak_memory(run: Callable, x: torch.Tensor, owner: nn.Module) -> float:
    """MB: CUDA peak allocated above the resting level, or CPU saved-for-backward bytes."""
    if x.device.type != "cuda":
        return saved_bytes(run, x, owner)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run(x)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def build(spec: Spec, device: torch.device, dtype: torch.dtype, batch: int):
    """The eval model on ``device``/``dtype``, its input batch, its transform and the transform time."""
    torch.manual_seed(0)
    model = spec.build().eval().to(device=device, dtype=dtype)
    x = torch.randn(batch, 3, spec.image, spec.image, device=device, dtype=dtype)
    start = time.perf_counter()
    gm = libra_fx.transform(model, x, verify=False)
    transform_s = time.perf_counter() - start
    return model, x, gm, transform_s


def bench_model(spec: Spec, args, device: torch.device, dtype: torch.dtype) -> list[Result]:
    """Eager (and compiled) results for one model; runs interleaved across variants and modes."""
    model, x, gm, transform_s = build(spec, device, dtype, args.batch)
    lowered = copy_graph_module(gm)
    lower(lowered)
    modes = {"eager": make_runs(model, gm, model, lowered)}
    if args.compile:
        torch._dynamo.reset()
        # static shapes for both (fixed batch here): a fair plain-vs-libra comparison
        plain_c = torch.compile(model, mode=args.compile_mode)
        libra_c = libra_fx.compile(gm, mark_batch=False, mode=args.compile_mode)
        modes["compiled"] = make_runs(plain_c, libra_c, model)
    results = {mode: Result(spec.name, mode, transform_s=transform_s) for mode in modes}
    for mode, runs in modes.items():  # first calls: compiles happen here
        for variant, run in runs.items():
            results[mode].first[variant] = timed(run, x)
    for _ in range(args.reps):
        for variant in VARIANTS:
            for mode, runs in modes.items():
                if variant in runs:
                    results[mode].times.setdefault(variant, []).append(timed(runs[variant], x))
    for mode, runs in modes.items():
        for variant in ("plain_attr", "libra_attr"):
            results[mode].memory[variant] = peak_memory(runs[variant], x, model)
    return list(results.values())


COLUMNS = ("model", "mode", "fwd ms", "plain attr ms", "libra attr ms", "lowered attr ms", "plain train ms",
           "libra/plain attr", "lowered/plain attr", "libra/plain train", "libra attr/fwd", "mem plain MB", "mem libra MB",
           "transform s", "compile s (libra)")


def row(r: Result) -> list[str]:
    ms = lambda v: f"{r.median(v) * 1e3:.0f}"
    lowered = r.mode == "eager"
    return [r.model, r.mode, ms("fwd"), ms("plain_attr"), ms("libra_attr"),
            ms("lowered_attr") if lowered else "(= libra)", ms("plain_train"),
            f"{r.ratio('libra_attr', 'plain_attr'):.2f}",
            f"{r.ratio('lowered_attr', 'plain_attr'):.2f}" if lowered else "", f"{r.ratio('libra_attr', 'plain_train'):.2f}",
            f"{r.ratio('libra_attr', 'fwd'):.2f}", f"{r.memory.get('plain_attr', float('nan')):.0f}",
            f"{r.memory.get('libra_attr', float('nan')):.0f}", f"{r.transform_s:.2f}",
            "" if r.mode == "eager" else f"{r.compile_s('libra_attr'):.0f}"]


def markdown(results: list[Result], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    return "\n".join(lines) + "\n"


def print_table(results: list[Result], header: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is optional: fall back to the markdown text
        print(markdown(results, header))
        return
    table = Table(title=header)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "mode") else "right")
    for r in results:
        table.add_row(*row(r))
    Console(width=200).print(table)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def parse_args(argv: Optional[list[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(SPECS), default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="ViT-S/16 + EVA02-tiny, batch 2, 3 reps, eager only")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. max-autotune)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or ["vit_s16", "eva02_tiny"]
        args.batch, args.reps = min(args.batch, 2), min(args.reps, 3)
        if "--compile" not in (argv or __import__("sys").argv):
            args.compile = False
    args.models = args.models or list(SPECS)
    return args


def main(argv: Optional[list[str]] = None) -> list[Result]:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    warnings.filterwarnings("ignore", message=".*pretrained.*")
    results = []
    for name in args.models:
        results += bench_model(SPECS[name], args, device, dtype)
        print(f"done {name}", flush=True)
    command = "python -m benchmarks.overhead " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    header = (f"{command} — {machine(device)}, {args.dtype}, batch {args.batch}, {args.reps} reps "
              f"(medians), torch {torch.__version__}")
    print_table(results, header)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(markdown(results, header))
    return results


if __name__ == "__main__":
    main()
