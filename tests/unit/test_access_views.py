"""The access collector's samples become one AccessView per business: the servers of a backend
that was read, or stale with the balancer's reason; a server with a state the vocabulary does
not know is left out rather than guessed."""

from __future__ import annotations

from autoscaler.model import Sample
from autoscaler.model.access import ServerAdmin, ServerHealth
from autoscaler.runtime.snapshot_builder import access_views

NOW = 1_700_000_000.0
WEB = (("business", "web"), ("balancer", "edge"), ("backend", "web"))


def _server(name: str, admin: str = "ready", health: str = "up", sessions: float = 0) -> Sample:
    labels = (
        ("business", "web"),
        ("server", name),
        ("address", "10.211.1.20"),
        ("port", "80"),
        ("admin", admin),
        ("health", health),
    )
    return Sample("access_server_sessions", sessions, NOW, labels)


def test_a_backend_that_was_read_lists_its_servers_with_state_and_sessions() -> None:
    (view,) = access_views(
        [
            Sample("access_backend_read", 1, NOW, WEB),
            _server("web-1", sessions=3),
            _server("web-2", admin="drain", health="down"),
        ]
    )
    assert not view.stale and view.balancer == "edge" and view.backend == "web"
    one, two = view.servers
    assert (one.name, one.sessions, one.serving) == ("web-1", 3, True)
    assert (two.admin, two.health, two.serving) == (ServerAdmin.DRAIN, ServerHealth.DOWN, False)


def test_a_backend_that_was_not_read_is_stale_with_the_reason_and_no_servers() -> None:
    (view,) = access_views(
        [Sample("access_backend_unread", 1, NOW, (*WEB, ("reason", "connection refused")))]
    )
    assert view.stale and view.reason == "connection refused" and view.servers == ()


def test_a_server_in_an_unknown_state_is_left_out() -> None:
    (view,) = access_views(
        [
            Sample("access_backend_read", 1, NOW, WEB),
            _server("web-1", admin="weird"),
            _server("web-2"),
        ]
    )
    assert [s.name for s in view.servers] == ["web-2"]


def test_no_view_without_a_read_or_unread_sample() -> None:
    assert access_views([_server("web-1")]) == ()
