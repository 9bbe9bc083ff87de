"""What a transform did, as plain data: rewrites made, ops left unbalanced, timings."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch.fx as fx

from .analysis import Facts
from .module_paths import module_path, source_line


@dataclass(frozen=True)
class Rewrite:
    """One node a pass rewrote."""

    pass_name: str
    node: str
    op: str
    module_path: str
    source: Optional[str]


@dataclass(frozen=True)
class Finding:
    """One gradient-relevant op the engine could not balance."""

    node: str
    op: str
    module_path: str
    reason: str
    source: Optional[str]

    def __str__(self) -> str:
        where = f" ({self.source})" if self.source else ""
        return f"{self.op} in {self.module_path or '<root>'}: {self.reason}{where}"


@dataclass
class TransformReport:
    """Attached to a transformed module as ``libra_report``.

    Attributes:
        model_name: class (and timm architecture) of the original model.
        traced: the captured GraphModule before rewriting (shares parameters).
        rewrites: every rewrite, in the order made.
        unbalanced: gradient-relevant ops still unbalanced after all passes.
        passes: names of the passes that ran.
        timings: seconds spent in each stage (``trace``, ``rewrite``, ``analyse``, ``recompile``).
    """

    model_name: str
    traced: fx.GraphModule
    rewrites: list[Rewrite] = field(default_factory=list)
    unbalanced: list[Finding] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of rewrites per pass."""
        out: dict[str, int] = {}
        for rewrite in self.rewrites:
            out[rewrite.pass_name] = out.get(rewrite.pass_name, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {"model": self.model_name, "passes": self.passes, "counts": self.counts(),
                "rewrites": [asdict(r) for r in self.rewrites],
                "unbalanced": [asdict(f) for f in self.unbalanced], "timings": self.timings}


def rewrite_record(pass_name: str, facts: Facts, node: fx.Node) -> Rewrite:
    return Rewrite(pass_name, node.name, facts.name(node), module_path(node), source_line(node))


def finding_record(facts: Facts, node: fx.Node) -> Finding:
    return Finding(node.name, facts.name(node), module_path(node), facts.verdicts[node].reason, source_line(node))
