"""Batched ``deletion_curve`` vs a naive per-step-per-image loop.

Both compute the same MIF curve (checked before timing) for a small random-weight
timm ViT. Repetitions are interleaved (batched, naive, batched, ...) so drift in
machine load affects both alike; medians are reported.

    python benchmarks/deletion_throughput.py [--images 16] [--reps 5] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import timm
import torch
from rich.console import Console
from rich.table import Table

from libra_fx.metrics import DEFAULT_FRACTIONS, deletion_curve


def naive_deletion(model, images, scores, patch_size, fractions, baseline=0.0):
    """One forward per image per fraction (plus one per original), MIF order."""
    b, _, h, w = images.shape
    gw = w // patch_size
    n = (h // patch_size) * gw
    correct = torch.zeros(b, len(fractions))
    with torch.no_grad():
        for i in range(b):
            label = model(images[i : i + 1]).argmax(1)
            order = torch.sort(scores[i], descending=True, stable=True).indices.tolist()
            for fi, f in enumerate(fractions):
                img = images[i].clone()
                for j in order[: int(math.floor(f * n + 0.5))]:
                    r, c = divmod(j, gw)
                    img[:, r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size] = baseline
                correct[i, fi] = float(model(img[None]).argmax(1) == label)
    return correct.mean(0)


def _time(fn, device: torch.device) -> float:
    # CUDA runs asynchronously: synchronise so the time covers the kernels, not just launches.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    patch = 8
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=patch, num_classes=10
    ).eval().to(device)
    images = torch.randn(args.images, 3, 64, 64, device=device)
    scores = torch.randn(args.images, (64 // patch) ** 2, device=device)
    fr = DEFAULT_FRACTIONS

    def batched():
        return deletion_curve(model, images, scores, patch, order="most", fractions=fr,
                              batch_size=args.batch_size).accuracy

    def naive():
        return naive_deletion(model, images, scores, patch, fr)

    # Correctness first (also warms up both paths).
    if not torch.equal(batched().cpu(), naive().cpu()):
        raise SystemExit("batched and naive deletion curves disagree")

    times = {"batched": [], "naive": []}
    for _ in range(args.reps):
        times["batched"].append(_time(batched, device))
        times["naive"].append(_time(naive, device))

    variants = args.images * (1 + len(fr))
    calls = {"batched": math.ceil(variants / args.batch_size), "naive": variants}
    med = {k: statistics.median(v) for k, v in times.items()}
    table = Table(title=f"deletion_curve on random ViT-Tiny/8 @64px, {args.images} images, "
                        f"{len(fr)} fractions, {args.reps} interleaved reps")
    for col in ("method", "forward calls", "median s", "min s", "max s", "images/s"):
        table.add_column(col, justify="right")
    for k in ("naive", "batched"):
        table.add_row(k, str(calls[k]), f"{med[k]:.3f}", f"{min(times[k]):.3f}",
                      f"{max(times[k]):.3f}", f"{variants / med[k]:.1f}")
    console = Console()
    console.print(table)
    console.print(f"speed-up (median naive / median batched): [bold]{med['naive'] / med['batched']:.2f}x[/bold] "
                  f"(device: {device}, torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
