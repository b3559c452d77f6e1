from __future__ import annotations

import pytest

from autoscaler.model import Scope, SignalName
from policies.schema import Sla
from policies.sla import AlertState, SlaLedger, capacity_interval, promql_interval, sla_status
from tests.unit.policies.builders import NOW, Fleet, policy

SLA = Sla()


def _ledger(bad_at: set[int], minutes: int) -> SlaLedger:
    ledger = SlaLedger()
    for m in range(minutes):
        good = 0.0 if m in bad_at else 60.0
        ledger = ledger.record(NOW - (minutes - 1 - m) * 60, good, 60.0, 30 * 86_400)
    return ledger


def test_all_good_intervals_leave_the_whole_budget_and_no_alert() -> None:
    status = sla_status(_ledger(set(), 600), SLA, NOW)
    assert status.attainment == 1.0
    assert status.error_budget_left == 1.0
    assert status.alert is AlertState.OK
    assert not status.burning


def test_an_outage_in_the_last_hour_pages() -> None:
    minutes = 3 * 24 * 60
    status = sla_status(_ledger(set(range(minutes - 10, minutes)), minutes), SLA, NOW)
    assert status.burn_rates["5m"] == pytest.approx(1 / 0.0005)
    assert status.burn_rates["1h"] >= 14.4
    assert status.alert is AlertState.PAGE
    assert status.error_budget_left < 0


def test_a_slow_steady_burn_opens_a_ticket_not_a_page() -> None:
    minutes = 3 * 24 * 60
    # One bad minute in 1,000: a burn rate of 2 everywhere.
    status = sla_status(_ledger({m for m in range(minutes) if m % 1000 == 999}, minutes), SLA, NOW)
    assert 1.0 <= status.burn_rates["3d"] < 6.0
    assert status.alert is AlertState.TICKET
    assert not status.burning  # a ticket alone, with the last 5 minutes clean, allows scale-down


def test_bad_minutes_in_the_last_five_minutes_and_hour_are_burning() -> None:
    minutes = 3 * 24 * 60
    status = sla_status(_ledger({minutes - 1, minutes - 30}, minutes), SLA, NOW)
    assert status.burn_rates["5m"] > 1.0 and status.burn_rates["1h"] > 1.0
    assert status.burning


def test_old_intervals_are_forgotten_beyond_the_kept_window() -> None:
    ledger = SlaLedger().record(NOW - 100, 0.0, 60.0, keep_s=50).record(NOW, 60.0, 60.0, keep_s=50)
    assert len(ledger.ends_s) == 1


def test_the_ledger_refuses_intervals_out_of_order_or_impossible() -> None:
    ledger = SlaLedger().record(NOW, 1.0, 1.0, 100)
    with pytest.raises(ValueError, match="older"):
        ledger.record(NOW - 1, 1.0, 1.0, 100)
    with pytest.raises(ValueError, match="good <= total"):
        ledger.record(NOW + 1, 2.0, 1.0, 100)


def test_capacity_sli_is_good_only_with_enough_instances_and_headroom() -> None:
    kw = {"ready_instances": 2, "min_instances": 2, "saturation": 0.9, "duration_s": 30.0}
    assert capacity_interval(demand_cores=0.9, ready_capacity_cores=1.0, **kw) == (30.0, 30.0)
    assert capacity_interval(demand_cores=0.95, ready_capacity_cores=1.0, **kw) == (0.0, 30.0)
    fewer = {**kw, "ready_instances": 1}
    assert capacity_interval(demand_cores=0.1, ready_capacity_cores=1.0, **fewer) == (0.0, 30.0)


def test_promql_sli_reads_the_business_good_and_total_rates() -> None:
    fleet = Fleet()
    fleet.signal(Scope.BUSINESS, "web", SignalName.SLI_GOOD, 99.0)
    fleet.signal(Scope.BUSINESS, "web", SignalName.SLI_TOTAL, 100.0)
    snapshot = fleet.snapshot(policy("web"))
    assert promql_interval(snapshot, "web", 10.0) == (990.0, 1000.0)
    assert promql_interval(snapshot, "api", 10.0) is None
