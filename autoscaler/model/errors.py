"""Error classes shared by collectors, policies, actuators and the controller.

Where it sits: every stage raises one of these so the loop can decide what to do without
knowing the stage. ``TemporaryError`` is retried after ``retry_after`` seconds (a host that
timed out, a lock held by someone else); ``PermanentError`` is not (a precondition that cannot
hold, a refused operation). One bad host never stops the loop: the caller marks its scope stale.
"""

from __future__ import annotations


class AutoscalerError(Exception):
    """Base class of every error the project raises on purpose."""


class TemporaryError(AutoscalerError):
    """Something that may work later; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        if retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {retry_after}")
        self.retry_after = retry_after


class PermanentError(AutoscalerError):
    """Something that will not work by retrying; report it and move on."""


class PreconditionFailed(PermanentError):
    """An action's precondition does not hold against live state (nothing was changed)."""


class RefusedAction(PermanentError):
    """An action the controller refuses by rule (vCPU unplug, migrating an SR-IOV VM, ...)."""


class DeposedLeader(PermanentError):
    """An action carries a lease generation older than the current leader's."""


class ConfigError(PermanentError):
    """A policy, controller, plan or snapshot file is invalid.

    The message names the file, the line and the field, and says what was expected, so an
    operator can fix the file without reading a traceback.
    """

    def __init__(self, file: str, problems: list[ConfigProblem]) -> None:
        self.file = file
        self.problems = problems
        lines = [f"{file}: {len(problems)} problem(s)"] if len(problems) > 1 else []
        lines += [p.render(file) for p in problems]
        super().__init__("\n".join(lines))


class ConfigProblem:
    """One problem in a file: where (line, field path) and what was expected."""

    __slots__ = ("field", "file", "line", "message")

    def __init__(
        self, *, line: int | None, field: str, message: str, file: str | None = None
    ) -> None:
        self.line = line
        self.field = field
        self.message = message
        self.file = file

    def render(self, file: str) -> str:
        own = self.file or file
        where = f"{own}:{self.line}" if self.line is not None else own
        return f"{where}: field '{self.field}': {self.message}"

    def __repr__(self) -> str:
        return (
            f"ConfigProblem(file={self.file!r}, line={self.line!r}, field={self.field!r},"
            f" message={self.message!r})"
        )
