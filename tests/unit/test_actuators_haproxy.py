"""HaproxyRuntime: how it reads HAProxy's replies and refuses unsafe arguments (no HAProxy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actuators import haproxy
from actuators.haproxy import HaproxyRuntime
from autoscaler.model.access import LoadBalancerUnavailable, ServerAdmin, ServerHealth

# A reply of HAProxy 2.6.12 (one server ready and up, one in maintenance, one draining).
HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight"
    " srv_iweight srv_time_since_last_change srv_check_status srv_check_result"
    " srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id"
    " srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr"
    " srv_agent_port"
)
STATE = f"""1
{HEADER}
2 web 1 a 127.0.0.1 2 0 1 1 6 1 0 0 6 0 0 0 - 18081 - 0 0 - - 0
2 web 2 b 127.0.0.1 0 1 1 1 3 15 3 0 14 0 0 0 - 18082 - 0 0 - - 0
2 web 3 c 10.0.0.3 2 8 1 1 0 15 3 3 6 0 0 0 - 18083 - 0 0 - - 0

"""


def test_the_state_table_is_read_by_its_header_names() -> None:
    rows = haproxy._table(STATE, header_prefix="#", separator=None)
    assert [(r["srv_name"], r["srv_port"], r["srv_admin_state"]) for r in rows] == [
        ("a", "18081", "0"),
        ("b", "18082", "1"),
        ("c", "18083", "8"),
    ]


def test_a_reply_without_a_header_or_with_short_rows_is_unavailable() -> None:
    with pytest.raises(LoadBalancerUnavailable, match="no header line"):
        haproxy._table("hello\n", header_prefix="#", separator=None)
    with pytest.raises(LoadBalancerUnavailable, match="short row"):
        haproxy._table("# a b c\n1 2\n", header_prefix="#", separator=None)


@pytest.mark.parametrize(
    ("bits", "admin"),
    [
        (0, ServerAdmin.READY),
        (0x01, ServerAdmin.MAINT),
        (0x04, ServerAdmin.MAINT),
        (0x08, ServerAdmin.DRAIN),
        (0x10, ServerAdmin.DRAIN),
        (0x09, ServerAdmin.MAINT),
        (0x20, ServerAdmin.MAINT),
    ],
)
def test_admin_state_bits(bits: int, admin: ServerAdmin) -> None:
    assert haproxy._admin(bits) is admin


@pytest.mark.parametrize(
    ("op", "check", "health"),
    [
        (2, 6, ServerHealth.UP),
        (1, 6, ServerHealth.UP),
        (3, 6, ServerHealth.UP),
        (0, 6, ServerHealth.DOWN),
        (0, 14, ServerHealth.UNCHECKED),
        (2, 0, ServerHealth.UNCHECKED),
        (2, 2, ServerHealth.UNCHECKED),
    ],
)
def test_health_from_operational_and_check_state(op: int, check: int, health: ServerHealth) -> None:
    assert haproxy._health(op, check) is health


def test_names_and_addresses_cannot_smuggle_commands() -> None:
    lb = HaproxyRuntime("t", Path("/nonexistent.sock"), timeout=0.1)
    with pytest.raises(ValueError, match="server name"):
        lb.add("web", "a;del server web/b", "127.0.0.1", 80)
    with pytest.raises(ValueError, match="backend name"):
        lb.servers("web\nshutdown sessions")
    with pytest.raises(ValueError):
        lb.add("web", "a", "host.example", 80)  # no name to resolve
    with pytest.raises(ValueError, match="port"):
        lb.add("web", "a", "127.0.0.1", 0)
    with pytest.raises(ValueError, match="one command"):
        lb.command("show info; show stat")


def test_a_missing_socket_is_unavailable_and_check_options_need_a_check() -> None:
    with pytest.raises(LoadBalancerUnavailable, match="no socket"):
        HaproxyRuntime("t", Path("/nonexistent.sock"), timeout=0.1).servers("web")
    with pytest.raises(ValueError, match="check"):
        HaproxyRuntime("t", Path("/x.sock"), check_options=("inter", "1s"))
