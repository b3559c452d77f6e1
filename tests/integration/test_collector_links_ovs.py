"""Bond and link collectors against the lab's real userspace OVS active-backup bonds."""

from __future__ import annotations

import time

from autoscaler.model import Collection, Scope, SignalName
from collectors.links import LinksCollector
from collectors.ovs_bond import OvsBondCollector
from lab import ovs
from lab.layout import LabLayout
from tests.integration import conftest_components as components

lab_layout = components.lab_layout
ovs_bonds = components.ovs_bonds


def _bond_collector(lab: ovs.OvsLab, timeout_s: float = 2.0) -> OvsBondCollector:
    return OvsBondCollector(
        lab.vswitchd_control,
        {host: bond.bond for host, bond in lab.bonds.items()},
        timeout_s=timeout_s,
    )


def _links_collector(lab: ovs.OvsLab, host: str) -> LinksCollector:
    bond = lab.bonds[host]
    return LinksCollector(host, [*bond.members, bond.bridge], netns=lab.netns)


def _by_host(collection: Collection, metric: str) -> dict[str, float]:
    return {
        str(s.label("target")): s.value
        for s in collection.samples
        if s.metric == metric and len(s.labels) == 2  # host-wide: only scope and target
    }


def _by_link(collection: Collection, metric: str) -> dict[str, float]:
    return {str(s.label("link")): s.value for s in collection.samples if s.metric == metric}


def _active_member(collection: Collection, host: str) -> str:
    active = [
        str(s.label("member"))
        for s in collection.samples
        if s.metric == "bond_member_active" and s.label("target") == host and s.value == 1.0
    ]
    assert len(active) == 1, active
    return active[0]


def test_healthy_bonds_have_two_enabled_members_and_carry_traffic(ovs_bonds: ovs.OvsLab) -> None:
    seen = _bond_collector(ovs_bonds).collect(time.time())
    assert not seen.stale
    assert _by_host(seen, SignalName.BOND_REDUNDANCY_LOST) == {"h0": 0.0, "h1": 0.0}
    assert _by_host(seen, "bond_members_enabled") == {"h0": 2.0, "h1": 2.0}
    assert all(s.label("scope") == Scope.HOST for s in seen.samples)
    links = _links_collector(ovs_bonds, "h0")
    reading = components.eventually(
        lambda: links.collect(time.time()),
        lambda c: _by_link(c, "uplink_rx_packets_rate").get("ob0", 0.0) > 0,
        timeout=10,
        what="traffic arriving through h0's bond",
    )
    assert _by_link(reading, "uplink_down") == {"ob0m0": 0.0, "ob0m1": 0.0, "ob0": 0.0}
    assert _by_host(reading, SignalName.LINK_DOWN) == {"h0": 0.0}
    assert _by_link(reading, "uplink_carrier")["ob0m0"] == 1.0


def test_the_active_member_going_down_reads_redundancy_lost_while_traffic_still_flows(
    lab_layout: LabLayout, ovs_bonds: ovs.OvsLab
) -> None:
    bonds = _bond_collector(ovs_bonds)
    links = _links_collector(ovs_bonds, "h0")
    bond = ovs_bonds.bonds["h0"]
    failed = bond.members.index(_active_member(bonds.collect(time.time()), "h0"))
    ovs.set_member(lab_layout, bond, failed, up=False)
    try:
        degraded = components.eventually(
            lambda: bonds.collect(time.time()),
            lambda c: _by_host(c, SignalName.BOND_REDUNDANCY_LOST).get("h0") == 1.0,
            timeout=10,
            what="h0's bond to lose redundancy",
        )
        assert _by_host(degraded, "bond_members_enabled")["h0"] == 1.0
        assert _by_host(degraded, "bond_up")["h0"] == 1.0
        assert _active_member(degraded, "h0") == bond.members[1 - failed]
        assert _by_host(degraded, SignalName.BOND_REDUNDANCY_LOST)["h1"] == 0.0
        links.collect(time.time())  # the rates below are measured from here, after the failure
        flowing = components.eventually(
            lambda: links.collect(time.time()),
            lambda c: _by_link(c, "uplink_rx_packets_rate").get("ob0", 0.0) > 0,
            timeout=10,
            what="traffic still arriving through the surviving member",
        )
        assert _by_link(flowing, "uplink_down")[bond.members[failed]] == 1.0
        assert _by_link(flowing, "uplink_carrier")[bond.members[failed]] == 0.0
        assert _by_link(flowing, "uplink_down")[bond.members[1 - failed]] == 0.0
        assert _by_link(flowing, "uplink_rx_packets_rate")[bond.members[1 - failed]] > 0
        assert _by_host(flowing, SignalName.LINK_DOWN) == {"h0": 1.0}
        assert _by_host(flowing, "uplinks_down") == {"h0": 1.0}
    finally:
        ovs.set_member(lab_layout, bond, failed, up=True)
    components.eventually(
        lambda: bonds.collect(time.time()),
        lambda c: _by_host(c, SignalName.BOND_REDUNDANCY_LOST).get("h0") == 0.0,
        timeout=10,
        what="h0's bond redundant again",
    )


def test_a_hung_vswitchd_costs_one_timeout_and_makes_every_host_stale(
    ovs_bonds: ovs.OvsLab,
) -> None:
    bonds = _bond_collector(ovs_bonds, timeout_s=1.0)
    good = bonds.collect(time.time())
    good_at = good.samples[0].timestamp
    hung, took = components.collect_while_hung(
        ovs_bonds.pids["ovs-vswitchd"], lambda: bonds.collect(time.time())
    )
    assert took < 1.5
    assert not hung.samples
    assert {(s.scope, s.target) for s in hung.stale} == {
        (Scope.CLUSTER, "ovs"),
        (Scope.HOST, "h0"),
        (Scope.HOST, "h1"),
    }
    assert all(s.last_good == good_at for s in hung.stale)


def test_a_missing_namespace_or_uplink_is_stale_not_a_silent_link(ovs_bonds: ovs.OvsLab) -> None:
    gone = LinksCollector("h0", ["ob0m0"], netns="as7-no-such-namespace").collect(time.time())
    assert not gone.samples
    assert gone.stale[0].target == "h0" and "as7-no-such-namespace" in gone.stale[0].reason
    partial = LinksCollector("h0", ["ob0m0", "ob0m9"], netns=ovs_bonds.netns).collect(time.time())
    assert "ob0m9" in partial.stale[0].reason
    assert set(_by_link(partial, "uplink_down")) == {"ob0m0"}
    assert SignalName.LINK_DOWN not in {s.metric for s in partial.samples}
