"""The rewrite passes of libra_fx, one module per pattern, in the order they run.

``REGISTRY`` maps a pass name to its :class:`~passes.api.Pass`; ``GROUPS`` maps the paper's
ablation groups (``attention``, ``norm``, ``activation``, ``gate``) and ``generic`` to pass names.
:func:`select` turns names, groups and :class:`~passes.api.Pass` objects into the list
``libra_fx.transform(passes=...)`` runs. To run every built-in pass and one of your own (a list with a :class:`Pass` runs in the order given)::

    libra_fx.transform(model, passes=[MY_PASS, *passes.REGISTRY])

(writing a pass: :mod:`passes.api` and the README's "Writing your own pass").
"""
from __future__ import annotations

from . import (divisor, gated_activation, gated_product, l2_normalize, linearize_activation,
               multihead_attention, multiplicative_gate, normalization, power, sdpa_attention,
               softmax_attention)
from .api import Pass

# The order is part of the semantics, so it is written out rather than discovered: specific
# patterns run before the generic ones that would also match them, and passes that need balanced
# inputs run after the passes that balance them (the engine repeats the list, MAX_ROUNDS times at
# most, for what an earlier pass could only see after a later one).
# * attention first: ``A·V`` is an attention weighting, not a gated product (``gated_product``
#   skips softmax-weighted factors and leaves them to these passes);
# * the specific norm and activation rules (``normalization``, ``l2_normalize``,
#   ``gated_activation``) before the passes for hand-written forms (``multiplicative_gate``,
#   ``divisor``), which catch what they leave;
# * ``gated_product`` and ``power`` after those: they scale only products of balanced factors;
# * ``linearize_activation`` (generic) last: it also matches GELU/SiLU/Mish, which
#   ``gated_activation`` rewrites with their exact gate.
_ORDER = (sdpa_attention, softmax_attention, multihead_attention, normalization, l2_normalize,
          gated_activation, multiplicative_gate, divisor, gated_product, power, linearize_activation)

REGISTRY: dict[str, Pass] = {module.PASS.name: module.PASS for module in _ORDER}

GROUPS: dict[str, list[str]] = {}
for _pass in REGISTRY.values():
    GROUPS.setdefault(_pass.group, []).append(_pass.name)


def select(names=None) -> list[Pass]:
    """Passes named by pass or group names, in registry order; all passes when ``names`` is None.

    :class:`Pass` objects may be given too (your own rules). A list that holds one runs in the order
    given (a group name expands in registry order), so a custom pass can run before the built-ins
    it must precede: ``select([my_pass, *REGISTRY])``; names alone always run in registry order.

    Args:
        names: ``None``, a pass or group name, or a sequence of names and :class:`Pass` objects.

    Returns:
        The passes to run, in order.

    Raises:
        ValueError: a name is neither a pass nor a group (lists the known ones).

    Example:
        >>> [p.name for p in select(["attention"])]
        ['sdpa_attention', 'softmax_attention', 'multihead_attention']
    """
    if names is None:
        return list(REGISTRY.values())
    if isinstance(names, str):
        names = [names]
    chosen: list[Pass] = []
    for name in names:
        if isinstance(name, Pass):
            chosen.append(name)
        elif name in GROUPS:
            chosen.extend(REGISTRY[n] for n in GROUPS[name])
        elif name in REGISTRY:
            chosen.append(REGISTRY[name])
        else:
            known = ", ".join(sorted(set(REGISTRY) | set(GROUPS)))
            raise ValueError(f"unknown pass {name!r}; known passes and groups: {known}")
    chosen = list(dict.fromkeys(chosen))  # once each, first place kept
    if all(p in REGISTRY.values() for p in chosen):  # names only: registry order
        chosen.sort(key=list(REGISTRY.values()).index)
    return chosen


__all__ = ["REGISTRY", "GROUPS", "Pass", "select"]
