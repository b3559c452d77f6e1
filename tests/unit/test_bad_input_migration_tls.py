"""A live migration between hosts reached over ``qemu+tls`` asks libvirt to encrypt the stream.

Before: the flags were fixed, so guest memory crossed the network in clear even where the
controller reached the hosts over TLS. No TLS in the lab: checked on the flag computation,
with the URIs of the example (real-fleet) controller file.
"""

from __future__ import annotations

from pathlib import Path

import libvirt
from ruamel.yaml import YAML

from actuators.migrate import FLAGS, migration_flags
from tests.reliability import record

pytest_plugins = ["tests.reliability_plugin"]
ROOT = Path(__file__).resolve().parents[2]


def example_uri() -> str:
    doc = YAML(typ="safe", pure=True).load((ROOT / "examples" / "controller.yaml").read_text())
    return str(doc["inventory"]["regions"][0]["datacenters"][0]["racks"][0]["hosts"][0]["uri"])


def test_hosts_reached_over_tls_migrate_with_tls() -> None:
    uri = example_uri()
    assert uri.startswith("qemu+tls://")
    assert migration_flags(uri, uri.replace("01-01", "01-02")) & libvirt.VIR_MIGRATE_TLS
    record(
        "bad-input",
        "live migration between hosts reached over qemu+tls",
        injected="the example fleet's qemu+tls URIs as source and destination",
        behaviour="VIR_MIGRATE_TLS added to the migration flags (before: memory and disk sent "
        "in clear)",
        lost="nothing",
    )


def test_one_tls_host_is_enough_to_ask_for_tls() -> None:
    flags = migration_flags("qemu+tcp://10.0.0.1/system", "qemu+tls://h2.example/system")
    assert flags == FLAGS | libvirt.VIR_MIGRATE_TLS


def test_hosts_reached_over_tcp_keep_the_plain_flags() -> None:
    flags = migration_flags("qemu+tcp://10.0.0.1/system", "qemu+tcp://10.0.0.2/system")
    assert flags == FLAGS and not flags & libvirt.VIR_MIGRATE_TLS
