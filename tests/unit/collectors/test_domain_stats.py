"""The libvirt collector's arithmetic on recorded domain stats (no libvirt: plain records)."""

from __future__ import annotations

from collectors.libvirt_vms import DomainRecord, DomainStatsParser

META = '<vm xmlns="https://kvm-autoscaler.dev/ns/vm/1" business="web" ready="{ready}"/>'


def cpu_stats(cpu_s: float) -> dict[str, float | int | str]:
    """One running 1-vCPU domain's stats after ``cpu_s`` seconds of CPU time."""
    return {
        "state.state": 1,
        "vcpu.current": 1,
        "vcpu.maximum": 1,
        "cpu.time": int(cpu_s * 1e9),
        "vcpu.0.time": int(cpu_s * 1e9),
    }


def record(cpu_s: float, ready: float) -> DomainRecord:
    return DomainRecord("web-3", cpu_stats(cpu_s), META.format(ready=ready))


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


def memory_samples(stats: dict[str, float | int | str], now: float = 100.0) -> dict[str, float]:
    rec = DomainRecord("web-3", {"state.state": 1, "vcpu.current": 1, **stats}, None)
    return {s.metric: s.value for s in DomainStatsParser().parse("kvm-1", [rec], now)}


def test_memory_in_use_is_the_guests_total_less_what_it_can_still_use() -> None:
    """Balloon statistics (KiB): the guest sees 153 MiB and could still use 100 MiB.

    Expect: 53 MiB in use, the 153 MiB total, and QEMU's RSS kept apart (it is not used)."""
    got = memory_samples(
        {
            "balloon.current": 262144,
            "balloon.rss": 300 * 1024,
            "balloon.available": 153 * 1024,
            "balloon.usable": 100 * 1024,
            "balloon.unused": 80 * 1024,
            "balloon.last-update": 98,
        }
    )
    assert got["vm_memory_used_mib"] == 53
    assert got["vm_memory_guest_total_mib"] == 153
    assert got["vm_rss_mib"] == 300
    assert got["vm_memory_stats_age_seconds"] == 2


def test_memory_in_use_falls_back_to_unused_without_usable() -> None:
    got = memory_samples(
        {"balloon.available": 1024, "balloon.unused": 256, "balloon.last-update": 100}
    )
    assert got["vm_memory_used_mib"] == 0.75


def test_no_balloon_statistics_means_no_memory_in_use_figure() -> None:
    """A guest without the balloon driver: libvirt gives the size and QEMU's RSS only."""
    got = memory_samples({"balloon.current": 262144, "balloon.rss": 200 * 1024})
    assert "vm_memory_used_mib" not in got and "vm_memory_stats_age_seconds" not in got
    assert got["vm_rss_mib"] == 200


def test_stale_balloon_statistics_give_no_figure_but_their_age() -> None:
    """The guest stopped reporting (its driver gone, the guest hung) a minute ago."""
    got = memory_samples(
        {"balloon.available": 1024, "balloon.usable": 256, "balloon.last-update": 40}
    )
    assert "vm_memory_used_mib" not in got
    assert got["vm_memory_stats_age_seconds"] == 60


def test_no_cpu_rate_over_an_interval_that_overlaps_a_hot_add_online_boost() -> None:
    """A vCPU hot-add lifted the quota from t=101 to t=102 while the guest onlined its CPU.

    Expect: no busy rate for the intervals that overlap the boost; the next one has one."""
    meta = (
        '<vm xmlns="https://kvm-autoscaler.dev/ns/vm/1" business="web" ready="0"'
        ' boost-from="101" boost-until="102.5"/>'
    )

    def rate(parser: DomainStatsParser, cpu_s: float, now: float) -> float | None:
        samples = parser.parse("kvm-1", [DomainRecord("web-3", cpu_stats(cpu_s), meta)], now)
        return next((s.value for s in samples if s.metric == "vm_cpu_busy_cores"), None)

    parser = DomainStatsParser()
    assert rate(parser, 10.0, now=98.0) is None  # first sight
    assert rate(parser, 10.5, now=100.0) == 0.25  # before the boost
    assert rate(parser, 12.0, now=102.0) is None  # the boost began
    assert rate(parser, 13.5, now=104.0) is None  # the boost ended
    assert rate(parser, 14.0, now=106.0) == 0.25


def test_memory_statistics_from_before_a_dimm_was_added_give_no_figure() -> None:
    """A DIMM took the VM from 256 to 384 MiB; the guest's statistics still describe the
    smaller guest until its next report (every few seconds).

    Expect: no memory-in-use figure until statistics newer than the resize arrive."""
    parser = DomainStatsParser()

    def used(size_mib: int, available_mib: int, updated: float, now: float) -> float | None:
        stats: dict[str, float | int | str] = {
            "state.state": 1,
            "vcpu.current": 1,
            "balloon.current": size_mib * 1024,
            "balloon.available": available_mib * 1024,
            "balloon.usable": 30 * 1024,
            "balloon.last-update": updated,
        }
        samples = parser.parse("kvm-1", [DomainRecord("web-3", stats, None)], now)
        return next((s.value for s in samples if s.metric == "vm_memory_used_mib"), None)

    assert used(256, 153, updated=99, now=100) == 123
    assert used(384, 153, updated=99, now=102) is None  # the same report, a bigger VM
    assert used(384, 153, updated=101, now=104) is None  # a report older than the resize seen
    assert used(384, 281, updated=104.5, now=106) == 251
