"""One method of the text speed benchmark, served to the driver over stdin/stdout (JSON lines).

The driver (``benchmarks/text_speed.py``) starts one worker per method, in the method's environment,
and sends each the same requests in turn, so methods interleave call by call although lxt's global
monkey-patches need a process of their own. The :class:`Worker` class also runs in-process (the
smoke test does so for the project's methods).

Requests: ``{"op": "setup", "model", "size", "length", "weights", "target"}``, ``{"op": "time"}``,
``{"op": "memory"}``, ``{"op": "check"}``, ``{"op": "quit"}``. Each reply is one JSON line.

Usage (by the driver)::

    python -m benchmarks.text_speed_worker --method lxt_attnlrp --device cpu --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from .text_methods import METHODS, Prepared
from .text_models import LastTokenLogits, build, load_weights, token_embeddings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes the torch allocator holds during ``fn()`` beyond what was live before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: torch keeps no CPU peak counter,
    so the call runs under ``torch.profiler`` with ``profile_memory=True`` and the allocation and
    free events of the CPU allocator are summed in time order; the maximum of that running sum is
    the peak. Weights and the input, allocated before, do not count; Python objects and allocator
    caching do not either (RSS would count both, and the other processes' pages).

    Args:
        fn: the call to measure (one explained token).
        device: where it runs.

    Returns:
        Peak extra bytes.

    Example:
        >>> peak_bytes(lambda: torch.ones(1024, 1024), torch.device("cpu")) >= 4 * 1024 * 1024
        True
    """
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type() == torch.autograd.DeviceType.CPU]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


class Worker:
    """Holds one method's model, input and prepared explainer for the current (model, length).

    Args:
        method: a key of :data:`~benchmarks.text_methods.METHODS`.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: ``"float32"`` or ``"bfloat16"``.

    Example:
        >>> w = Worker("plain")
        >>> w.handle({"op": "setup", "model": "gpt2", "size": "tiny", "length": 8})["length"]
        8
    """

    def __init__(self, method: str, device: str = "cpu", dtype: str = "float32"):
        self.method = METHODS[method]
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.models: dict[tuple, torch.nn.Module] = {}
        self.prepared: Optional[Prepared] = None
        self.embeds: Optional[torch.Tensor] = None
        self.target = 0

    def handle(self, request: dict) -> dict:
        """Answer one request (see the module docstring); errors come back as ``{"error": ...}``."""
        try:
            return getattr(self, "_" + request["op"])(request)
        except Exception as error:  # the driver records it in the table and carries on
            return {"error": f"{type(error).__name__}: {str(error)[:400]}"}

    def _model(self, request: dict) -> tuple[torch.nn.Module, list]:
        key = (request["model"], request.get("size", "tiny"))
        if key in self.models:
            return self.models[key], []
        self.models.clear()
        model = build(*key)
        problems = load_weights(model, Path(request["weights"])) if request.get("weights") else []
        self.models[key] = model.to(self.device, self.dtype)
        return self.models[key], problems

    def _setup(self, request: dict) -> dict:
        self.prepared = None  # frees the previous length's transform and compiled code first
        model, problems = self._model(request)
        self.embeds = token_embeddings(model, request["length"])
        with torch.no_grad():
            logits = LastTokenLogits(model)(self.embeds)[0]
        self.target = request.get("target")
        self.target = int(logits.argmax()) if self.target is None else int(self.target)
        self.prepared = self.method.prepare(model, self.embeds)
        first = self._time({})["s"]  # warm-up; compiles the compiled method
        info = {k: v for k, v in self.prepared.info.items() if k != "eager_gm"}
        return {"length": request["length"], "target": self.target, "setup_s": self.prepared.setup_s,
                "first_s": first, "weight_problems": problems, "info": info,
                "torch": torch.__version__, "transformers": __import__("transformers").__version__}

    def _call(self):
        return self.prepared.explain(self.embeds, self.target)

    def _time(self, request: dict) -> dict:
        _sync(self.device)
        start = time.perf_counter()
        self._call()
        _sync(self.device)
        return {"s": time.perf_counter() - start}

    def _memory(self, request: dict) -> dict:
        return {"peak_bytes": peak_bytes(self._call, self.device)}

    def _check(self, request: dict) -> dict:
        relevance, score = self._call()
        relevance, score = relevance.double().cpu(), float(score)
        out = {"score": score, "relevance_sum": float(relevance.sum()),
               "finite": bool(torch.isfinite(relevance).all()) and math.isfinite(score),
               "shape": list(relevance.shape), "relevance": [round(float(r), 7) for r in relevance]}
        gm = self.prepared.info.get("eager_gm")
        if gm is not None:
            out.update(_libra_checks(gm, self.prepared, self.embeds, self.target, relevance))
        return out

    def _quit(self, request: dict) -> dict:
        return {"bye": True}


def _libra_checks(gm, prepared: Prepared, embeds: torch.Tensor, target: int, relevance: torch.Tensor) -> dict:
    """FullGrad completeness of the balanced module; for the compiled one, its distance to eager."""
    import libra_fx
    terms = libra_fx.fullgrad_terms(gm, (embeds,), target)
    checks = {"fullgrad_ce": float(terms.completeness_error.max()), "bias_sum": float(terms.bias_attr.sum())}
    if prepared.module is not gm:
        from .text_methods import input_x_gradient
        eager, _ = input_x_gradient(gm)(embeds, target)
        scale = float(eager.abs().max()) or 1.0
        checks["compiled_vs_eager"] = float((relevance - eager.double().cpu()).abs().max()) / scale
    return checks


def _private_stdout():
    """The replies' channel: the real stdout, while fd 1 becomes stderr so that anything else
    printing (C++ profiler notices, library prints) cannot corrupt the protocol."""
    import os
    sys.stdout.flush()
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return replies


def main(argv: Optional[list] = None) -> None:
    """Serve requests from stdin until ``quit`` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    replies = _private_stdout()
    worker = Worker(args.method, args.device, args.dtype)
    for line in sys.stdin:
        request = json.loads(line)
        reply = worker.handle(request)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if request["op"] == "quit":
            break


if __name__ == "__main__":
    main()
