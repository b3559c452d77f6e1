"""Machine-wide claim of a lab slot, so CI, a working session and a demo never collide.

Where it sits: the first step of ``lab up`` and the last of ``lab down``. A slot is a file in
the registry folder holding the root of the lab that owns it; changes happen under an flock.
A slot whose owner's state file is gone is free again.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lab.layout import MAX_SLOTS

REGISTRY = Path(os.environ.get("AUTOSCALER_LAB_REGISTRY", "/var/lib/autoscaler-lab/slots"))


@contextmanager
def _locked(registry: Path) -> Iterator[None]:
    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _owner(registry: Path, slot: int) -> Path | None:
    try:
        return Path((registry / str(slot)).read_text().strip())
    except FileNotFoundError:
        return None


def claim(root: Path, *, preferred: int | None = None, registry: Path = REGISTRY) -> int:
    """Claim a slot for the lab at ``root`` (its own slot again if it has one)."""
    root = root.resolve()
    with _locked(registry):
        owners = {s: _owner(registry, s) for s in range(MAX_SLOTS)}
        for slot, owner in owners.items():
            if owner == root:
                return slot
        candidates = [preferred] if preferred is not None else list(range(MAX_SLOTS))
        for slot in candidates:
            owner = owners.get(slot)
            if owner is None or not (owner / "lab-state.json").exists():
                (registry / str(slot)).write_text(f"{root}\n")
                return slot
        taken = preferred if preferred is not None else "every slot"
        raise RuntimeError(f"lab slot {taken} is taken by another lab (see {registry})")


def release(root: Path, *, registry: Path = REGISTRY) -> None:
    root = root.resolve()
    with _locked(registry):
        for slot in range(MAX_SLOTS):
            if _owner(registry, slot) == root:
                (registry / str(slot)).unlink(missing_ok=True)
