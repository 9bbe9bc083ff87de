"""What a dense causal mask costs SDPA against ``is_causal=True`` (forward + value backward).

``torch.export`` of a Hugging Face model records the dense mask (transformers does not skip it
while exporting); the model run eagerly uses ``is_causal=True``. This isolates that difference.

Usage::

    python -m benchmarks.text_mask_cost --length 2048 --heads 4 --head-dim 16
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def sdpa_ms(length: int, heads: int, head_dim: int, dense_mask: bool, reps: int = 7) -> float:
    """Median ms of one SDPA forward and its gradient w.r.t. the values.

    Args:
        length: sequence length.
        heads: attention heads.
        head_dim: per-head width.
        dense_mask: pass the L×L lower-triangular boolean mask instead of ``is_causal=True``.
        reps: timed calls.

    Returns:
        Median milliseconds.

    Example:
        >>> sdpa_ms(64, 2, 8, dense_mask=True, reps=1) > 0
        True
    """
    q, k, v = (torch.randn(1, heads, length, head_dim) for _ in range(3))
    v.requires_grad_()
    kwargs = ({"attn_mask": torch.ones(length, length, dtype=torch.bool).tril()} if dense_mask
              else {"is_causal": True})
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, **kwargs).sum(), v)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for dense in (False, True):
        label = "dense bool mask" if dense else "is_causal=True"
        print(f"{label}: {sdpa_ms(args.length, args.heads, args.head_dim, dense):.1f} ms")


if __name__ == "__main__":
    main()
