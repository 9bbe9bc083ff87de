"""Time and peak memory per explained token: plain gradients vs libra_fx vs lxt (AttnLRP, CP-LRP).

One explained token = one forward and one backward explaining the logit of the token predicted at
the last position, input×gradient on all token embeddings (lxt's efficient LRP is also
input×gradient, after its patches). Each method runs in its own worker process
(``text_speed_worker.py``): the project's methods under the project's interpreter (transformers
5.x), lxt's under the lxt environment (``lxt_env.sh``: transformers 4.52, lxt 2.1), since lxt
patches transformers globally and cannot import beside transformers 5. The driver sends every
worker the same requests in turn — for each rep, one timed call per method in rotated order — so the
methods interleave call by call; it reports medians. All workers load the same weights (saved here)
and build the same token sequence.

Per (model, length) it also records: one-off costs (libra_fx transform per length — the export
capture specialises the sequence length — and the compile time, first call minus median), the peak
extra torch allocator bytes of one call (see :func:`~benchmarks.text_speed_worker.peak_bytes`), and
sanity checks: the logit each method explains (the same model must give the same logit), the sum of
relevance over the logit (lxt's conservation; FullGrad completeness for libra_fx, whose bias terms
are added), the unbalanced ops libra_fx reports, the compiled-vs-eager distance and the correlation
of each method's token relevance with libra_fx eager's.

Usage::

    bash benchmarks/lxt_env.sh                                   # once: the lxt venv
    python -m benchmarks.text_speed --markdown benchmarks/results/text_speed.md \\
        --json benchmarks/results/text_speed.json                # all models, 128..2048, CPU
    python -m benchmarks.text_speed --models llama --lengths 128 --reps 1   # a quick look
    python -m benchmarks.text_speed --device cuda --config 1b --dtype bfloat16   # ~1B models, GPU
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Protocol

import torch

from .text_methods import METHODS
from .text_models import FAMILIES, build, weights_file

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / "cache" / "text_speed"
LXT_PYTHON = ROOT / "benchmarks" / "cache" / "lxt-venv" / "bin" / "python"
LENGTHS = (128, 256, 512, 1024, 2048)


class Channel(Protocol):
    """What the driver talks to: a worker in this process or in another interpreter."""

    def request(self, message: dict) -> dict: ...


class LocalWorker:
    """A :class:`~benchmarks.text_speed_worker.Worker` in this process (project methods only).

    Example:
        >>> LocalWorker("plain").request({"op": "quit"})
        {'bye': True}
    """

    def __init__(self, method: str, device: str = "cpu", dtype: str = "float32"):
        from .text_speed_worker import Worker
        self.worker = Worker(method, device, dtype)

    def request(self, message: dict) -> dict:
        return self.worker.handle(message)


class ProcessWorker:
    """A worker process under ``python`` (the project's or lxt's interpreter), stderr to ``log``.

    Example:
        >>> w = ProcessWorker(sys.executable, "plain", Path("/tmp/plain.log"))  # doctest: +SKIP
        >>> w.request({"op": "quit"})  # doctest: +SKIP
        {'bye': True}
    """

    def __init__(self, python: str, method: str, log: Path, device: str = "cpu",
                 dtype: str = "float32", threads: int = 1):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [str(python), "-m", "benchmarks.text_speed_worker", "--method", method, "--device", device,
             "--dtype", dtype, "--threads", str(threads)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=dict(os.environ, PYTHONWARNINGS="ignore"))

    def request(self, message: dict) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            return {"error": f"worker exited (rc {self.process.poll()}); see {self.log.name}"}
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.request({"op": "quit"})
            self.process.wait(timeout=30)
        self.log.close()


def _reps_for(length: int, reps: int, reps_long: int) -> int:
    """Repetitions at ``length``: fewer for the longest sequences (>= 2048)."""
    return reps_long if length >= 2048 else reps


def _setup_all(workers: dict, request: dict) -> dict:
    """Set every worker up on one (model, length); the first one fixes the explained token."""
    replies, target = {}, None
    for name, worker in workers.items():
        replies[name] = worker.request(dict(request, op="setup", target=target))
        if target is None and "error" not in replies[name]:
            target = replies[name]["target"]
    return replies


def _rounds(workers: dict, live: list, reps: int) -> dict:
    """``reps`` timed calls per live method, interleaved; the order rotates every round."""
    times: dict[str, list] = {name: [] for name in live}
    for rep in range(reps):
        for name in live[rep % len(live):] + live[:rep % len(live)]:
            reply = workers[name].request({"op": "time"})
            if "error" not in reply:
                times[name].append(reply["s"])
    return times


def measure_cell(workers: dict, model: str, length: int, reps: int, size: str = "tiny",
                 weights: Optional[Path] = None) -> list[dict]:
    """Measure every worker's method on one model and sequence length.

    Args:
        workers: ``{method name: channel}`` (``LocalWorker`` or ``ProcessWorker``).
        model: a key of :data:`~benchmarks.text_models.FAMILIES`.
        length: sequence length.
        reps: timed calls per method.
        size: ``"tiny"`` or ``"1b"``.
        weights: a state-dict file every worker loads (the same model in both environments).

    Returns:
        One row per method: ``model, length, method, times, median_s, peak_bytes, setup_s,
        compile_s, info, check`` (or ``error``).

    Example:
        >>> rows = measure_cell({"plain": LocalWorker("plain")}, "gpt2", 16, 1)
        >>> rows[0]["check"]["shape"]
        [16]
    """
    request = {"model": model, "size": size, "length": length, "weights": str(weights) if weights else None}
    setups = _setup_all(workers, request)
    live = [name for name, reply in setups.items() if "error" not in reply]
    times = _rounds(workers, live, reps)
    rows = []
    for name, setup in setups.items():
        row = {"model": model, "size": size, "length": length, "method": name}
        if name not in live:
            rows.append(dict(row, error=setup["error"]))
            continue
        median = statistics.median(times[name]) if times[name] else math.nan
        rows.append(dict(row, times=times[name], median_s=median, setup_s=setup["setup_s"],
                         compile_s=setup["first_s"] - median, info=setup["info"],
                         weight_problems=setup["weight_problems"], versions=[setup["torch"], setup["transformers"]],
                         peak_bytes=workers[name].request({"op": "memory"}).get("peak_bytes"),
                         check=workers[name].request({"op": "check"})))
    _compare(rows)
    return rows


def _correlation(a: list, b: list) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-300))


def _compare(rows: list[dict]) -> None:
    """Cross-method sanity: each method's logit vs plain's, and its relevance's correlation with
    libra_fx eager's (and with plain's)."""
    checked = {r["method"]: r["check"] for r in rows if "check" in r and "score" in r.get("check", {})}
    for row in rows:
        check = row.get("check", {})
        if "score" not in check:
            continue
        check["conservation"] = check["relevance_sum"] / check["score"] if check["score"] else math.nan
        for ref in ("plain", "libra_eager"):
            if ref in checked:
                check[f"score_vs_{ref}"] = abs(check["score"] - checked[ref]["score"])
                check[f"corr_{ref}"] = _correlation(check["relevance"], checked[ref]["relevance"])
    for check in checked.values():
        check.pop("relevance")  # L numbers per method: the correlations above summarise them


def save_weights(model: str, size: str, cache: Path = CACHE) -> Path:
    """Build ``model`` (seeded) in this environment and save its weights for every worker.

    Args:
        model: a key of :data:`~benchmarks.text_models.FAMILIES`.
        size: ``"tiny"`` or ``"1b"``.
        cache: the folder to write to.

    Returns:
        The file written.

    Example:
        >>> save_weights("gpt2", "tiny", Path("/tmp")).name
        'gpt2-tiny.weights.pt'
    """
    path = weights_file(cache, model, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build(model, size).state_dict(), path)
    return path


def _lxt_available(python: Path) -> Optional[str]:
    """None when ``python`` imports lxt, else why not."""
    if not Path(python).exists():
        return f"{python} missing: run bash benchmarks/lxt_env.sh"
    probe = subprocess.run([str(python), "-c", "import lxt.efficient"], capture_output=True, text=True)
    return None if probe.returncode == 0 else probe.stderr.strip().splitlines()[-1]


def _start_workers(methods: list[str], args) -> tuple[dict, list[str]]:
    """One worker process per method, lxt's in the lxt interpreter; returns them and notes."""
    notes, workers = [], {}
    missing = _lxt_available(args.lxt_python) if any(METHODS[m].env == "lxt" for m in methods) else None
    if missing:
        notes.append(f"lxt methods skipped: {missing}")
    for method in methods:
        if METHODS[method].env == "lxt" and missing:
            continue
        python = args.lxt_python if METHODS[method].env == "lxt" else sys.executable
        workers[method] = ProcessWorker(python, method, CACHE / "logs" / f"{method}.log", args.device,
                                        args.dtype, args.threads)
    return workers, notes


def _run(args) -> dict:
    """The whole benchmark as the command line asks; returns the JSON document."""
    workers, notes = _start_workers(args.methods, args)
    rows, start = [], time.time()
    try:
        for model in args.models:
            weights = save_weights(model, args.config) if args.share_weights else None
            for length in args.lengths:
                cell = measure_cell(workers, model, length, _reps_for(length, args.reps, args.reps_long),
                                    args.config, weights)
                rows.extend(cell)
                print(_progress(cell), flush=True)
    finally:
        for worker in workers.values():
            worker.close()
    return {"rows": rows, "notes": notes, "machine": _machine(args), "wall_s": time.time() - start,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}


def _progress(cell: list[dict]) -> str:
    parts = [f"{r['method']} {r['median_s'] * 1e3:.1f}ms" if "median_s" in r else f"{r['method']} ERR"
             for r in cell]
    return f"{cell[0]['model']} L={cell[0]['length']}: " + ", ".join(parts)


def _machine(args) -> dict:
    """What ran the benchmark (for the report)."""
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
            "device": args.device, "dtype": args.dtype, "torch": torch.__version__,
            "loadavg_start": os.getloadavg()}
    if args.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(FAMILIES))
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=list(LENGTHS))
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--reps-long", type=int, default=3, help="reps at length >= 2048")
    parser.add_argument("--config", default="tiny", choices=("tiny", "1b"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lxt-python", type=Path, default=LXT_PYTHON)
    parser.add_argument("--share-weights", action=argparse.BooleanOptionalAction, default=None,
                        help="save the weights once and load them in every worker (default: tiny only)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if args.share_weights is None:
        args.share_weights = args.config == "tiny"
    return args


def main(argv: Optional[list] = None) -> None:
    """Run the benchmark and write the JSON and Markdown results asked for.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        None; prints the Markdown report.

    Example:
        >>> main(["--models", "gpt2", "--lengths", "16", "--reps", "1"])  # doctest: +SKIP
    """
    from .text_speed_report import markdown
    args = _parse_args(argv)
    document = _run(args)
    document["machine"]["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(document, indent=1))
    text = markdown(document)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
