"""FullGrad completeness through the text API on tiny random Hugging Face models (hidden 64, 2 layers,
float64, every bias randomised), with left padding and a second sequence length on the same capture.

Run: ``python benchmarks/text_families.py [model_type ...]`` (prints a markdown table)."""
from __future__ import annotations

import logging
import sys
import time
import warnings

import torch

import libra_fx
from libra_fx.grad_completeness import randomise_bias_terms
from libra_fx.hf import tiny_model
from libra_fx.text import TextModel

FAMILIES = ("gpt_neox", "bert", "roberta", "distilbert", "gpt2", "opt", "qwen2", "mistral", "phi", "falcon",
            "gemma", "olmo", "llama")


def row(name: str) -> str:
    start = time.perf_counter()
    model, tok = tiny_model(name)
    model = model.double()
    randomise_bias_terms(model, std=0.5)
    lm = TextModel(model)
    ids = torch.tensor([tok.encode("the cat sat"), [0] * 4 + tok.encode("a dog x")])
    mask = (torch.arange(12) >= torch.tensor([[0], [4]])).long()
    ce = {flag: libra_fx.attribute(lm, input_ids=ids, attention_mask=mask, method="fullgrad", libra=flag)
          .completeness_error.max().item() for flag in (False, True)}
    longer = libra_fx.attribute(lm, input_ids=torch.tensor([tok.encode("the cat sat on the mat")]), method="fullgrad")
    gm = lm.captures["dynamic"]
    unbalanced = len(gm.libra_report.unbalanced) if gm is not None else "?"
    return (f"| {name} | {type(model).__name__} | {ce[False]:.1e} | {ce[True]:.1e} | "
            f"{longer.completeness_error.max().item():.1e} | {unbalanced} | {', '.join(map(str, lm.captures))} | "
            f"{time.perf_counter() - start:.1f} |")


def main(names=FAMILIES) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    print("| model type | class | CE plain | CE Libra | CE Libra, new length | unbalanced ops | captures | s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        try:
            print(row(name))
        except Exception as exc:  # a family the API cannot run yet: say why in the table
            print(f"| {name} | error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} |")


if __name__ == "__main__":
    main(sys.argv[1:] or FAMILIES)
