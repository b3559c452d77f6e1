"""Helpers of the actuator tests on the lab: the fleet, plans, where a VM is, leftovers."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import libvirt

from actuators.base import Fleet
from actuators.executor import ActionResult, ExecutorLimits, Registry, execute_plan
from actuators.libvirt_events import ensure_event_loop
from actuators.volumes import overlay_exists
from autoscaler.config import load_controller_config
from autoscaler.model import Action, Plan
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.lease import Renewing, taken_file_lease
from autoscaler.runtime.wiring import build_fleet, quiet_libvirt
from lab import lab as lab_mod
from lab.lab import Lab
from policies.loader import load_policy_dir


def fleet_of(lab: Lab) -> Fleet:
    ensure_event_loop()
    quiet_libvirt()
    config = load_controller_config(lab.controller_file)
    return build_fleet(config, load_policy_dir(config.policy_dir))


def run_plan(
    fleet: Fleet,
    journal: SqliteJournal,
    actions: Sequence[Action],
    *,
    limits: ExecutorLimits | None = None,
    registry: Registry | None = None,
) -> list[ActionResult]:
    """Run ``actions`` as the holder of a lease of the journal's own folder (the fence needs
    one), kept renewed while they run."""
    lease = taken_file_lease(journal.path.parent, "actuator-test")
    with Renewing(lease, every_s=5) as held:
        plan = Plan.build(list(actions), created_at=time.time()).under(held.generation)
        return execute_plan(
            plan, fleet, journal, lease=lease, limits=limits or ExecutorLimits(), registry=registry
        )


def where(lab: Lab, vm: str) -> dict[str, str]:
    """host -> 'running' | 'paused' | 'defined' | 'overlay' for every host holding a trace of
    ``vm`` (a domain, or only its overlay)."""
    found: dict[str, str] = {}
    for record in lab.state.hosts:
        conn = lab.connect(record.name)
        try:
            try:
                dom = conn.lookupByName(vm)
            except libvirt.libvirtError:
                dom = None
            if dom is not None:
                if not dom.isActive():
                    found[record.name] = "defined"
                elif dom.state(0)[0] == libvirt.VIR_DOMAIN_RUNNING:
                    found[record.name] = "running"
                else:
                    found[record.name] = "paused"
            elif overlay_exists(conn, vm):
                found[record.name] = "overlay"
        finally:
            conn.close()
    return found


def empty_host(lab: Lab) -> str:
    return next(h for h, doms in lab_mod.status(lab).domains.items() if not doms)


def host_in_other_datacenter(lab: Lab, host: str) -> str:
    dc = lab.state.host(host).datacenter
    return next(r.name for r in lab.state.hosts if r.datacenter != dc)


def remove_everywhere(lab: Lab, vm: str) -> None:
    """Test cleanup through the lab's own tool (not the actuators under test)."""
    for host in where(lab, vm):
        lab_mod.remove_vm(lab, vm, host)


def domain_xml(dom: libvirt.virDomain, flags: int = 0) -> ET.Element:
    return ET.fromstring(dom.XMLDesc(flags))  # noqa: S314 - libvirt's own XML
