"""The plans folder: recommend-mode plans exported for approval, approved ones taken back.

Where it sits: the live ``PlanStore`` of the Cycle (``autoscaler.runtime.ports``). A plan is
``state_dir/plans/<plan id>.json``; ``autoscaler approve ID`` adds the id to the controls, and
the next cycle takes it once, marking it with ``<plan id>.done`` first (one approval, one
execution; the Cycle then re-validates it with ``policies.approvals``).

Recommendations are deduplicated: while a plan that does the same thing (``Plan.signature``)
waits for approval, the same recommendation made again within ``dedupe_s`` is not written
again, so an operator sees one plan every few minutes, not one per cycle (after ``dedupe_s`` a
fresh one is written, so a recommendation never points only at a plan whose approval has
expired). Files older than ``keep_s`` are removed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from autoscaler.model import Plan
from autoscaler.runtime.logs import event
from autoscaler.runtime.private_files import ensure_private_dir, write_private_atomic

log = logging.getLogger("autoscaler.controller")
PLAN_ID = re.compile(r"plan-[0-9a-f]{12}")
KEEP_S = 86_400.0
DEDUPE_S = 300.0
SWEEP_EVERY_S = 60.0


class PlanFolder:
    def __init__(
        self,
        folder: Path,
        clock: Callable[[], float],
        *,
        keep_s: float = KEEP_S,
        dedupe_s: float = DEDUPE_S,
    ) -> None:
        self.folder = folder
        self.clock = clock
        self.keep_s = keep_s
        self.dedupe_s = dedupe_s
        ensure_private_dir(folder)
        self._waiting: dict[str, tuple[str, float]] = {}
        """signature -> (plan id, exported at) of plans waiting for approval."""
        self._swept_at = -SWEEP_EVERY_S
        for path in folder.glob("plan-*.json"):
            if path.with_suffix(".done").exists():
                continue
            try:
                plan = Plan.from_json(path.read_text())
            except (OSError, ValueError):
                continue
            self._waiting[plan.signature()] = (plan.id, path.stat().st_mtime)

    def export(self, plan: Plan) -> str:
        now = self.clock()
        self._sweep(now)
        signature = plan.signature()
        waiting = self._waiting.get(signature)
        if waiting is not None and now - waiting[1] < self.dedupe_s:
            path = self.folder / f"{waiting[0]}.json"
            if path.exists() and not path.with_suffix(".done").exists():
                return str(path)  # the same recommendation waits already
        path = self.folder / f"{plan.id}.json"
        write_private_atomic(path, plan.to_json())
        self._waiting[signature] = (plan.id, now)
        return str(path)

    def take_approved(self, approved: frozenset[str]) -> list[Plan]:
        plans = []
        for plan_id in sorted(approved):
            if not PLAN_ID.fullmatch(plan_id):
                continue  # not a plan id: never a path out of the plans folder
            path = self.folder / f"{plan_id}.json"
            done = path.with_suffix(".done")
            if not path.exists() or done.exists():
                continue
            # Marked first: a crash after this loses the approval, never runs it twice.
            write_private_atomic(done, f"{self.clock()}\n")
            try:
                plans.append(Plan.from_json(path.read_text()))
            except (OSError, ValueError) as exc:  # a bad file must not stop every cycle
                event(
                    log,
                    "approved plan unreadable",
                    logging.ERROR,
                    plan=plan_id,
                    error=str(exc).splitlines()[0][:200],
                )
        return plans

    def _sweep(self, now: float) -> None:
        """Remove plan files (and their marks) older than ``keep_s``, at most once a minute."""
        if now - self._swept_at < SWEEP_EVERY_S:
            return
        self._swept_at = now
        for path in self.folder.glob("plan-*"):
            try:
                if now - path.stat().st_mtime > self.keep_s:
                    path.unlink()
            except OSError:
                continue
        self._waiting = {
            s: (pid, at) for s, (pid, at) in self._waiting.items() if now - at <= self.keep_s
        }
