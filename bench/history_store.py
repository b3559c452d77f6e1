"""Benchmark of the history store: 100 businesses x 14 days at 1-minute resolution.

Where it sits: beside the controller, not in the flow. ``python -m bench.history_store --json``
backfills the store the way a controller restarted on old data would (bulk), times one cycle's
write of every business's figures, reads each business's 14 days back as a pandas Series, and
reports the file size. Figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from autoscaler.runtime.history import BUSY_CORES, HistoryStore, SeriesKind

DAY_S = 86400


def run(businesses: int, days: int, folder: Path) -> dict[str, object]:
    rng = np.random.default_rng(7)
    end = 1_800_000_000.0 - (1_800_000_000 % 60)
    minutes = days * 1440
    stamps = end - 60.0 * np.arange(minutes, 0, -1)
    names = [f"biz-{i:03d}" for i in range(businesses)]
    store = HistoryStore(folder / "history.sqlite")
    began = time.perf_counter()
    for name in names:
        values = 4 + 2 * np.sin(stamps / DAY_S * 2 * np.pi) + rng.normal(0, 0.3, minutes)
        store.record(
            SeriesKind.BUSINESS,
            name,
            BUSY_CORES,
            zip(stamps.tolist(), values.tolist(), strict=True),
        )
    backfill_s = time.perf_counter() - began
    cycle_times = []
    for cycle in range(20):
        when = end + 60.0 * cycle
        began = time.perf_counter()
        for name in names:
            store.record_business(name, when, busy_cores=3.5, instances=4.0)
        cycle_times.append(time.perf_counter() - began)
    store.close()
    reopened = HistoryStore(folder / "history.sqlite")  # reads after a restart
    read_times = []
    rows = 0
    for name in names:
        began = time.perf_counter()
        series = reopened.busy_cores(name, start=end - days * DAY_S, end=end + DAY_S)
        read_times.append(time.perf_counter() - began)
        rows += len(series)
    size = reopened.disk_bytes()
    reopened.close()
    return {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or "?"},
        "businesses": businesses,
        "days": days,
        "points": businesses * minutes,
        "metrics": {
            "backfill_s": round(backfill_s, 3),
            "backfill_points_per_s": round(businesses * minutes / backfill_s),
            "cycle_write_p50_s": round(statistics.median(cycle_times), 4),
            "cycle_write_max_s": round(max(cycle_times), 4),
            "read_14d_p50_s": round(statistics.median(read_times), 4),
            "read_14d_max_s": round(max(read_times), 4),
            "rows_read": rows,
            "disk_mib": round(size / 2**20, 1),
        },
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--businesses", type=int, default=100)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.businesses, args.days, Path(tmp))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result["metrics"].items():  # type: ignore[attr-defined]
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
