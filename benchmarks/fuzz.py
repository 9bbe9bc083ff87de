"""Fuzz libra_fx with random architectures: ``python -m benchmarks.fuzz --examples 500``.

Runs :mod:`tests.archgen`'s hypothesis strategy ``--examples`` times and, instead of stopping at the
first failure as a test would, collects every counterexample (spec and what failed) and prints
them; exit status 1 if there were any. Each counterexample becomes a regression case in
``tests/test_property.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch
from hypothesis import HealthCheck, Phase, given, settings

from tests.archgen import Spec, check, specs


def fuzz(examples: int, max_blocks: int = 6) -> tuple[int, list[tuple[Spec, str]]]:
    """Run ``examples`` random architectures; returns (number run, counterexamples)."""
    failures: list[tuple[Spec, str]] = []
    ran = [0]

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(specs(max_blocks=max_blocks))
    def run(spec: Spec):
        ran[0] += 1
        try:
            problem = check(spec)
        except Exception as exc:  # a crash is a counterexample too
            problem = f"{type(exc).__name__}: {exc}".splitlines()[0] + "\n" + traceback.format_exc(limit=-3)
        if problem:
            failures.append((spec, problem))

    run()
    return ran[0], failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--max-blocks", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    ran, failures = fuzz(args.examples, args.max_blocks)
    print(f"fuzz: {ran} architectures in {time.perf_counter() - start:.0f}s, {len(failures)} counterexample(s)")
    for spec, problem in failures:
        print(f"- {spec!r}\n  {spec}\n  {problem}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
