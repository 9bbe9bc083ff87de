"""Completeness error before/after and transform time for the paper's families (issue 2).

Full-size architectures at 224 px (random weights, heads re-initialised), batch 1, the predicted
class as target. ``--dtype float64`` separates the math from fp32 round-off.

    python -m benchmarks.families_table [--dtype float32|float64] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn as nn
from rich.console import Console
from rich.table import Table

import libra_fx
from libra_fx.auditing import default_target
from libra_fx.runner import fullgrad_terms

FAMILIES = ["vit_tiny_patch16_224", "deit3_small_patch16_224", "eva02_tiny_patch14_224",
            "beitv2_base_patch16_224", "flexivit_small", "vit_base_patch16_siglip_224",
            "mixer_s16_224", "mambaout_femto", "resnet18", "open_clip:ViT-B-32"]


def build(name: str):
    torch.manual_seed(0)
    if name.startswith("open_clip:"):
        import open_clip
        from tests.families import ClipSimilarity
        clip = open_clip.create_model(name.split(":", 1)[1], pretrained=None).eval()
        return ClipSimilarity(clip, torch.randn(3, clip.visual.output_dim)).eval(), 224
    import timm
    model = timm.create_model(name, pretrained=False).eval()
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.02)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    return model, size


def measure(name: str, dtype: torch.dtype) -> dict:
    model, size = build(name)
    model = model.to(dtype)
    x = torch.randn(1, 3, size, size, dtype=dtype)
    libra_fx.transform(model, x)  # warm-up: imports and first-trace caches
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        balanced = libra_fx.transform(model, x)
    seconds = time.perf_counter() - start
    plain = fullgrad_terms(balanced.libra_report.traced, (x,), default_target).completeness_error.item()
    libra = fullgrad_terms(balanced, (x,), default_target).completeness_error.item()
    return {"model": name, "plain": plain, "libra": libra, "transform_s": seconds,
            "rewrites": len(balanced.libra_report.rewrites), "unbalanced": len(balanced.libra_report.unbalanced)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [measure(name, getattr(torch, args.dtype)) for name in FAMILIES]
    table = Table(title=f"FullGrad completeness error (relative, {args.dtype}) and transform time")
    for column in ("model", "plain CE", "Libra CE", "transform (s)", "rewrites", "unbalanced"):
        table.add_column(column)
    lines = ["| model | plain CE | Libra CE | transform (s) | rewrites | unbalanced |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = (r["model"], f"{r['plain']:.2e}", f"{r['libra']:.2e}", f"{r['transform_s']:.2f}",
                 str(r["rewrites"]), str(r["unbalanced"]))
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
