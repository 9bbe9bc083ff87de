"""Faithfulness on text (issue 12, part 5): do balanced gradients find the evidence tokens?

For each model (``llama`` on key–value recall, ``bert`` on keyword classification; trained here on
CPU, see :mod:`.train`) and training seed: every gradient method plain vs Libra, attention rollout,
lxt's AttnLRP and CP-LRP (run in lxt's own venv, see :mod:`.lxt_relevance`) and a random ranking,
scored by token-deletion MIF/LIF AUC, SRG = LIF − MIF, MIF AOPC and evidence-token AP. Mean ± std over
seeds, as markdown, JSON and a PNG in ``benchmarks/results/``.

    python -m benchmarks.text_faithfulness.evaluate [--quick] [--models llama bert] [--seeds 0 1 2] [--n 128]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

import libra_fx

from .adapter import EmbedsModel, rollout_relevance, token_relevance
from .checkpoints import DEFAULT_CACHE
from .data import eval_batch
from .lxt_relevance import PATCH_MAPS, supported
from .models import MODELS
from .scoring import score_relevance
from .train import load_or_train

RESULTS = Path(__file__).resolve().parents[1] / "results"
LXT_PYTHON = DEFAULT_CACHE / "lxt-venv" / "bin" / "python"
GRADIENT_METHODS = ("input_x_gradient", "integrated_gradients", "fullgrad", "fullgrad+",
                    "gradcam", "hirescam", "gradcam+", "xgradcam+")
KEYS = ("mif", "lif", "srg", "aopc", "ap", "ap_abs", "neg_evidence", "ce")
LXT_NAMES = {"attnlrp": "lxt AttnLRP", "cplrp": "lxt CP-LRP"}


class Explained:
    """One model and batch being explained: the wrapper, its balanced graph, inputs and predictions.

    Args:
        model: a trained (or any) HF model of :data:`MODELS`.
        name: its key.
        ids: ``(B, T)`` content ids to explain.

    Example:
        >>> from .models import build_model
        >>> Explained(build_model("bert", 0), "bert", torch.zeros(2, 24, dtype=torch.long)).pred.shape
        torch.Size([2])
    """

    def __init__(self, model: torch.nn.Module, name: str, ids: torch.Tensor):
        self.name = name
        self.wrapper = EmbedsModel(model, name).eval()
        self.embeds = self.wrapper.embed(ids)
        with torch.no_grad():
            self.pred = self.wrapper(self.embeds).argmax(-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unbalanced op is reported by the audit, read below
            self.balanced = libra_fx.transform(self.wrapper, (self.embeds,))


def _gradient_variant(method: str, libra: bool) -> Callable[[Explained], tuple]:
    def run(ex: Explained) -> tuple:
        # chunks of exactly B rows: the torch.export capture of a HF model is specialised to its batch size
        options = {"steps": 16, "internal_batch_size": ex.embeds.shape[0]} if method == "integrated_gradients" else {}
        scores, result = token_relevance(ex.balanced, ex.embeds, ex.pred, method, libra, **options)
        return scores, result.completeness_error
    return run


def _random_variant(ex: Explained) -> tuple:
    return torch.rand(ex.embeds.shape[:2], generator=torch.Generator().manual_seed(0)), None


def variants() -> dict[str, Callable[[Explained], tuple]]:
    """The in-process methods: gradient methods plain and Libra, rollout, random.

    Returns:
        ``{name: Explained -> (relevance (B, T), completeness errors (B,) or None)}``.

    Example:
        >>> "fullgrad (Libra)" in variants()
        True
    """
    table = {}
    for method in GRADIENT_METHODS:
        table[f"{method} (plain)"] = _gradient_variant(method, libra=False)
        table[f"{method} (Libra)"] = _gradient_variant(method, libra=True)
    table["rollout"] = lambda ex: (rollout_relevance(ex.wrapper, ex.embeds), None)
    table["random"] = _random_variant
    return table


def audit_state(ex: Explained) -> dict:
    """libra_fx's audit of the wrapped model on four of the explained sequences.

    Args:
        ex: the explained model.

    Returns:
        dict: ``balanced``, ``ce_before``, ``ce_after``, ``unbalanced_ops`` (op names), ``n_unbalanced``.

    Example:
        >>> audit_state(Explained(model, "llama", ids))["balanced"]  # doctest: +SKIP
        False
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = libra_fx.audit(ex.wrapper, (ex.embeds[:4],), target=ex.pred[:4])
    ops = sorted({f.op for f in report.unbalanced})
    return {"balanced": report.balanced, "ce_before": report.completeness_before,
            "ce_after": report.completeness_after, "unbalanced_ops": ops, "n_unbalanced": len(report.unbalanced)}


def run_lxt(models: list[str], seeds: list[int], n: int, cache_dir: Path, python: Path) -> dict:
    """lxt relevance per variant, each from a subprocess in lxt's venv (:mod:`.lxt_relevance`).

    Args:
        models: model keys (those lxt has no map for are skipped).
        seeds: training seeds (their checkpoints must exist).
        n: explained sequences per seed.
        cache_dir: checkpoint folder.
        python: the venv's python.

    Returns:
        ``{variant: {"transformers": version, "rows": {"model/seed": {...}}}}``, or an error string
        for a variant whose run failed.

    Example:
        >>> run_lxt(["llama"], [0], 8, DEFAULT_CACHE, LXT_PYTHON)["attnlrp"]["transformers"]  # doctest: +SKIP
        '4.52.4'
    """
    out = {}
    for variant in PATCH_MAPS:
        wanted = [m for m in models if supported(variant, m)]
        if not wanted:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "lxt.pt"
            cmd = [str(python), "-m", "benchmarks.text_faithfulness.lxt_relevance", "--variant", variant,
                   "--models", *wanted, "--seeds", *map(str, seeds), "--n", str(n),
                   "--cache-dir", str(cache_dir), "--out", str(path)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            out[variant] = (torch.load(path, weights_only=False) if done.returncode == 0
                            else f"lxt run failed: {done.stderr.strip().splitlines()[-1:]}")
    return out


def _lxt_rows(ex: Explained, seed: int, batch, lxt: dict) -> dict:
    rows = {}
    for variant, data in lxt.items():
        got = data["rows"].get(f"{ex.name}/{seed}") if isinstance(data, dict) else None
        if got is None:
            continue
        scored = score_relevance(ex.wrapper, ex.embeds, got["relevance"], ex.pred, batch.evidence)
        # the same checkpoint in lxt's transformers must predict the same ids for the row to be comparable
        scored["same_prediction"] = float((got["pred"] == ex.pred).float().mean())
        rows[LXT_NAMES[variant]] = scored
    return rows


def evaluate_model(name: str, seed: int, n: int, lxt: dict, steps=None, cache_dir: Path = DEFAULT_CACHE) -> dict:
    """Every variant's scores on the model ``name`` trained with ``seed`` (trained here when not cached).

    Args:
        name: key of :data:`MODELS`.
        seed: training seed.
        n: explained sequences.
        lxt: output of :func:`run_lxt` (``{}`` for none).
        steps: training steps (default: the cached budget).
        cache_dir: checkpoint folder.

    Returns:
        dict: ``test_acc``, ``eval_acc``, ``audit`` (:func:`audit_state`) and ``rows`` (variant -> scores).

    Example:
        >>> evaluate_model("bert", 0, 32, {})["rows"]["fullgrad (Libra)"]["srg"]  # doctest: +SKIP
    """
    model, metrics = load_or_train(name, seed, steps, cache_dir)
    batch = eval_batch(MODELS[name].task, seed, n)
    ex = Explained(model, name, batch.ids)
    rows = {}
    for variant, explain in variants().items():
        t0 = time.time()
        relevance, completeness = explain(ex)
        rows[variant] = score_relevance(ex.wrapper, ex.embeds, relevance, ex.pred, batch.evidence, completeness)
        rows[variant]["seconds"] = time.time() - t0
    rows.update(_lxt_rows(ex, seed, batch, lxt))
    return {"test_acc": metrics["test_acc"], "eval_acc": float((ex.pred == batch.labels).float().mean()),
            "audit": audit_state(ex), "rows": rows}


def aggregate(runs: list[dict]) -> dict:
    """Mean and population std over seeds of every score of every variant.

    Args:
        runs: outputs of :func:`evaluate_model`, one per seed.

    Returns:
        ``{variant: {key: (mean, std) or None}}``.

    Example:
        >>> aggregate([{"rows": {"a": {"srg": 1.0}}}, {"rows": {"a": {"srg": 0.0}}}])["a"]["srg"]
        (0.5, 0.5)
    """
    names = list(dict.fromkeys(v for run in runs for v in run["rows"]))
    table = {}
    for variant in names:
        table[variant] = {}
        for key in (*KEYS, "same_prediction"):
            values = [run["rows"][variant][key] for run in runs
                      if variant in run["rows"] and run["rows"][variant].get(key) is not None]
            table[variant][key] = (statistics.fmean(values), statistics.pstdev(values)) if values else None
    return table


def _cell(value) -> str:
    if value is None:
        return "–"
    mean, std = value
    if mean == 0 and std == 0:
        return "0"
    return f"{mean:.3f} ± {std:.3f}" if abs(mean) >= 1e-3 else f"{mean:.1e}"


def markdown(results: dict) -> str:
    """The results as markdown: per model, accuracy, audit state and the table; then the notes.

    Args:
        results: the dict :func:`main` writes as JSON.

    Returns:
        Markdown text.

    Example:
        >>> markdown({"models": {}, "notes": ["n"]}).strip()
        '- n'
    """
    lines = []
    for model, data in results["models"].items():
        spec = MODELS[model]
        accs = ", ".join(f"{a:.3f}" for a in data["test_acc"])
        audit = data["audit"][0]
        lines += [f"### {model} ({spec.kind}, task `{spec.task}`; {len(data['test_acc'])} seed(s), "
                  f"test accuracy per seed: {accs})", "",
                  f"libra_fx audit: balanced = {audit['balanced']}, completeness error plain "
                  f"{audit['ce_before']:.2e} → Libra {audit['ce_after']:.2e}"
                  + (f", unbalanced ops: {', '.join(audit['unbalanced_ops'])} ({audit['n_unbalanced']} nodes)"
                     if audit["unbalanced_ops"] else "") + ".", "",
                  "| method | MIF AUC ↓ | LIF AUC ↑ | SRG ↑ | MIF AOPC ↑ | evidence AP ↑ | AP of abs ↑ "
                  "| evidence < 0 | completeness error |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for variant, row in data["table"].items():
            lines.append(f"| {variant} | " + " | ".join(_cell(row[k]) for k in KEYS) + " |")
        lines.append("")
        agree = {v: row["same_prediction"][0] for v, row in data["table"].items() if row.get("same_prediction")}
        if agree:
            lines += ["lxt's environment predicts the same ids on the explained sequences: "
                      + ", ".join(f"{v} {a:.1%}" for v, a in agree.items()) + ".", ""]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    if "seconds" in results:
        lines.append(f"- wall time {results['seconds']:.0f} s (training excluded when cached; shared 2-core CPU).")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """SRG and evidence AP per method (plain vs Libra bars; single bars for the rest), one column per model.

    Args:
        results: the dict :func:`main` writes as JSON.
        path: the PNG to write.

    Example:
        >>> plot(json.loads(Path("benchmarks/results/text_faithfulness.json").read_text()), Path("/tmp/t.png"))  # doctest: +SKIP
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = results["models"]
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 7), squeeze=False)
    for col, (model, data) in enumerate(models.items()):
        table = data["table"]
        others = [v for v in table if not v.endswith("(plain)") and not v.endswith("(Libra)")]
        for row, key in enumerate(("srg", "ap")):
            ax = axes[row][col]
            xs = list(range(len(GRADIENT_METHODS)))
            for shift, kind in ((-0.2, "plain"), (0.2, "Libra")):
                vals = [table[f"{m} ({kind})"][key] for m in GRADIENT_METHODS]
                ax.bar([x + shift for x in xs], [v[0] for v in vals], 0.4, yerr=[v[1] for v in vals], label=kind)
            extra = [len(xs) + i for i in range(len(others))]
            vals = [table[v][key] for v in others]
            ax.bar(extra, [v[0] for v in vals], 0.6, yerr=[v[1] for v in vals], color="grey", label="other")
            ax.set_xticks(xs + extra, list(GRADIENT_METHODS) + others, rotation=60, ha="right", fontsize=8)
            ax.set_title(f"{model}: {'SRG (LIF−MIF AUC)' if key == 'srg' else 'evidence-token AP'}")
            ax.axhline(0, color="k", linewidth=0.5)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def provenance() -> str:
    """The commit the numbers come from, and any uncommitted change to the engine (libra_fx/, passes/).

    Returns:
        e.g. ``"commit 41b7c02"`` or ``"commit 41b7c02, with uncommitted engine changes: libra_fx/opset.py"``.

    Example:
        >>> provenance().startswith("commit")
        True
    """
    def git(*args):
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
        return done.stdout.strip()
    dirty = ", ".join(git("diff", "--name-only", "HEAD", "--", "libra_fx", "passes").split())
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (f", with uncommitted engine changes: {dirty}" if dirty else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=sorted(MODELS, reverse=True))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=128, help="explained sequences per seed")
    parser.add_argument("--quick", action="store_true", help="one seed, 32 sequences")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the cached budget)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--lxt-python", default=str(LXT_PYTHON), help="python of lxt's venv (benchmarks/lxt_env.sh)")
    parser.add_argument("--no-lxt", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.n = args.seeds[:1], 32
    torch.set_num_threads(args.threads)
    start, cache, notes = time.time(), Path(args.cache_dir), []
    for name in args.models:  # checkpoints first: the lxt subprocess loads them
        for seed in args.seeds:
            load_or_train(name, seed, args.steps, cache)
    lxt = {}
    if args.no_lxt:
        notes.append("lxt rows left out (--no-lxt).")
    elif not Path(args.lxt_python).exists():
        notes.append(f"lxt rows left out: no lxt venv at {args.lxt_python} (run benchmarks/lxt_env.sh).")
    else:
        lxt = run_lxt(args.models, args.seeds, args.n, cache, Path(args.lxt_python))
        notes += [f"{LXT_NAMES[v]}: {d}" for v, d in lxt.items() if isinstance(d, str)]
        notes += [f"{LXT_NAMES[v]} ran in lxt 2.1's venv with transformers {d['transformers']} on the same "
                  f"checkpoints and sequences; model classes: {sorted({r['model_class'] for r in d['rows'].values()})}, "
                  f"submodules running lxt code per model: {sorted({r['lxt_modules'] for r in d['rows'].values()})}"
                  for v, d in lxt.items() if isinstance(d, dict)]
        notes += [f"{LXT_NAMES[v]} has no row for {m}: lxt 2.1 ships no patch map for it"
                  for v in PATCH_MAPS for m in args.models if not supported(v, m)]
    notes.append(f"libra_fx at {provenance()}; {args.n} sequences per seed; seeds {args.seeds}.")
    results = {"models": {}, "notes": notes, "n": args.n, "seeds": args.seeds}
    for name in args.models:
        runs = [evaluate_model(name, seed, args.n, lxt, args.steps, cache) for seed in args.seeds]
        results["models"][name] = {"test_acc": [r["test_acc"] for r in runs], "eval_acc": [r["eval_acc"] for r in runs],
                                   "audit": [r["audit"] for r in runs], "table": aggregate(runs), "runs": runs}
        print(f"{name}: done at {time.time() - start:.0f} s", flush=True)
    results["seconds"] = time.time() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"text_faithfulness{args.tag}"
    (out / f"{stem}.md").write_text(markdown(results))
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    plot(results, out / f"{stem}.png")
    print(markdown(results))
    print(f"done in {results['seconds']:.0f} s -> {out}")


if __name__ == "__main__":
    main()
