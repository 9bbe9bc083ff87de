"""User-facing errors: one line that names the model, the op and, where known, the source line."""
from __future__ import annotations


class LibraError(Exception):
    """Base class of libra_fx's errors; the message is meant for the user, not a traceback."""


class TraceError(LibraError):
    """No capture of the model succeeded."""

    def __init__(self, model_name: str, op: str, source: str | None, detail: str):
        self.model_name, self.op, self.source, self.detail = model_name, op, source, detail
        where = f" at {source}" if source else ""
        super().__init__(f"cannot capture {model_name}: `{op}`{where}: {detail}")


class UnbalancedError(LibraError):
    """``strict=True`` and some gradient-relevant op could not be balanced."""

    def __init__(self, model_name: str, findings: list):
        self.findings = findings
        listed = "; ".join(f"{f.op} in {f.module_path or '<root>'} ({f.reason})" for f in findings[:5])
        more = f" and {len(findings) - 5} more" if len(findings) > 5 else ""
        super().__init__(f"{model_name}: {len(findings)} op(s) left unbalanced: {listed}{more}")


class ForwardMismatchError(LibraError):
    """The rewritten module's forward differs from the original's (a bug: please report it)."""
