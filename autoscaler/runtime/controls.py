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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autoscaler.model.controls import ALL, Controls
from autoscaler.runtime.private_files import (
    ensure_private_dir,
    open_private_text,
    read_private_text,
    write_private_atomic,
)

__all__ = ["ControlFile"]


class ControlFile:
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

    def change(self, **changes: frozenset[str]) -> Controls:
        with self._locked():
            controls = self.read().model_copy(update=changes)
            controls = Controls.model_validate(controls.model_dump())
            self._write(controls)
            return controls

    def pause(self, business: str = ALL) -> Controls:
        return self.change(paused=self.read().paused | {business})

    def resume(self, business: str = ALL) -> Controls:
        paused = self.read().paused
        return self.change(paused=frozenset() if business == ALL else paused - {business})

    def cordon(self, host: str) -> Controls:
        return self.change(cordoned=self.read().cordoned | {host})

    def uncordon(self, host: str) -> Controls:
        c = self.read()
        return self.change(cordoned=c.cordoned - {host}, draining=c.draining - {host})

    def drain(self, host: str) -> Controls:
        c = self.read()
        return self.change(cordoned=c.cordoned | {host}, draining=c.draining | {host})

    def approve(self, plan_id: str) -> Controls:
        return self.change(approved=self.read().approved | {plan_id})
