"""Markdown tables of a ``benchmarks/text_speed.py`` run (its JSON document).

Usage::

    python -m benchmarks.text_speed_report benchmarks/results/text_speed.json > text_speed.md
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict

from .text_methods import METHODS
from .text_models import FAMILIES, config_of

MIB = 2 ** 20


def _reference(method: str) -> str:
    """Each method's baseline: plain gradients in its own environment (transformers version)."""
    return "lxt_plain" if METHODS[method].env == "lxt" else "plain"


def _index(rows: list[dict]) -> dict:
    return {(r["model"], r["length"], r["method"]): r for r in rows}


def _cell(row: dict, ref: dict) -> str:
    if row is None:
        return "–"
    if "error" in row:
        return "n/a"
    ms, mib = row["median_s"] * 1e3, (row["peak_bytes"] or 0) / MIB
    ratio = f" ({row['median_s'] / ref['median_s']:.2f}×)" if ref and ref is not row and "median_s" in ref else ""
    return f"{ms:.1f}{ratio} · {mib:.1f}"


def _describe(model: str, size: str) -> str:
    config = config_of(FAMILIES[model], size)
    hidden = getattr(config, "hidden_size", getattr(config, "n_embd", "?"))
    layers = getattr(config, "num_hidden_layers", getattr(config, "n_layer", "?"))
    return f"{FAMILIES[model].model_class}, hidden {hidden}, {layers} layers, vocab {config.vocab_size}, sdpa"


def _speed_tables(document: dict) -> list[str]:
    """Per model: lengths × methods, ``median ms (× own-env plain) · peak MiB``."""
    rows, lines = document["rows"], []
    index, methods = _index(rows), list(dict.fromkeys(r["method"] for r in rows))
    for model in dict.fromkeys(r["model"] for r in rows):
        size = next(r["size"] for r in rows if r["model"] == model)
        lines += [f"#### {model} ({_describe(model, size)})", "",
                  "| L | " + " | ".join(METHODS[m].label for m in methods) + " |",
                  "|---:|" + "---:|" * len(methods)]
        for length in dict.fromkeys(r["length"] for r in rows if r["model"] == model):
            cells = [_cell(index.get((model, length, m)), index.get((model, length, _reference(m))))
                     for m in methods]
            lines.append(f"| {length} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _geomean(values: list) -> float:
    values = [v for v in values if v and math.isfinite(v) and v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else math.nan


def _summary_table(document: dict) -> list[str]:
    """Geometric mean over models of time and memory relative to own-env plain gradients."""
    index, ratios = _index(document["rows"]), defaultdict(lambda: ([], []))
    for (model, length, method), row in index.items():
        ref = index.get((model, length, _reference(method)))
        if "median_s" in row and ref and "median_s" in ref:
            ratios[method, length][0].append(row["median_s"] / ref["median_s"])
            if row["peak_bytes"] and ref["peak_bytes"]:
                ratios[method, length][1].append(row["peak_bytes"] / ref["peak_bytes"])
    lengths = sorted({length for _, length in ratios})
    methods = [m for m in dict.fromkeys(r["method"] for r in document["rows"]) if _reference(m) != m]
    lines = ["| method (vs plain IxG in its env) | " + " | ".join(f"L={n} time · mem" for n in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    for method in methods:
        cells = [f"{_geomean(ratios[method, n][0]):.2f}× · {_geomean(ratios[method, n][1]):.2f}×" for n in lengths]
        lines.append(f"| {METHODS[method].label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _fmt(value, spec: str = ".2e") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _sanity_table(document: dict) -> list[str]:
    """Per model and method, worst case over lengths of the checks done in the same run."""
    groups = defaultdict(list)
    for row in document["rows"]:
        groups[row["model"], row["method"]].append(row)
    lines = ["| model | method | finite, shape L | Σ relevance / logit (min..max) | FullGrad CE (max) "
             "| logit vs plain (max abs) | corr. with libra_fx eager (min) | unbalanced ops left |",
             "|---|---|---|---|---|---|---|---|"]
    for (model, method), rows in groups.items():
        checks = [r["check"] for r in rows if "check" in r and "score" in r["check"]]
        if not checks:
            error = next((r.get("error") or r.get("check", {}).get("error") for r in rows), "?")
            lines.append(f"| {model} | {METHODS[method].label} | error: {error[:120]} | | | | | |")
            continue
        ok = all(c["finite"] and c["shape"] == [r["length"]] for c, r in zip(checks, rows))
        cons = [c["conservation"] for c in checks]
        ce = max((c["fullgrad_ce"] for c in checks if "fullgrad_ce" in c), default=None)
        vs = max((c.get("score_vs_plain", math.nan) for c in checks), default=None)
        corr = min((c.get("corr_libra_eager", math.nan) for c in checks), default=None)
        info = rows[0].get("info", {})
        unbalanced = f"{info['unbalanced']} ({', '.join(info['unbalanced_ops'])})" if "unbalanced" in info else ""
        lines.append(f"| {model} | {METHODS[method].label} | {'yes' if ok else 'NO'} | {min(cons):.3f}..{max(cons):.3f} "
                     f"| {_fmt(ce)} | {_fmt(vs)} | {_fmt(corr, '.3f')} | {unbalanced} |")
    return lines + [""]


def _one_off_table(document: dict) -> list[str]:
    """Per-length one-off costs, not in the per-token times: libra_fx's transform (capture +
    rewrites; the export capture is specialised to the length, so it runs per length) and the
    first-call compile time (first call − median) of the compiled methods."""
    lines = ["| model | L | libra_fx transform (s) | libra_fx compiled: compile (s) | plain compiled: compile (s) |",
             "|---|---:|---:|---:|---:|"]
    index = _index(document["rows"])
    pairs = dict.fromkeys((model, length) for model, length, _ in index)
    for model, length in pairs:
        eager, libra, plain = (index.get((model, length, m), {}) for m in ("libra_eager", "libra_compiled", "plain_compiled"))
        lines.append(f"| {model} | {length} | {eager.get('setup_s', math.nan):.2f} | "
                     f"{libra.get('compile_s', math.nan):.1f} | {plain.get('compile_s', math.nan):.1f} |")
    return lines + [""]


def markdown(document: dict) -> str:
    """The whole report: machine, summary, per-model tables, sanity checks, one-off costs.

    Args:
        document: the JSON document ``benchmarks.text_speed`` writes (``rows``, ``notes``,
            ``machine``, ``wall_s``).

    Returns:
        Markdown text.

    Example:
        >>> markdown(json.load(open("benchmarks/results/text_speed.json")))[:8]  # doctest: +SKIP
        'Machine:'
    """
    m = document["machine"]
    head = [f"Machine: {m['platform']}, {m['cpus']} CPUs, {m['threads']} torch thread(s) per worker, "
            f"device {m['device']}, {m['dtype']}, torch {m['torch']}; load average at start "
            f"{m['loadavg_start'][0]:.1f}, at end {m.get('loadavg_end', [math.nan])[0]:.1f}; "
            f"wall time {document['wall_s'] / 60:.1f} min.", ""]
    versions = {(r["method"], tuple(r["versions"])) for r in document["rows"] if "versions" in r}
    head += ["Environments: " + "; ".join(f"{METHODS[k].label}: torch {v[0]}, transformers {v[1]}"
                                          for k, v in sorted(versions)), ""]
    head += [f"Note: {note}" for note in document["notes"]] + [""]
    return "\n".join(head + ["### Summary (geometric mean over models)", ""] + _summary_table(document)
                     + ["### Per model: median ms per explained token (× plain IxG in the same env) · peak extra MiB", ""]
                     + _speed_tables(document) + ["### Sanity checks (same run, all lengths)", ""]
                     + _sanity_table(document) + ["### libra_fx one-off costs per length", ""] + _one_off_table(document))


if __name__ == "__main__":
    print(markdown(json.loads(open(sys.argv[1]).read())))
