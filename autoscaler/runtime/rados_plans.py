"""Recommend-mode plans in RADOS: exported by the leader, listed and approved from any machine.

Where it sits: the ``PlanStore`` of ``state: {kind: rados}``, in place of the plans folder
(``autoscaler.runtime.plans``), with the same rules: a plan is exported for approval, and
``autoscaler approve ID`` (through the shared controls) lets the next cycle of whichever machine
leads take it once, marking it taken first; the same recommendation is written once per
``dedupe_s``; plans older than ``keep_s`` are removed. Keys of the leader's fenced object:
``plan/<id>`` (the plan and when it was exported) and ``taken/<id>`` (when it was taken).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from autoscaler.model import Plan
from autoscaler.runtime.logs import event
from autoscaler.runtime.plans import DEDUPE_S, KEEP_S, PLAN_ID, SWEEP_EVERY_S
from autoscaler.runtime.rados_state import FencedObject

log = logging.getLogger("autoscaler.controller")


@dataclass(frozen=True)
class StoredPlan:
    plan: Plan
    exported_at: float
    taken: bool


class RadosPlans:
    def __init__(
        self,
        store: FencedObject,
        clock: Callable[[], float],
        *,
        keep_s: float = KEEP_S,
        dedupe_s: float = DEDUPE_S,
    ) -> None:
        self.store = store
        self.clock = clock
        self.keep_s = keep_s
        self.dedupe_s = dedupe_s
        self._swept_at = -SWEEP_EVERY_S

    def export(self, plan: Plan) -> str:
        now = self.clock()
        self._sweep(now)
        signature = plan.signature()
        for stored in self.list():
            if (
                not stored.taken
                and now - stored.exported_at < self.dedupe_s
                and stored.plan.signature() == signature
            ):
                return _where(self.store, stored.plan.id)  # the same recommendation waits
        body = {"exported_at": now, "plan": json.loads(plan.to_json())}
        self.store.write({f"plan/{plan.id}": json.dumps(body).encode()})
        return _where(self.store, plan.id)

    def take_approved(self, approved: frozenset[str]) -> list[Plan]:
        plans = []
        for plan_id in sorted(approved):
            if not PLAN_ID.fullmatch(plan_id):
                continue
            found = self.store.read([f"plan/{plan_id}", f"taken/{plan_id}"])
            if f"plan/{plan_id}" not in found or f"taken/{plan_id}" in found:
                continue
            # Marked first: a crash after this loses the approval, never runs it twice.
            self.store.write({f"taken/{plan_id}": str(self.clock()).encode()})
            try:
                plans.append(_parse(found[f"plan/{plan_id}"], taken=False).plan)
            except ValueError as exc:
                event(
                    log,
                    "approved plan unreadable",
                    logging.ERROR,
                    plan=plan_id,
                    error=str(exc)[:200],
                )
        return plans

    def list(self) -> list[StoredPlan]:
        """Every plan kept, oldest first (``autoscaler plans`` reads this from any machine)."""
        taken = {k.removeprefix("taken/") for k, _ in self.store.scan("taken/")}
        out = []
        for key, value in self.store.scan("plan/"):
            try:
                out.append(_parse(value, taken=key.removeprefix("plan/") in taken))
            except ValueError:
                continue
        return sorted(out, key=lambda s: s.exported_at)

    def _sweep(self, now: float) -> None:
        if now - self._swept_at < SWEEP_EVERY_S:
            return
        self._swept_at = now
        old = [s.plan.id for s in self.list() if now - s.exported_at > self.keep_s]
        if old:
            self.store.write({}, remove=[f"plan/{i}" for i in old] + [f"taken/{i}" for i in old])


def _parse(value: bytes, *, taken: bool) -> StoredPlan:
    body = json.loads(value)
    return StoredPlan(
        plan=Plan.from_json(json.dumps(body["plan"])),
        exported_at=float(body["exported_at"]),
        taken=taken,
    )


def _where(store: FencedObject, plan_id: str) -> str:
    return f"rados:{store.obj}/plan/{plan_id}"
