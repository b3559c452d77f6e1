"""The actuators' libvirt connection pool: reuse, health check, retirement on error.

On libvirt's ``test:///default`` driver (a real libvirt connection, in process): it shows how
connections are lent and retired, not that an actuator works (the lab tests do that).
"""

from __future__ import annotations

import libvirt
import pytest

from actuators.connections import LibvirtPool

URI = "test:///default"


class Opened:
    """libvirt.open, counting how often the pool had to open a connection."""

    def __init__(self) -> None:
        self.connections: list[libvirt.virConnect] = []

    def __call__(self, uri: str) -> libvirt.virConnect:
        conn = libvirt.open(uri)
        self.connections.append(conn)
        return conn


def test_a_connection_is_reused_across_blocks() -> None:
    opened = Opened()
    pool = LibvirtPool(opened)
    with pool.connection(URI) as first:
        first.getHostname()
    with pool.connection(URI) as second:
        second.getHostname()
    assert second is first
    assert len(opened.connections) == 1
    pool.close()


def test_an_error_out_of_the_block_retires_and_closes_the_connection() -> None:
    opened = Opened()
    pool = LibvirtPool(opened)
    with pytest.raises(libvirt.libvirtError), pool.connection(URI) as conn:
        conn.lookupByName("no-such-domain")
    with pool.connection(URI) as fresh:
        assert fresh is not conn
    assert len(opened.connections) == 2
    with pytest.raises(libvirt.libvirtError):
        conn.getHostname()  # closed by the pool
    pool.close()


def test_a_dead_connection_is_not_lent_again() -> None:
    opened = Opened()
    pool = LibvirtPool(opened)
    with pool.connection(URI) as conn:
        pass
    conn.close()  # as when the host's libvirtd goes away: isAlive() no longer says yes
    with pool.connection(URI) as fresh:
        assert fresh is not conn
        fresh.getHostname()
    pool.close()


def test_a_connection_retired_while_lent_closes_when_its_last_user_is_done() -> None:
    pool = LibvirtPool(Opened())
    held = pool.acquire(URI)
    with pytest.raises(RuntimeError), pool.connection(URI) as same:
        assert same is held.conn
        raise RuntimeError("this block failed")
    held.conn.getHostname()  # still usable by the thread that holds it
    pool.release(URI, held, broken=False)
    with pytest.raises(libvirt.libvirtError):
        held.conn.getHostname()


def test_a_closed_pool_lends_nothing() -> None:
    pool = LibvirtPool(Opened())
    pool.close()
    with pytest.raises(libvirt.libvirtError), pool.connection(URI):
        pass
