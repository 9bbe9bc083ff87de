"""lxt (AttnLRP / CP-LRP) token relevance for the benchmark's checkpoints; runs in lxt's own venv.

lxt 2.1 does not import beside transformers 5.x (see ``benchmarks/lxt_env.sh``), so
:mod:`benchmarks.text_faithfulness.evaluate` runs this module as a subprocess with the venv's python,
once per variant (lxt patches transformers classes process-wide, so the two variants cannot share a
process). It loads the same checkpoints, explains the same sequences and the same predicted ids, and
saves relevance plus its own logits (the caller checks they match the main environment's).

    benchmarks/cache/lxt-venv/bin/python -m benchmarks.text_faithfulness.lxt_relevance \\
        --variant attnlrp --models llama bert --seeds 0 1 2 --n 128 --out /tmp/lxt_attnlrp.pt
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import torch

from .data import eval_batch
from .models import MODELS

#: variant -> model -> (lxt module with the patch map, attribute holding the map)
PATCH_MAPS = {
    "attnlrp": {"llama": ("lxt.efficient.models.llama", "attnLRP"), "bert": ("lxt.efficient.models.bert", "attnLRP")},
    "cplrp": {"llama": ("lxt.efficient.models.llama", "cp_LRP")},  # lxt 2.1 has no CP-LRP map for BERT
}


def supported(variant: str, model: str) -> bool:
    """Whether lxt 2.1 ships a patch map for ``variant`` on ``model``.

    Args:
        variant: key of :data:`PATCH_MAPS`.
        model: key of :data:`MODELS`.

    Returns:
        ``True`` when :data:`PATCH_MAPS` has the pair.

    Example:
        >>> supported("cplrp", "bert")
        False
    """
    return model in PATCH_MAPS[variant]


def _patch(variant: str, model: str) -> None:
    from lxt.efficient import monkey_patch
    module_name, attr = PATCH_MAPS[variant][model]
    lxt_module = importlib.import_module(module_name)
    monkey_patch(lxt_module, getattr(lxt_module, attr))  # with a map given, the module is only a label


def lxt_modules(model: torch.nn.Module) -> int:
    """Submodules running lxt code (an lxt class, or a forward patched by lxt).

    Args:
        model: a model, after ``monkey_patch``.

    Returns:
        The count; 0 means lxt changed nothing in this model.

    Example:
        >>> lxt_modules(torch.nn.Linear(2, 2))
        0
    """
    def from_lxt(module):
        return type(module).__module__.startswith("lxt") or getattr(type(module).forward, "__module__", "").startswith("lxt")
    return sum(from_lxt(m) for m in model.modules())


def relevance(model: torch.nn.Module, name: str, ids: torch.Tensor) -> dict:
    """lxt's Gradient×Input relevance ``(B, T)`` of the predicted logit (prefix tokens dropped).

    Args:
        model: a patched HF model (eval mode).
        name: key of :data:`MODELS`.
        ids: ``(B, T)`` content ids.

    Returns:
        dict with ``relevance``, ``pred`` ``(B,)`` and ``logits`` ``(B, C)``.

    Example:
        >>> relevance(patched_llama, "llama", eval_batch("kv", 0, 4).ids)["relevance"].shape  # doctest: +SKIP
        torch.Size([4, 17])
    """
    spec = MODELS[name]
    prefix = torch.tensor(spec.prefix, dtype=torch.long).expand(ids.shape[0], -1)
    full = torch.cat([prefix, ids], dim=1)
    embeds = model.get_input_embeddings()(full).detach().requires_grad_(True)
    out = model(inputs_embeds=embeds).logits
    logits = out[:, -1] if spec.kind == "causal_lm" else out
    pred = logits.argmax(-1)
    logits.gather(1, pred[:, None]).sum().backward()
    rel = (embeds * embeds.grad).sum(-1)[:, len(spec.prefix):]
    return {"relevance": rel.detach(), "pred": pred, "logits": logits.detach()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(PATCH_MAPS), required=True)
    parser.add_argument("--models", nargs="+", default=sorted(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--cache-dir", default="benchmarks/cache")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import transformers
    from .checkpoints import checkpoint_path, load_checkpoint
    results = {"transformers": transformers.__version__, "rows": {}}
    for name in [m for m in args.models if supported(args.variant, m)]:
        _patch(args.variant, name)  # before building: lxt's BERT map replaces the model classes
        for seed in args.seeds:
            model, _ = load_checkpoint(checkpoint_path(name, seed, Path(args.cache_dir)))
            row = relevance(model, name, eval_batch(MODELS[name].task, seed, args.n).ids)
            row["model_class"] = f"{type(model).__module__}.{type(model).__name__}"  # lxt's own class for BERT
            row["lxt_modules"] = lxt_modules(model)
            results["rows"][f"{name}/{seed}"] = row
    torch.save(results, args.out)


if __name__ == "__main__":
    main()
