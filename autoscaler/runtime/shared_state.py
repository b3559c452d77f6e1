"""The controller's state in a Ceph pool, opened once per process: ``state: {kind: rados}``.

Where it sits: built by the runner (and the operator's CLI) from the controller file, next to
the RADOS lease (``autoscaler.runtime.wiring.open_lease``), and handed to what keeps state: the
executor's journal (``RadosJournal``), the controller's memory (``RadosMemory``), the
recommended plans (``RadosPlans``) and the operator controls (``RadosControls``). The leader's
objects are fenced by its lease generation (``autoscaler.runtime.rados_state``); the lease
claims them as it is acquired.

The demand history is each machine's own (the SQLite history of ``state_dir``: a standby
collects and records its own); the leader copies its busy cores into the pool as well
(``SharedHistory``), for a machine that starts without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rados

from autoscaler.config import ControllerConfig
from autoscaler.runtime.journal import Stamper
from autoscaler.runtime.rados_controls import RadosControls
from autoscaler.runtime.rados_history import SharedHistory
from autoscaler.runtime.rados_journal import RadosJournal
from autoscaler.runtime.rados_memory import RadosMemory
from autoscaler.runtime.rados_plans import RadosPlans
from autoscaler.runtime.rados_state import FencedObject, StoreUnavailable


@dataclass
class SharedState:
    """The pool's state objects for this process (one I/O context, in the fleet's namespace)."""

    ioctx: Any
    fenced: FencedObject
    controls: RadosControls

    def journal(self, stamper: Stamper | None = None) -> RadosJournal:
        return RadosJournal(self.fenced, stamper)

    def memory(self, clock: Callable[[], float]) -> RadosMemory:
        return RadosMemory(self.fenced, clock)

    def plans(self, clock: Callable[[], float]) -> RadosPlans:
        return RadosPlans(self.fenced, clock)

    def history(self, keep_s: float) -> SharedHistory:
        return SharedHistory(self.ioctx, keep_s)

    def write_as(self, generation: Callable[[], int | None]) -> None:
        """Writes carry what ``generation`` gives: the lease's last generation (the lease is
        made after the state, as it claims it)."""
        self.fenced.writer = generation


def open_shared_state(config: ControllerConfig, cluster: Any) -> SharedState | None:
    """The shared state the controller file names (None for ``state: {kind: local}``)."""
    if config.state.kind != "rados":
        return None
    try:
        ioctx = cluster.open_ioctx(config.state_pool)
    except rados.Error as exc:
        raise StoreUnavailable(
            f"cannot open the state pool {config.state_pool!r}: {exc}", retry_after=5
        ) from exc
    ioctx.set_namespace(config.state.namespace)
    return SharedState(
        ioctx=ioctx,
        fenced=FencedObject(ioctx, writer=lambda: None),
        controls=RadosControls(ioctx),
    )
