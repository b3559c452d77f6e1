"""Benchmark of the action journal's cost per write: SQLite (local) against RADOS (shared).

Where it sits: beside the controller, not in the flow. ``python -m bench.journal --json``
starts the lab's Ceph (lab slot 7, two racks of two OSDs, size 2) under a temporary folder,
then writes the same sequence through each journal: per action an intent, two steps and an
outcome, as the executor does. It reports p50/p95 of one write (each waits until it is durable:
``synchronous=FULL`` for SQLite, the OSDs' acknowledgement for RADOS) and of ``unfinished``,
and stops Ceph. No domain stamping: that cost is the same for both. Figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rados

from autoscaler.model import CloneFromTemplate, Phase
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.rados_journal import RadosJournal
from autoscaler.runtime.rados_state import FencedObject
from lab import ceph
from lab.layout import LabLayout

RACKS = ("r1", "r2")
Journal = SqliteJournal | RadosJournal


def _quantiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=20)
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 3),
        "p95_ms": round(cuts[18] * 1000, 3),
        "count": len(samples),
    }


def _run(journal: Journal, actions: int, generation: int) -> dict[str, Any]:
    writes: list[float] = []
    reads: list[float] = []

    def timed(into: list[float], call: Callable[..., object], *args: object) -> None:
        began = time.perf_counter()
        call(*args)
        into.append(time.perf_counter() - began)

    for i in range(actions):
        action = CloneFromTemplate(
            business="web", vm=f"web-{i}", host="h1", reason="bench", lease_generation=generation
        )
        key = action.key
        timed(writes, journal.record_intent, "plan-000000000000", action, time.time())
        timed(writes, journal.record_step, key, "overlay-created", time.time())
        timed(writes, journal.record_step, key, "defined", time.time())
        timed(writes, journal.record_outcome, key, Phase.DONE, time.time(), "ok")
        timed(reads, journal.unfinished)
    return {"write": _quantiles(writes), "unfinished": _quantiles(reads)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the JSON figures")
    parser.add_argument("--actions", type=int, default=200, help="actions per journal")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    layout = LabLayout(slot=7, root=root)
    out: dict[str, Any] = {"actions": args.actions}
    try:
        cluster = ceph.start(layout, RACKS)
        with SqliteJournal(root / "journal.sqlite") as local:
            out["sqlite"] = _run(local, args.actions, 1)
        handle = rados.Rados(conffile=str(cluster.conffile), conf={"keyring": str(cluster.keyring)})
        handle.connect(timeout=30)
        try:
            ioctx = handle.open_ioctx(cluster.pool)
            ioctx.set_namespace(f"bench-{uuid.uuid4().hex[:8]}")
            fenced = FencedObject(ioctx, writer=lambda: 1)
            fenced.claim(1)
            out["rados"] = _run(RadosJournal(fenced), args.actions, 1)
            out["rados"]["osds"] = 2 * len(RACKS)
            out["rados"]["pool_size"] = 2
        finally:
            handle.shutdown()
    finally:
        ceph.stop(layout)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for kind in ("sqlite", "rados"):
            write, read = out[kind]["write"], out[kind]["unfinished"]
            print(
                f"{kind:6s} write p50 {write['p50_ms']} ms p95 {write['p95_ms']} ms;"
                f" unfinished p50 {read['p50_ms']} ms p95 {read['p95_ms']} ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
