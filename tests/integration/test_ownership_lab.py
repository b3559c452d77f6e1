"""Proof of ownership on the real lab: a domain the controller did not create, shut off or
running, with or without a copied stamp, is never destroyed, grown or moved; once an operator
adopts it (``autoscaler adopt``, journalled and fenced like any action), it is managed.

The foreign domain is defined by the test with the business's own metadata (what an operator
copying a domain by hand, or an older tool, would leave), and given a real overlay disk in the
lab's pool, so "its disk intact" is checked on the file libvirt holds.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from actuators.domain_xml import build_domain_xml
from actuators.volumes import ensure_overlay, overlay_exists
from autoscaler.model import HotAddVcpu, LiveMigrate, Retire
from autoscaler.runtime.journal import SqliteJournal
from autoscaler.runtime.wiring import open_journal
from lab import lab as lab_mod
from lab.lab import Lab
from policies.loader import load_policy_dir
from tests.integration.actuator_helpers import (
    fleet_of,
    host_in_other_datacenter,
    remove_everywhere,
    run_plan,
    where,
)
from tests.reliability import record

pytestmark = pytest.mark.lab
pytest_plugins = ["tests.reliability_plugin"]
RELIABILITY_SUITE = "safety"
FOREIGN = "tact-foreign"


@pytest.fixture
def foreign(lab: Lab) -> Iterator[str]:
    """A shut-off domain of business web with an overlay disk, and no valid stamp: the host."""
    host = lab.state.hosts[0].name
    policy = load_policy_dir(Path(lab.state.root) / "businesses")["web"]
    conn = lab.connect(host)
    try:
        disk = ensure_overlay(conn, FOREIGN, policy.template.image)
        spec = replace(lab_mod.instance_spec(lab, policy, FOREIGN, host, disk), owner=None)
        conn.defineXML(build_domain_xml(spec))
    finally:
        conn.close()
    try:
        yield host
    finally:
        remove_everywhere(lab, FOREIGN)


def test_retire_of_a_foreign_shut_off_domain_is_refused_with_its_disk_intact(
    lab: Lab, foreign: str, tmp_path: Path
) -> None:
    fleet = fleet_of(lab)
    with open_journal(tmp_path / "state", fleet) as journal:
        (retired,) = run_plan(
            fleet, journal, [Retire(vm=FOREIGN, business="web", host=foreign, reason="test")]
        )
        (grown,) = run_plan(
            fleet,
            journal,
            [HotAddVcpu(vm=FOREIGN, business="web", host=foreign, vcpus=2, reason="test")],
        )
        (moved,) = run_plan(
            fleet,
            journal,
            [
                LiveMigrate(
                    vm=FOREIGN,
                    business="web",
                    source=foreign,
                    destination=host_in_other_datacenter(lab, foreign),
                    reason="test",
                )
            ],
        )
    assert retired.status == "failed" and "NotOwned" in retired.reason, retired
    assert "ownership stamp is missing" in retired.reason
    assert grown.status == "failed"  # not running: refused before it could be proven anyway
    assert moved.status == "failed"
    assert where(lab, FOREIGN) == {foreign: "defined"}
    conn = lab.connect(foreign)
    try:
        assert overlay_exists(conn, FOREIGN)
    finally:
        conn.close()
    record(
        "safety",
        "retire of a foreign shut-off domain",
        injected="a plan retiring a shut-off domain with the business's metadata but no stamp",
        behaviour=f"refused before any side effect: {retired.reason[:120]}",
        lost="nothing (domain defined, its disk intact)",
    )


def test_a_copied_stamp_does_not_make_a_domain_ours(lab: Lab, foreign: str, tmp_path: Path) -> None:
    # The stamp of a real lab VM, pasted into the foreign domain's metadata.
    donor_host = next(iter(where(lab, "web-1")))
    conn = lab.connect(donor_host)
    try:
        donor = ET.fromstring(  # noqa: S314 - libvirt's own XML
            conn.lookupByName("web-1").XMLDesc(0)
        ).find("metadata/{https://kvm-autoscaler.dev/ns/vm/1}vm")
        assert donor is not None and donor.get("owner-mac")
    finally:
        conn.close()
    conn = lab.connect(foreign)
    try:
        dom = conn.lookupByName(FOREIGN)
        xml = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 - libvirt's own XML
        meta = xml.find("metadata/{https://kvm-autoscaler.dev/ns/vm/1}vm")
        assert meta is not None
        for name in ("owner-key", "owner-mac", "created"):
            meta.set(name, donor.get(name, ""))
        conn.defineXML(ET.tostring(xml, encoding="unicode"))
    finally:
        conn.close()
    fleet = fleet_of(lab)
    with open_journal(tmp_path / "state", fleet) as journal:
        (retired,) = run_plan(
            fleet, journal, [Retire(vm=FOREIGN, business="web", host=foreign, reason="test")]
        )
    assert retired.status == "failed" and "NotOwned" in retired.reason, retired
    assert where(lab, FOREIGN) == {foreign: "defined"}


def test_an_adopted_domain_is_managed_and_the_adoption_is_journalled(
    lab: Lab, foreign: str
) -> None:
    adopted = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoscaler.cli",
            "adopt",
            FOREIGN,
            "--business",
            "web",
            "--config",
            str(lab.controller_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert f"adopt/{FOREIGN}" in adopted.stdout
    config_state = Path(lab.state.root) / "state"
    with SqliteJournal(config_state / "journal.sqlite") as journal:
        entry = journal.get(f"adopt/{FOREIGN}")
        assert entry is not None and entry.phase.value == "done"
        assert entry.action.lease_generation is not None
    fleet = fleet_of(lab)
    with open_journal(config_state.parent / "adopt-test-state", fleet) as journal:
        (retired,) = run_plan(
            fleet, journal, [Retire(vm=FOREIGN, business="web", host=foreign, reason="test")]
        )
    assert retired.status == "done", retired
    assert where(lab, FOREIGN) == {}
