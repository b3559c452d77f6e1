"""The history store on a real SQLite file: 14 days per business, restarts, retention."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autoscaler.runtime.history import BUSY_CORES, MIN_RETENTION_DAYS, HistoryStore, SeriesKind

DAY_S = 86400
END = 1_790_000_000.0 - (1_790_000_000 % 60)  # a minute boundary


def _fourteen_days(store: HistoryStore, business: str) -> np.ndarray:
    stamps = END - 60.0 * np.arange(14 * 1440, 0, -1)
    values = 3 + np.sin(stamps / DAY_S * 2 * np.pi)
    store.record(SeriesKind.BUSINESS, business, BUSY_CORES, zip(stamps, values, strict=True))
    return values


def test_fourteen_days_of_busy_cores_survive_a_restart_as_a_utc_minute_series(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.sqlite"
    with HistoryStore(path) as store:
        written = _fourteen_days(store, "web")
        _fourteen_days(store, "api")
    with HistoryStore(path) as reopened:
        series = reopened.busy_cores("web")
        assert reopened.names(SeriesKind.BUSINESS) == ["api", "web"]
    assert isinstance(series.index, pd.DatetimeIndex)
    assert str(series.index.tz) == "UTC"
    assert len(series) == 14 * 1440
    assert series.index[-1] == pd.Timestamp(END - 60, unit="s", tz="UTC")
    assert (series.index[1:] - series.index[:-1] == pd.Timedelta(minutes=1)).all()
    np.testing.assert_allclose(series.to_numpy(), written)


def test_several_writes_in_one_minute_are_averaged_and_a_window_is_half_open(
    tmp_path: Path,
) -> None:
    with HistoryStore(tmp_path / "h.sqlite") as store:
        store.record_business("web", END + 1, busy_cores=2.0, instances=3)
        store.record_business("web", END + 31, busy_cores=4.0, instances=3)
        store.record_business("web", END + 61, busy_cores=10.0, instances=4)
        frame = store.frame(SeriesKind.BUSINESS, "web")
        window = store.busy_cores("web", start=END, end=END + 60)
    assert frame["busy_cores"].tolist() == [3.0, 10.0]
    assert frame["instances"].tolist() == [3.0, 4.0]
    assert window.tolist() == [3.0]


def test_missing_minutes_stay_missing_never_zero(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite") as store:
        store.record_vm("web-1", END, cpu_utilisation=0.5)
        store.record_vm("web-1", END + 180, cpu_utilisation=0.7)
        sparse = store.series(SeriesKind.VM, "web-1", "cpu_utilisation")
        regular = store.series(SeriesKind.VM, "web-1", "cpu_utilisation", regular=True)
        unknown = store.busy_cores("nobody")
    assert sparse.tolist() == [0.5, 0.7]
    assert len(regular) == 4
    assert math.isnan(regular.iloc[1]) and math.isnan(regular.iloc[2])
    assert unknown.empty


def test_retention_drops_only_what_is_older_than_it(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite", retention_days=MIN_RETENTION_DAYS) as store:
        store.record(
            SeriesKind.BUSINESS,
            "web",
            BUSY_CORES,
            [(END - 20 * DAY_S, 1.0), (END - 15 * DAY_S, 2.0), (END - 13 * DAY_S, 3.0)],
        )
        store.record(SeriesKind.BUSINESS, "old", BUSY_CORES, [(END - 30 * DAY_S, 1.0)])
        deleted = store.prune(END)
        kept = store.busy_cores("web")
        names = store.names(SeriesKind.BUSINESS)
    assert deleted == 3
    assert kept.tolist() == [3.0]
    assert names == ["web"]


def test_retention_below_fourteen_days_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention_days"):
        HistoryStore(tmp_path / "h.sqlite", retention_days=7)


@pytest.mark.parametrize("name", ["../etc", "Web", "a b", "x'); DROP TABLE points;--", ""])
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    with HistoryStore(tmp_path / "h.sqlite") as store, pytest.raises(ValueError, match="safe"):
        store.record_business(name, END, busy_cores=1.0)


def test_non_finite_values_are_refused_and_nothing_of_the_write_is_kept(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite") as store:
        with pytest.raises(ValueError, match="not finite"):
            store.record_business("web", END, busy_cores=1.0, instances=math.nan)
        assert store.busy_cores("web").empty
        with pytest.raises(ValueError, match="not finite"):
            store.record(SeriesKind.BUSINESS, "web", BUSY_CORES, [(END, 1.0), (END + 60, math.inf)])
        assert store.busy_cores("web").empty


def test_concurrent_writers_lose_no_point(tmp_path: Path) -> None:
    with HistoryStore(tmp_path / "h.sqlite") as store:

        def write(business: str) -> None:
            for minute in range(200):
                store.record_business(business, END + 60 * minute, busy_cores=float(minute))

        threads = [threading.Thread(target=write, args=(f"b{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        lengths = [len(store.busy_cores(f"b{i}")) for i in range(4)]
    assert lengths == [200, 200, 200, 200]
