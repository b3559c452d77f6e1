"""Operator controls: pause/resume, cordon/uncordon/drain, approve — through the state folder.

Where it sits: between the operator's CLI and the running controller. The CLI changes a small
JSON file in the state folder (0600, never through a symlink: ``private_files``) under an
flock; the controller reads it at the start of every
cycle. Nothing is sent over a socket, so the controls work while the controller is down too and
survive its restarts.
"""

from __future__ import annotations

import fcntl
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from autoscaler.model.controls import ALL, Controls
from autoscaler.runtime.private_files import (
    ensure_private_dir,
    open_private_text,
    read_private_text,
    write_private_atomic,
)

__all__ = ["ControlFile", "ControlsEditor"]


class ControlsEditor(ABC):
    """The operator's changes, each a function of the controls as they are when it is
    applied (so two operators' changes never lose one another), on whatever keeps them:
    ``read`` and ``update``."""

    @abstractmethod
    def read(self) -> Controls: ...

    @abstractmethod
    def update(self, edit: Callable[[Controls], Controls]) -> Controls:
        """Apply ``edit`` to the controls as they are now, atomically; the result."""

    def change(self, **changes: frozenset[str]) -> Controls:
        return self.update(lambda c: c.model_copy(update=changes))

    def pause(self, business: str = ALL) -> Controls:
        return self.update(lambda c: _with(c, paused=c.paused | {business}))

    def resume(self, business: str = ALL) -> Controls:
        return self.update(
            lambda c: _with(c, paused=frozenset() if business == ALL else c.paused - {business})
        )

    def cordon(self, host: str) -> Controls:
        return self.update(lambda c: _with(c, cordoned=c.cordoned | {host}))

    def uncordon(self, host: str) -> Controls:
        return self.update(
            lambda c: _with(c, cordoned=c.cordoned - {host}, draining=c.draining - {host})
        )

    def drain(self, host: str) -> Controls:
        return self.update(
            lambda c: _with(c, cordoned=c.cordoned | {host}, draining=c.draining | {host})
        )

    def approve(self, plan_id: str) -> Controls:
        return self.update(lambda c: _with(c, approved=c.approved | {plan_id}))


def _with(controls: Controls, **changes: frozenset[str]) -> Controls:
    """The controls changed and validated again (a name that is not one is refused)."""
    return Controls.model_validate(controls.model_copy(update=changes).model_dump())


class ControlFile(ControlsEditor):
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "controls.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self.path.parent)
        with open_private_text(self.path.with_suffix(".lock")) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> Controls:
        try:
            return Controls.model_validate_json(read_private_text(self.path))
        except FileNotFoundError:
            return Controls()

    def _write(self, controls: Controls) -> None:
        text = json.dumps(controls.model_dump(mode="json"), indent=1, sort_keys=True)
        write_private_atomic(self.path, text)

    def update(self, edit: Callable[[Controls], Controls]) -> Controls:
        with self._locked():
            controls = _with(edit(self.read()))
            self._write(controls)
            return controls
