"""The rewrite passes of libra_fx, one module per pattern, in the order they run.

``REGISTRY`` maps a pass name to its :class:`~passes._graph.Pass`; ``GROUPS`` maps the paper's
ablation groups (``attention``, ``norm``, ``activation``, ``gate``) and ``generic`` to pass names.
Specific passes run first; the generic ones catch what they left.
"""
from __future__ import annotations

from . import (divisor, gated_activation, gated_product, l2_normalize, linearize_activation,
               multihead_attention, multiplicative_gate, normalization, power, sdpa_attention,
               softmax_attention)
from ._graph import Pass

_ORDER = (sdpa_attention, softmax_attention, multihead_attention, normalization, l2_normalize,
          gated_activation, multiplicative_gate, divisor, gated_product, power, linearize_activation)

REGISTRY: dict[str, Pass] = {module.PASS.name: module.PASS for module in _ORDER}

GROUPS: dict[str, list[str]] = {}
for _pass in REGISTRY.values():
    GROUPS.setdefault(_pass.group, []).append(_pass.name)

DEFAULT: tuple[str, ...] = tuple(REGISTRY)


def select(names=None) -> list[Pass]:
    """Passes named by pass or group names, in registry order; all passes when ``names`` is None.

    A :class:`Pass` object may be given too (a user's own rule); it runs after the registered ones.

    Example:
        >>> [p.name for p in select(["attention"])]
        ['sdpa_attention', 'softmax_attention', 'multihead_attention']
    """
    if names is None:
        return list(REGISTRY.values())
    if isinstance(names, str):
        names = [names]
    custom = [n for n in names if isinstance(n, Pass)]
    names = [n for n in names if not isinstance(n, Pass)]
    wanted: set[str] = set()
    for name in names:
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in REGISTRY:
            wanted.add(name)
        else:
            known = ", ".join(sorted(set(REGISTRY) | set(GROUPS)))
            raise ValueError(f"unknown pass {name!r}; known passes and groups: {known}")
    return [p for name, p in REGISTRY.items() if name in wanted] + custom


__all__ = ["REGISTRY", "GROUPS", "DEFAULT", "Pass", "select"]
