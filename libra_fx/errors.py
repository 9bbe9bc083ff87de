"""User-facing errors: one line that names the model, the op and, where known, the source line.

Every error libra_fx raises on purpose is a :class:`LibraError`. Errors about bad arguments
(unknown pass or method, target out of range, inputs of the wrong shape or device) are
:class:`ArgumentError`, which is also a ``ValueError`` so that generic ``except ValueError`` code
keeps working.
"""
from __future__ import annotations


class LibraError(Exception):
    """Base class of libra_fx's errors; the message is meant for the user, not a traceback."""


class LibraWarning(UserWarning):
    """Base class of libra_fx's warnings (train mode, unbalanced ops, unsupported in-place ops)."""


class TraceError(LibraError):
    """No capture of the model succeeded."""

    def __init__(self, model_name: str, op: str, source: str | None, detail: str, hint: str = ""):
        self.model_name, self.op, self.source, self.detail, self.hint = model_name, op, source, detail, hint
        where = f" at {source}" if source else ""
        tail = f"; {hint}" if hint else ""
        super().__init__(f"cannot capture {model_name}: `{op}`{where}: {detail}{tail}")


#: how many unbalanced ops an error or warning message lists before "and N more"
LISTED_FINDINGS = 5


class UnbalancedError(LibraError):
    """``strict=True`` and some gradient-relevant op could not be balanced."""

    def __init__(self, model_name: str, findings: list):
        self.findings = findings
        listed = "; ".join(f"{f.op} in {f.module_path or '<root>'} ({f.reason})" for f in findings[:LISTED_FINDINGS])
        more = f" and {len(findings) - LISTED_FINDINGS} more" if len(findings) > LISTED_FINDINGS else ""
        super().__init__(f"{model_name}: {len(findings)} op(s) left unbalanced: {listed}{more}")


class ForwardMismatchError(LibraError):
    """The rewritten module's forward differs from the original's (a bug: please report it)."""


class ArgumentError(LibraError, ValueError):
    """A bad argument to the public API; the message says which and what is accepted."""


class UnknownPassError(ArgumentError):
    """``passes=[...]`` names a pass or group that does not exist."""


class UnknownMethodError(ArgumentError):
    """An attribution method name that does not exist."""


class TargetError(ArgumentError):
    """A target class index out of range, or a target of the wrong type or shape."""


class InputError(ArgumentError):
    """Inputs of the wrong type, rank or shape for the model."""


class DeviceMismatchError(InputError):
    """Inputs on a different device than the model's parameters."""
