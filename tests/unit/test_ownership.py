"""Proof of ownership and the operator's one way in: stamps cannot be forged by editing XML,
keys rotate, the key file is private, and ``autoscaler apply`` never acts beside a leader.

The stamps are checked on domain XML built by ``build_domain_xml`` and parsed back exactly as
libvirt returns our metadata element; ``apply`` runs as a real process against a controller
file whose lease is held by a live holder (a renewing lease in this test process).
"""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from actuators.domain_xml import InstanceSpec, build_domain_xml, parse_vm_metadata
from autoscaler.config import load_controller_config
from autoscaler.model import ConfigError, FleetKeys, Plan, Retire, parse_fleet_keys
from autoscaler.runtime.fleet_key import load_fleet_keys, make_key_file
from autoscaler.runtime.lease import FileLease, Renewing
from policies.loader import load_policy_dir
from tests.reliability import record
from tests.unit.test_wiring import ROOT, controller_file

pytest_plugins = ["tests.reliability_plugin"]
RELIABILITY_SUITE = "safety"
KEYS = parse_fleet_keys("k1 " + "11" * 32 + "\nk0 " + "22" * 32 + "\n", "test")


def metadata(keys: FleetKeys, name: str = "web-7", business: str = "web") -> str:
    """Our ``<as:vm>`` element as libvirt hands it back, for a domain stamped with ``keys``."""
    template = load_policy_dir(ROOT / "examples" / "businesses")["web"].template.to_template()
    created = f"{time.time():.3f}"
    spec = InstanceSpec(
        name=name,
        business=business,
        template=template,
        disk_path="/x",
        created_at=float(created),
        owner=keys.stamp(name, business, created),
    )
    root = ET.fromstring(build_domain_xml(spec))  # noqa: S314 - our own XML
    element = root.find("metadata/{https://kvm-autoscaler.dev/ns/vm/1}vm")
    assert element is not None
    element.tag = "vm"
    return ET.tostring(element, encoding="unicode")


def test_a_clone_stamp_verifies_and_an_edited_domain_does_not() -> None:
    text = metadata(KEYS)
    meta = parse_vm_metadata(text)
    assert meta is not None and meta.owned("web-7", KEYS)
    assert not meta.owned("web-8", KEYS)  # renamed
    moved = parse_vm_metadata(text.replace('business="web"', 'business="db"'))
    assert moved is not None and not moved.owned("web-7", KEYS)  # handed to another business
    unstamped = parse_vm_metadata(text.split(" owner-key")[0] + "/>")
    assert unstamped is not None and not unstamped.owned("web-7", KEYS)
    other_fleet = parse_fleet_keys("k1 " + "33" * 32, "other")
    assert not meta.owned("web-7", other_fleet)
    record(
        "safety",
        "ownership stamp forged by editing XML",
        injected="a domain's business, name or stamp edited; a stamp of another fleet's key",
        behaviour="none verifies: retire, hot-add, migrate and snapshot refuse such a domain",
        lost="nothing",
    )


def test_keys_rotate_the_first_signs_and_every_key_verifies() -> None:
    old = parse_fleet_keys("k0 " + "22" * 32, "old")
    meta = parse_vm_metadata(metadata(old))
    assert meta is not None and meta.owned("web-7", KEYS)  # k0 is still listed after rotation
    assert KEYS.stamp("a", "web", "1.000").key_id == "k1"
    assert not meta.owned("web-7", parse_fleet_keys("k1 " + "11" * 32, "k1 only"))


def test_a_key_file_readable_by_others_or_malformed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.key"
    make_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(load_fleet_keys(path, create=False).keys) == 1
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_fleet_keys(path, create=False)
    path.chmod(0o600)
    path.write_text("k1 not-hex\n")
    with pytest.raises(ConfigError, match="not hexadecimal"):
        load_fleet_keys(path, create=False)
    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(ConfigError):
        load_fleet_keys(link, create=False)


def test_apply_while_another_controller_leads_is_refused(tmp_path: Path) -> None:
    config_path = controller_file(tmp_path, lease={"kind": "file", "duration_s": 3})
    config = load_controller_config(config_path)
    leader = FileLease(config.state_dir / "lease", "controller-on-another-shell", 3)
    assert leader.try_acquire(time.time()) is not None
    plan = Plan.build(
        [Retire(business="web", vm="web-1", host="host-a1", reason="operator")], time.time()
    )
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.to_json())
    with Renewing(leader, every_s=1.0):
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "autoscaler.cli",
                "apply",
                str(plan_file),
                "--config",
                str(config_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        took = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert "refused" in done.stderr and "leads" in done.stderr
    assert not (config.state_dir / "journal.sqlite").exists()  # not even a journal entry
    record(
        "safety",
        "apply while a controller leads",
        injected="`autoscaler apply PLAN` while another process holds and renews the lease",
        behaviour=f"refused in {took:.1f} s, exit 3: {done.stderr.strip().splitlines()[-1][:90]}",
        lost="nothing (no journal entry, nothing done)",
    )
