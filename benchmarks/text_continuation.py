"""Teacher-forced continuation: one forward + one batched backward (is_grads_batched) vs one
``attribute`` call per explained token. Tiny random GPT-NeoX (hidden 64, 2 layers), CPU, 1 thread.

Run: ``python benchmarks/text_continuation.py`` (prints a markdown table; timings are medians of
interleaved repetitions)."""
from __future__ import annotations

import statistics
import time
import warnings

import torch

import libra_fx
from libra_fx.hf import tiny_model
from libra_fx.text import TextModel


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(prompt: int = 48, tokens: int = 16, repeats: int = 5, method: str = "fullgrad") -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model, _ = tiny_model("gpt_neox")
    lm = TextModel(model)
    ids = torch.randint(3, 98, (1, prompt), generator=torch.Generator().manual_seed(0))
    continuation = torch.randint(3, 98, (tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    batched = lambda: libra_fx.attribute(lm, input_ids=ids, target=continuation, method=method)
    def one_by_one():
        for k, token in enumerate(continuation):
            libra_fx.attribute(lm, input_ids=torch.cat([ids, torch.tensor([continuation[:k]])], 1).long(),
                               target=token, method=method)
    batched(), one_by_one()  # capture and warm up
    times = {"batched": [], "one_by_one": []}
    for _ in range(repeats):
        times["batched"].append(_time(batched))
        times["one_by_one"].append(_time(one_by_one))
    b, o = statistics.median(times["batched"]), statistics.median(times["one_by_one"])
    print("| method | prompt | tokens | one batched call (s) | one call per token (s) | ratio |")
    print("|---|---|---|---|---|---|")
    print(f"| {method} | {prompt} | {tokens} | {b:.3f} | {o:.3f} | {o / b:.1f}x |")


if __name__ == "__main__":
    main()
