"""Faithfulness benchmark (issue 7): do balanced gradients explain better, on models trained here?

For each model (trained on the procedural objects data, ``benchmarks.faithfulness.train``) and each
training seed: every gradient method plain vs Libra, attention rollout, and an AttnLRP-style variant
(LayerNorm/activation rules as Libra, every bilinear product — q·kᵀ and A·V included — halved,
softmax with its plain gradient; expressed with libra_fx's own passes), scored by MIF/LIF deletion
AUC, SRG = LIF − MIF, mask average precision and completeness error. Mean ± std over seeds, as a
markdown table, JSON and a PNG plot in ``benchmarks/results/``; plus the class-discrimination figure.

    python -m benchmarks.faithfulness.evaluate [--quick] [--models vit eva02 mixer siglip] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.fx as fx
from rich.console import Console
from rich.progress import Progress

import libra_fx
from libra_fx.analysis import Facts, is_product, product_leaves, product_root
from libra_fx.maps import patch_scores
from libra_fx.metrics import average_precision, mif_lif
from libra_fx.ops import scale_grad
from passes.api import Pass, substitute

from .data import make_batch, two_object_images
from .train import load_or_train

RESULTS = Path(__file__).resolve().parents[1] / "results"
GRADIENT_METHODS = ("gradient", "input_x_gradient", "integrated_gradients", "fullgrad", "fullgrad+",
                    "gradcam", "hirescam", "gradcam+", "xgradcam+")
PATCH = 8


def _unscaled_product_root(facts: Facts, node: fx.Node) -> bool:
    verdict = facts.verdicts.get(node)
    return is_product(facts, node) and product_root(facts, node) is node and verdict is not None and not verdict.balanced


def _halve_products(facts: Facts, node: fx.Node) -> None:
    substitute(node, scale_grad, (node, 1.0 / len(product_leaves(facts, node))), None, "attnlrp_products")


#: AttnLRP's uniform rule for bilinear ops, attention included: every product's gradient / k.
ATTNLRP_PRODUCTS = Pass(name="attnlrp_products", group="attnlrp", applies=_unscaled_product_root,
                        rewrite=_halve_products, doc="Every product p of k live factors → swap_backward(p, p/k).")


def attnlrp_module(model: torch.nn.Module) -> fx.GraphModule:
    """The model with AttnLRP-style rules: explicit softmax attention, norms/gates as Libra, products halved."""
    explicit = copy.deepcopy(model)
    for module in explicit.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False  # expose softmax(q·kᵀ)·V as graph ops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the softmax is left unbalanced on purpose
        return libra_fx.transform(explicit, passes=["normalization", "l2_normalize", "gated_activation",
                                                    "multiplicative_gate", "divisor", ATTNLRP_PRODUCTS])


def _variants(model):
    """(name, attribute kwargs) of every explanation compared."""
    balanced = libra_fx.transform(model)
    for method in GRADIENT_METHODS:
        yield f"{method} (plain)", dict(model=balanced, method=method, libra=False)
        yield f"{method} (Libra)", dict(model=balanced, method=method, libra=True)
    yield "rollout", dict(model=balanced, method="rollout", libra=False)
    yield "AttnLRP-style IxG", dict(model=attnlrp_module(model), method="input_x_gradient", libra=True)


def _score(model, images, labels, masks, kwargs) -> dict:
    options = {"steps": 16} if kwargs["method"] == "integrated_gradients" else {}
    result = libra_fx.attribute(inputs=images, target=labels, **kwargs, **options)
    maps = result.image_map
    curves = mif_lif(model, images, patch_scores(maps, PATCH), PATCH, labels=labels, batch_size=256)
    ce = result.completeness_error
    return {"mif": curves["mif_auc"], "lif": curves["lif_auc"], "srg": curves["srg"],
            "ap": average_precision(maps, masks).mean,
            "ce": None if ce is None else float(ce.abs().median())}


def evaluate_model(name: str, seed: int, n_images: int, progress: Progress, task, **train_kwargs) -> dict:
    model, metrics = load_or_train(name, seed=seed, **train_kwargs)
    images, labels, masks = make_batch(n_images, seed=10_000, split="test")
    with torch.no_grad():
        predicted = model(images).argmax(1)
    rows = {}
    for variant, kwargs in _variants(model):
        try:
            rows[variant] = _score(model, images, predicted, masks, kwargs)
        except libra_fx.LibraError:  # rollout on a model without attention (MLP-Mixer)
            rows[variant] = dict.fromkeys(("mif", "lif", "srg", "ap", "ce"))
        progress.advance(task)
    return {"accuracy": metrics["test_acc"], "rows": rows}


def _aggregate(per_seed: list[dict]) -> dict:
    out = {}
    for variant in per_seed[0]["rows"]:
        out[variant] = {}
        for key in ("mif", "lif", "srg", "ap", "ce"):
            values = [run["rows"][variant][key] for run in per_seed if run["rows"][variant][key] is not None]
            out[variant][key] = (statistics.fmean(values), statistics.pstdev(values)) if values else None
    return out


def _cell(value) -> str:
    if value is None:
        return "–"
    mean, std = value
    return f"{mean:.3f} ± {std:.3f}" if abs(mean) >= 1e-3 else f"{mean:.1e}"


def markdown(results: dict) -> str:
    lines = []
    for model, data in results.items():
        accs = ", ".join(f"{a:.3f}" for a in data["accuracy"] if a is not None)
        lines += [f"### {model} (test accuracy per seed: {accs}; {data['seeds']} seed(s))", "",
                  "| method | MIF AUC ↓ | LIF AUC ↑ | SRG ↑ | mask AP ↑ | completeness error |",
                  "|---|---|---|---|---|---|"]
        for variant, row in data["table"].items():
            lines.append(f"| {variant} | " + " | ".join(_cell(row[k]) for k in ("mif", "lif", "srg", "ap", "ce")) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (model, data) in zip(axes[0], results.items()):
        variants = [m for m in GRADIENT_METHODS]
        plain = [data["table"][f"{m} (plain)"]["srg"][0] for m in variants]
        libra = [data["table"][f"{m} (Libra)"]["srg"][0] for m in variants]
        xs = range(len(variants))
        ax.bar([x - 0.2 for x in xs], plain, 0.4, label="plain")
        ax.bar([x + 0.2 for x in xs], libra, 0.4, label="Libra")
        ax.set_xticks(list(xs), variants, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{model}: SRG (LIF−MIF AUC)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def discrimination_figure(name: str, seed: int, path: Path, n: int = 4, **train_kwargs) -> None:
    """Plain vs Libra FullGrad+ for each of the two objects' classes in two-object images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .data import denormalize
    model, _ = load_or_train(name, seed=seed, **train_kwargs)
    images, labels, masks = two_object_images(n, seed=20_000)
    balanced = libra_fx.transform(model)
    fig, axes = plt.subplots(n, 5, figsize=(12, 2.5 * n), squeeze=False)
    for row in range(n):
        axes[row][0].imshow(denormalize(images[row:row + 1])[0].permute(1, 2, 0).clamp(0, 1))
        axes[row][0].set_title(f"classes {labels[row, 0].item()} / {labels[row, 1].item()}", fontsize=8)
        for col, (obj, libra) in enumerate([(0, False), (0, True), (1, False), (1, True)], start=1):
            result = libra_fx.attribute(balanced, images[row:row + 1], int(labels[row, obj]), "fullgrad+", libra=libra)
            limit = float(result.image_map[0].abs().max()) or 1.0  # white = 0: sign stays readable
            axes[row][col].imshow(result.image_map[0], cmap="bwr", vmin=-limit, vmax=limit)
            axes[row][col].contour(masks[row, obj].float(), levels=[0.5], colors="k", linewidths=0.8)
            axes[row][col].set_title(f"class {labels[row, obj].item()} {'Libra' if libra else 'plain'}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit", "eva02", "mixer", "siglip"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="one seed of ViT, 32 images")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the cached budget)")
    parser.add_argument("--cache-dir", default=None, help="checkpoint cache (default benchmarks/cache)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.seeds, args.images = ["vit"], [0], 32
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_variants = 2 * len(GRADIENT_METHODS) + 2
    train_kwargs = {"steps": args.steps, **({"cache_dir": args.cache_dir} if args.cache_dir else {})}
    results, start = {}, time.time()
    with Progress() as progress:
        task = progress.add_task("faithfulness", total=len(args.models) * len(args.seeds) * n_variants)
        for name in args.models:
            runs = [evaluate_model(name, seed, args.images, progress, task, **train_kwargs) for seed in args.seeds]
            results[name] = {"seeds": len(runs), "accuracy": [r["accuracy"] for r in runs], "table": _aggregate(runs)}
            (out / "faithfulness.md").write_text(markdown(results))  # per model: a crash keeps the rest
            (out / "faithfulness.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "faithfulness_srg.png")
    discrimination_figure(args.models[0], args.seeds[0], out / "class_discrimination.png", **train_kwargs)
    Console().print(markdown(results))
    Console().print(f"done in {time.time() - start:.0f} s → {out}")


if __name__ == "__main__":
    main()
