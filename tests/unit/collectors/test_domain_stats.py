"""The libvirt collector's arithmetic on recorded domain stats (no libvirt: plain records)."""

from __future__ import annotations

from collectors.libvirt_vms import DomainRecord, DomainStatsParser

META = '<vm xmlns="https://kvm-autoscaler.dev/ns/vm/1" business="web" ready="{ready}"/>'


def record(cpu_s: float, ready: float) -> DomainRecord:
    stats: dict[str, float | int | str] = {
        "state.state": 1,
        "vcpu.current": 1,
        "vcpu.maximum": 1,
        "cpu.time": int(cpu_s * 1e9),
        "vcpu.0.time": int(cpu_s * 1e9),
    }
    return DomainRecord("web-3", stats, META.format(ready=ready))


def busy(parser: DomainStatsParser, cpu_s: float, ready: float, now: float) -> float | None:
    samples = parser.parse("kvm-1", [record(cpu_s, ready)], now)
    return next((s.value for s in samples if s.metric == "vm_cpu_busy_cores"), None)


def test_cpu_rate_is_cpu_time_over_wall_time() -> None:
    parser = DomainStatsParser()
    assert busy(parser, 10.0, ready=50.0, now=100.0) is None  # first sight: no rate yet
    assert busy(parser, 11.0, ready=50.0, now=102.0) == 0.5


def test_no_cpu_rate_over_an_interval_that_holds_the_end_of_the_boot() -> None:
    """A clone became ready between two collections: its boot CPU is not load.

    Expect: no busy rate for that interval (absent, not zero); the next interval has one.
    """
    parser = DomainStatsParser()
    busy(parser, 3.0, ready=0.0, now=100.0)
    assert busy(parser, 4.8, ready=101.0, now=102.0) is None
    assert busy(parser, 5.0, ready=101.0, now=104.0) == 0.1
