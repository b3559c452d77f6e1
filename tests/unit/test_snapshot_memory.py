"""The guest's memory in use travels from the libvirt collector to the Snapshot's VM intact."""

from __future__ import annotations

from pathlib import Path

from autoscaler.config import ControllerConfig
from autoscaler.model import VM, Collection
from autoscaler.runtime.snapshot_builder import build_snapshot
from collectors.libvirt_vms import DomainRecord, DomainStatsParser
from policies.loader import load_policy_dir

ROOT = Path(__file__).resolve().parents[2]
META = '<vm xmlns="https://kvm-autoscaler.dev/ns/vm/1" business="web"/>'


def _config() -> ControllerConfig:
    host = {"name": "kvm-1", "uri": "qemu+tls://kvm-1/system", "cpus": 8, "memory_mib": 16384}
    rack = {"name": "r1", "hosts": [host]}
    return ControllerConfig.model_validate(
        {
            "apiVersion": "autoscaler/v1",
            "kind": "Controller",
            "policy_dir": str(ROOT / "examples" / "businesses"),
            "image_dir": str(ROOT / "examples" / "images"),
            "state_dir": "state",
            "inventory": {
                "regions": [{"name": "north", "datacenters": [{"name": "n1", "racks": [rack]}]}]
            },
        }
    )


def _vm(stats: dict[str, float | int | str], now: float = 100.0) -> VM:
    base: dict[str, float | int | str] = {"state.state": 1, "vcpu.current": 1, **stats}
    samples = DomainStatsParser().parse("kvm-1", [DomainRecord("web-1", base, META)], now)
    policies = load_policy_dir(ROOT / "examples" / "businesses")
    snapshot = build_snapshot(
        _config(), policies, [Collection("libvirt:kvm-1", tuple(samples))], now
    )
    return snapshot.vm_by_name["web-1"]


def test_balloon_statistics_become_the_vms_memory_in_use_and_the_total_the_guest_sees() -> None:
    vm = _vm(
        {
            "balloon.current": 262144,
            "balloon.rss": 262144,
            "balloon.available": 153 * 1024,
            "balloon.usable": 23 * 1024,
            "balloon.last-update": 99,
        }
    )
    assert vm.memory_used_mib == 130
    assert vm.memory_guest_total_mib == 153
    assert vm.memory_used_share == 130 / 153


def test_without_balloon_statistics_the_vm_has_no_memory_in_use_not_its_rss() -> None:
    vm = _vm({"balloon.current": 262144, "balloon.rss": 262144})
    assert vm.memory_used_mib is None and vm.memory_used_share is None
