"""The controller's memory in one JSON file of the state folder, and its restoring at start.

Where it sits: the local ``MemoryStore`` (``autoscaler.model.memory_store``). The live
controller builds one on ``state_dir/memory.json``, restores its ``ControllerMemory`` from it
at start (``restore_memory``), and the ``Cycle`` saves after executed actions and after each
SLA interval. The simulator keeps no store.

The file is private and written atomically: a temporary file in the same folder, created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 (never through a symlink planted in its place),
written, fsynced, renamed over the record, and the folder fsynced. The record is read with
``O_NOFOLLOW`` too. A record that cannot be read is kept aside (``memory.json.unreadable-<time>``)
and reported; one written by a newer controller is refused with a ``ConfigError`` and left as
it is (an older controller must not overwrite what it does not understand).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from autoscaler.model import (
    MEMORY_SCHEMA_VERSION,
    ConfigError,
    ConfigProblem,
    ControllerRecord,
    MemoryStore,
    UnreadableRecord,
)
from autoscaler.runtime.logs import event
from autoscaler.runtime.memory import ControllerMemory

MAX_RECORD_BYTES = 256 * 1024 * 1024


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, mode 0600, never following a symlink."""
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:  # left by a crash mid-write (or planted): unlink never follows
        tmp.unlink()
        fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_private(path: Path) -> bytes | None:
    """The bytes of ``path``, None if it does not exist; a symlink is refused (ELOOP)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_RECORD_BYTES + 1)


class MemoryFile:
    """``MemoryStore`` on one file (``state_dir/memory.json``)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock

    def save(self, record: ControllerRecord) -> None:
        write_private(self.path, record.model_dump_json().encode())

    def load(self) -> ControllerRecord | None:
        try:
            raw = read_private(self.path)
        except OSError as exc:  # a symlink in its place (ELOOP), a folder, no permission
            raise UnreadableRecord(f"{self.path}: cannot be read: {exc}") from exc
        if raw is None:
            return None
        try:
            return parse_record(raw, str(self.path))
        except (ValueError, ValidationError) as exc:  # json and pydantic errors included
            kept = self._set_aside()
            why = str(exc).splitlines()[0][:200]
            raise UnreadableRecord(f"{self.path}: not a memory record: {why}", kept) from exc

    def _set_aside(self) -> str | None:
        aside = self.path.with_name(f"{self.path.name}.unreadable-{int(self.clock())}")
        try:
            os.replace(self.path, aside)
        except OSError:
            return None
        return str(aside)


def parse_record(raw: bytes, where: str) -> ControllerRecord:
    """The record in ``raw``: ``ValueError`` or ``ValidationError`` if it is not one,
    ``ConfigError`` (field ``schema_version``) if a newer controller wrote it."""
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
    data = json.loads(raw)
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and version > MEMORY_SCHEMA_VERSION:
        raise ConfigError(
            where,
            [
                ConfigProblem(
                    line=None,
                    field="schema_version",
                    message=f"{version} is newer than this controller reads"
                    f" ({MEMORY_SCHEMA_VERSION}): it was written by a newer controller; run"
                    " that one, or move the record aside to start without its caps, cooldowns"
                    " and SLA ledgers",
                )
            ],
        )
    return ControllerRecord.model_validate(data)


def restore_memory(store: MemoryStore | None, now: float, log: logging.Logger) -> ControllerMemory:
    """The memory saved in ``store``, or a fresh one without a store or a record."""
    saved = saved_memory(store, now, log)
    return saved if saved is not None else ControllerMemory()


def saved_memory(
    store: MemoryStore | None, now: float, log: logging.Logger
) -> ControllerMemory | None:
    """The memory saved in ``store``; None without a store or a record. A record that cannot
    be read starts the controller conservatively: logged as an error, every business's
    cooldowns counting from ``now`` (no retire within its stabilisation window), the bytes kept
    aside by the store. A record from a newer controller raises ``ConfigError``."""
    if store is None:
        return None
    try:
        record = store.load()
    except UnreadableRecord as exc:
        event(
            log,
            "saved memory unreadable: starting conservatively",
            logging.ERROR,
            error=str(exc),
            kept_at=exc.kept_at,
        )
        return ControllerMemory(conservative_since=now)
    if record is None:
        return None
    event(
        log,
        "memory restored",
        saved_at=record.saved_at,
        businesses=sorted(set(record.recent_actions) | set(record.ledgers)),
    )
    return ControllerMemory.from_record(record)
