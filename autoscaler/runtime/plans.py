"""The plans folder: recommend-mode plans exported for approval, approved ones taken back.

Where it sits: the live ``PlanStore`` of the Cycle (``autoscaler.runtime.ports``). A plan is
``state_dir/plans/<plan id>.json``; ``autoscaler approve ID`` adds the id to the controls, and
the next cycle runs it once, marking it with ``<plan id>.done`` first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from autoscaler.model import Plan
from autoscaler.runtime.logs import event

log = logging.getLogger("autoscaler.controller")
PLAN_ID = re.compile(r"plan-[0-9a-f]{12}")


class PlanFolder:
    def __init__(self, folder: Path, clock: Callable[[], float]) -> None:
        self.folder = folder
        self.clock = clock
        folder.mkdir(parents=True, exist_ok=True)

    def export(self, plan: Plan) -> str:
        path = self.folder / f"{plan.id}.json"
        path.write_text(plan.to_json())
        return str(path)

    def take_approved(self, approved: frozenset[str]) -> list[Plan]:
        plans = []
        for plan_id in sorted(approved):
            if not PLAN_ID.fullmatch(plan_id):
                continue  # not a plan id: never a path out of the plans folder
            path = self.folder / f"{plan_id}.json"
            done = path.with_suffix(".done")
            if path.exists() and not done.exists():
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
                done.write_text(f"{self.clock()}\n")
        return plans
