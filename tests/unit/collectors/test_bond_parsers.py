"""Bond parsers: ``ovs-appctl bond/show`` text and kernel bonds in real pyroute2 messages."""

from __future__ import annotations

from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from collectors.common import MalformedReply
from collectors.links import parse_links
from collectors.ovs_bond import parse_bond_show

OVS_31 = """---- bond0 ----
bond_mode: active-backup
bond may use recirculation: no, Recirc-ID : -1
active-backup primary: <none>
active member mac: 06:7c:75:88:35:22(ob0m1)

member ob0m0: disabled
  may_enable: false

member ob0m1: enabled
  active member
  may_enable: true

---- bond1 ----
bond_mode: active-backup
member ob1m0: enabled
  active member
member ob1m1: enabled
"""

OVS_2X = """---- bond0 ----
bond_mode: balance-slb
slave eth0: enabled
\tactive slave
slave eth1: enabled
"""


def test_ovs_3_bond_show_gives_members_their_state_and_the_active_one() -> None:
    bonds = parse_bond_show(OVS_31)
    assert bonds["bond0"].mode == "active-backup"
    assert [(m.name, m.enabled, m.active) for m in bonds["bond0"].members] == [
        ("ob0m0", False, False),
        ("ob0m1", True, True),
    ]
    assert bonds["bond0"].redundancy_lost
    assert not bonds["bond1"].redundancy_lost


def test_ovs_2_wording_with_slaves_is_understood() -> None:
    bond = parse_bond_show(OVS_2X)["bond0"]
    assert bond.mode == "balance-slb" and bond.enabled == 2 and bond.members[0].active


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("member eth0: enabled\n", "before any bond header"),
        ("---- b ----\nbond_mode: active-backup\n  active member\n", "without a member"),
        ("---- b ----\nmember eth0: enabled\n", "no bond_mode"),
        ("---- b ----\nbond_mode: x\n---- b ----\nbond_mode: x\n", "appears twice"),
    ],
)
def test_malformed_bond_show_is_refused(text: str, complaint: str) -> None:
    with pytest.raises(MalformedReply, match=complaint):
        parse_bond_show(text)


def test_hostile_member_names_are_not_taken_as_members() -> None:
    text = "---- b ----\nbond_mode: active-backup\nmember $(reboot): enabled\nmember ok0: enabled\n"
    assert [m.name for m in parse_bond_show(text)["b"].members] == ["ok0"]


STATS = {
    "rx_packets": 10,
    "tx_packets": 5,
    "rx_bytes": 1000,
    "tx_bytes": 500,
    "rx_errors": 0,
    "tx_errors": 0,
    "rx_dropped": 0,
    "tx_dropped": 0,
}


def _link(index: int, attrs: list[tuple[str, Any]]) -> ifinfmsg:
    """An RTM_NEWLINK message encoded and decoded by pyroute2 itself, as the kernel sends it."""
    message = ifinfmsg()
    message["family"] = 0
    message["index"] = index
    message["attrs"] = attrs
    message.encode()
    decoded = ifinfmsg(message.data)
    decoded.decode()
    return decoded


def _member(index: int, name: str, mii: int, carrier: int) -> ifinfmsg:
    slave = {"attrs": [("IFLA_BOND_SLAVE_STATE", 0), ("IFLA_BOND_SLAVE_MII_STATUS", mii)]}
    return _link(
        index,
        [
            ("IFLA_IFNAME", name),
            ("IFLA_OPERSTATE", "UP" if carrier else "LOWERLAYERDOWN"),
            ("IFLA_CARRIER", carrier),
            ("IFLA_MASTER", 7),
            ("IFLA_STATS64", STATS),
            (
                "IFLA_LINKINFO",
                {"attrs": [("IFLA_INFO_SLAVE_KIND", "bond"), ("IFLA_INFO_SLAVE_DATA", slave)]},
            ),
        ],
    )


def test_a_kernel_bond_with_a_failed_member_reads_redundancy_lost() -> None:
    bond_data = {"attrs": [("IFLA_BOND_MODE", 1), ("IFLA_BOND_ACTIVE_SLAVE", 9)]}
    messages = [
        _link(
            7,
            [
                ("IFLA_IFNAME", "bond0"),
                ("IFLA_OPERSTATE", "UP"),
                ("IFLA_CARRIER", 1),
                ("IFLA_STATS64", STATS),
                (
                    "IFLA_LINKINFO",
                    {"attrs": [("IFLA_INFO_KIND", "bond"), ("IFLA_INFO_DATA", bond_data)]},
                ),
            ],
        ),
        _member(8, "eth0", mii=2, carrier=0),
        _member(9, "eth1", mii=0, carrier=1),
    ]
    links, bonds = parse_links(messages)
    assert links["eth0"].down and not links["eth1"].down
    bond = bonds["bond0"]
    assert bond.mode == "active-backup"
    assert [(m.name, m.enabled, m.active) for m in bond.members] == [
        ("eth0", False, False),
        ("eth1", True, True),
    ]
    assert bond.redundancy_lost


def test_a_link_without_statistics_or_a_name_is_refused() -> None:
    with pytest.raises(MalformedReply, match="IFLA_STATS64"):
        parse_links([_link(3, [("IFLA_IFNAME", "eth0")])])
    with pytest.raises(MalformedReply, match="without a name"):
        parse_links([_link(3, [("IFLA_STATS64", STATS)])])
