"""The history store: derived per-VM and per-business figures at 1-minute resolution (SQLite).

Where it sits: between the collectors and the Snapshot. Each cycle the controller writes the
figures it derived from the Samples (a business's busy cores and instances, a VM's utilisation)
here; the forecasts read them back as pandas Series indexed by a UTC ``DatetimeIndex``. Several
writes in one minute are averaged. Retention is bounded by age (at least 14 days, the forecasts'
horizon of history); the file survives restarts (WAL mode). One embedded SQLite file, no server.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Literal, overload

import pandas as pd

from autoscaler.model.names import check_name
from autoscaler.runtime.sqlite_wal import connect_private, use_wal

MINUTE_S = 60
MIN_RETENTION_DAYS = 14.0
PRUNE_EVERY_S = 3600.0
SCHEMA_VERSION = "1"
BUSY_CORES = "busy_cores"
_METRIC_RE = re.compile(r"\A[a-z][a-z0-9_]{0,62}\Z")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  metric TEXT NOT NULL,
  UNIQUE (kind, name, metric)
);
CREATE TABLE IF NOT EXISTS points (
  series INTEGER NOT NULL REFERENCES series(id),
  minute INTEGER NOT NULL,
  total REAL NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (series, minute)
) WITHOUT ROWID;
"""

UPSERT = (
    "INSERT INTO points (series, minute, total, n) VALUES (?, ?, ?, 1)"
    " ON CONFLICT (series, minute) DO UPDATE SET total = total + excluded.total, n = n + 1"
)


class SeriesKind(StrEnum):
    VM = "vm"
    BUSINESS = "business"


def check_metric(metric: str) -> str:
    if not _METRIC_RE.match(metric):
        raise ValueError(f"metric {metric!r} must be lowercase letters, digits and '_'")
    return metric


def _minute(timestamp: float) -> int:
    if not math.isfinite(timestamp):
        raise ValueError(f"timestamp {timestamp!r} is not finite")
    return math.floor(timestamp / MINUTE_S)


class HistoryStore:
    """Per-VM and per-business time series in one SQLite file; thread-safe."""

    def __init__(self, path: Path, *, retention_days: float = 35.0) -> None:
        if retention_days < MIN_RETENTION_DAYS:
            raise ValueError(
                f"retention_days must be >= {MIN_RETENTION_DAYS}, got {retention_days}"
            )
        self.path = path
        self.retention_s = retention_days * 86400.0
        self._db = connect_private(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._series_ids: dict[tuple[str, str, str], int] = {}
        self._last_prune: float | None = None
        with self._lock:
            self._db.execute("PRAGMA busy_timeout=5000")
            use_wal(self._db)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
            (version,) = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if version != SCHEMA_VERSION:
            raise ValueError(f"{path}: history schema {version!r}, expected {SCHEMA_VERSION!r}")

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @overload
    def _series_id(
        self, kind: SeriesKind, name: str, metric: str, *, create: Literal[True]
    ) -> int: ...
    @overload
    def _series_id(
        self, kind: SeriesKind, name: str, metric: str, *, create: bool
    ) -> int | None: ...
    def _series_id(self, kind: SeriesKind, name: str, metric: str, *, create: bool) -> int | None:
        key = (kind.value, name, metric)
        if key in self._series_ids:
            return self._series_ids[key]
        row = self._db.execute(
            "SELECT id FROM series WHERE kind=? AND name=? AND metric=?", key
        ).fetchone()
        if row is None:
            if not create:
                return None
            row = self._db.execute(
                "INSERT INTO series (kind, name, metric) VALUES (?, ?, ?) RETURNING id", key
            ).fetchone()
        self._series_ids[key] = int(row[0])
        return int(row[0])

    # --- writing -------------------------------------------------------------------------

    def record(
        self,
        kind: SeriesKind,
        name: str,
        metric: str,
        points: Iterable[tuple[float, float]],
    ) -> int:
        """Add ``(timestamp, value)`` points to one series; returns how many were stored.

        Non-finite values are refused (a missing value is absent, never stored as anything).
        """
        check_name(name, what=kind.value)
        check_metric(metric)
        rows: list[tuple[int, int, float]] = []
        with self._lock:
            series = self._series_id(kind, name, metric, create=True)
            for timestamp, value in points:
                if not math.isfinite(value):
                    raise ValueError(f"{kind.value} {name} {metric}: value {value!r} is not finite")
                rows.append((series, _minute(timestamp), float(value)))
            self._db.execute("BEGIN")
            try:
                self._db.executemany(UPSERT, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return len(rows)

    def record_figures(
        self, kind: SeriesKind, name: str, when: float, figures: Mapping[str, float]
    ) -> None:
        """Store several figures of one VM or business observed at ``when`` in one transaction."""
        check_name(name, what=kind.value)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for metric, value in figures.items():
                    check_metric(metric)
                    if not math.isfinite(value):
                        raise ValueError(f"{kind.value} {name} {metric}: {value!r} is not finite")
                    series = self._series_id(kind, name, metric, create=True)
                    self._db.execute(UPSERT, (series, _minute(when), float(value)))
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                self._series_ids.clear()  # ids created in the rolled-back transaction are gone
                raise
        self._maybe_prune(when)

    def record_many(
        self, kind: SeriesKind, when: float, figures: Mapping[str, Mapping[str, float]]
    ) -> int:
        """Store the figures of many VMs or businesses observed at ``when`` in one transaction
        (one collection cycle of a large fleet); returns how many values were stored."""
        rows: list[tuple[int, int, float]] = []
        minute = _minute(when)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for name, values in figures.items():
                    check_name(name, what=kind.value)
                    for metric, value in values.items():
                        check_metric(metric)
                        if not math.isfinite(value):
                            raise ValueError(
                                f"{kind.value} {name} {metric}: {value!r} is not finite"
                            )
                        series = self._series_id(kind, name, metric, create=True)
                        rows.append((series, minute, float(value)))
                self._db.executemany(UPSERT, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                self._series_ids.clear()
                raise
        self._maybe_prune(when)
        return len(rows)

    def record_business(self, business: str, when: float, **figures: float) -> None:
        self.record_figures(SeriesKind.BUSINESS, business, when, figures)

    def record_vm(self, vm: str, when: float, **figures: float) -> None:
        self.record_figures(SeriesKind.VM, vm, when, figures)

    def _rollback(self) -> None:
        # SQLite rolls the transaction back by itself on some errors (a full disk: SQLITE_FULL);
        # a ROLLBACK then fails with "no transaction is active" and would hide the real error.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    # --- retention -----------------------------------------------------------------------

    def _maybe_prune(self, now: float) -> None:
        if self._last_prune is None or now - self._last_prune >= PRUNE_EVERY_S:
            self.prune(now)

    def prune(self, now: float) -> int:
        """Delete points older than the retention; returns how many were deleted."""
        oldest = _minute(now - self.retention_s)
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM series").fetchall()]
            deleted = 0
            self._db.execute("BEGIN")
            try:
                for series in ids:  # one primary-key range per series: no index on minute needed
                    deleted += self._db.execute(
                        "DELETE FROM points WHERE series=? AND minute < ?", (series, oldest)
                    ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()  # never leave a transaction open: every later write would fail
                raise
            self._db.execute(
                "DELETE FROM series WHERE id NOT IN (SELECT DISTINCT series FROM points)"
            )
            self._series_ids.clear()
            self._last_prune = now
        return int(deleted)

    # --- reading -------------------------------------------------------------------------

    def names(self, kind: SeriesKind) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT name FROM series WHERE kind=? ORDER BY name", (kind.value,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def series(
        self,
        kind: SeriesKind,
        name: str,
        metric: str,
        *,
        start: float | None = None,
        end: float | None = None,
        regular: bool = False,
    ) -> pd.Series:
        """One figure over ``[start, end)`` (epoch seconds) as a float Series on a UTC index.

        Minutes with no data are absent, or NaN with ``regular=True`` (never zero).
        """
        low = _minute(start) if start is not None else -(2**62)
        high = _minute(end) if end is not None else 2**62
        with self._lock:
            series = self._series_id(kind, name, metric, create=False)
            rows = (
                []
                if series is None
                else self._db.execute(
                    "SELECT minute, total / n FROM points"
                    " WHERE series=? AND minute >= ? AND minute < ? ORDER BY minute",
                    (series, low, high),
                ).fetchall()
            )
        index = pd.to_datetime([r[0] * MINUTE_S for r in rows], unit="s", utc=True)
        result = pd.Series([float(r[1]) for r in rows], index=index, name=metric, dtype="float64")
        result.index.name = "time"
        if regular and not result.empty:
            result = result.asfreq("1min")
        return result

    def frame(
        self,
        kind: SeriesKind,
        name: str,
        *,
        start: float | None = None,
        end: float | None = None,
    ) -> pd.DataFrame:
        """Every figure of one VM or business as columns of a DataFrame on a UTC index."""
        with self._lock:
            metrics = [
                str(r[0])
                for r in self._db.execute(
                    "SELECT metric FROM series WHERE kind=? AND name=? ORDER BY metric",
                    (kind.value, name),
                ).fetchall()
            ]
        columns = {m: self.series(kind, name, m, start=start, end=end) for m in metrics}
        if not columns:
            return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="time"))
        return pd.DataFrame(columns)

    def busy_cores(
        self, business: str, *, start: float | None = None, end: float | None = None
    ) -> pd.Series:
        """A business's busy cores (the forecasts' input), one value per minute."""
        return self.series(SeriesKind.BUSINESS, business, BUSY_CORES, start=start, end=end)

    def disk_bytes(self) -> int:
        """Size of the database file and its WAL, for the benchmark and the operators."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
