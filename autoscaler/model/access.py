"""The access layer: the load balancer in front of a business, as the controller sees it.

Where it sits: the vocabulary shared by the collector that reads the balancer
(``AccessView`` in the Snapshot), the pure policy that says which servers a backend should
hold (``policies.access``), and the actuators that change it through a ``LoadBalancer``
(HAProxy's runtime API today; another balancer only needs this protocol). A server is named
after its VM, so the balancer's view and libvirt's can be joined without a table.

Known and unknown are kept apart, as for backups: a business whose backend could not be read
has ``stale=True`` and no servers. Nothing that needs the balancer (a drain before a retire,
a registration) is planned on a stale view, and nothing is guessed from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from pydantic import Field

from autoscaler.model.names import Name
from autoscaler.model.topology import Frozen


class ServerAdmin(StrEnum):
    """What the operator (here: the controller) asked of a server."""

    READY = "ready"
    DRAIN = "drain"  # no new sessions; the ones it has go on
    MAINT = "maint"  # out of service


class ServerHealth(StrEnum):
    """What the balancer's health check says."""

    UP = "up"
    DOWN = "down"
    UNCHECKED = "unchecked"  # no check configured, or not run yet


class ServerState(Frozen):
    """One server of a backend, as the balancer reports it."""

    name: str
    address: str
    port: int = Field(ge=0, le=65535)
    admin: ServerAdmin
    health: ServerHealth
    sessions: int = Field(default=0, ge=0, description="sessions open on it now")

    @property
    def serving(self) -> bool:
        """Takes new requests: ready and passing its check."""
        return self.admin is ServerAdmin.READY and self.health is not ServerHealth.DOWN


class AccessView(Frozen):
    """One business's backend as read at ``read_at``; ``stale``: it could not be read."""

    business: Name
    balancer: str = Field(description="which balancer serves it (the inventory's name)")
    backend: str
    read_at: float
    stale: bool = False
    reason: str = Field(default="", description="why it is stale")
    servers: tuple[ServerState, ...] = ()

    def server(self, name: str) -> ServerState | None:
        return next((s for s in self.servers if s.name == name), None)


# ---- what the access sync changes (planned by policies.access, applied by the actuator) --


@dataclass(frozen=True)
class Register:
    """Put ``server`` (a VM) into ``backend`` at ``address:port``."""

    business: str
    balancer: str
    backend: str
    server: str
    host: str
    address: str
    port: int

    @property
    def why(self) -> str:
        return f"register {self.server} of {self.business} in {self.backend} at {self.address}"


@dataclass(frozen=True)
class Deregister:
    """Take ``server`` out of ``backend``."""

    business: str
    balancer: str
    backend: str
    server: str

    @property
    def why(self) -> str:
        return f"remove {self.server} from {self.backend}: down, and no such VM in the fleet"


Registration = Register | Deregister


class LoadBalancerUnavailable(Exception):
    """The balancer's control interface did not answer (or answered nonsense): its view is
    stale until it answers again. Never a reason to guess."""


@runtime_checkable
class LoadBalancer(Protocol):
    """A balancer the controller can register servers in and drain them from.

    Every call is idempotent (adding a server that is there, or removing one that is not,
    is not an error), so an interrupted sequence can simply be run again. Calls raise
    ``LoadBalancerUnavailable`` when the balancer does not answer.
    """

    name: str

    def servers(self, backend: str) -> tuple[ServerState, ...]:
        """The servers of ``backend`` now."""
        ...

    def add(self, backend: str, server: str, address: str, port: int) -> None:
        """Register a server; it takes requests once its health check passes."""
        ...

    def drain(self, backend: str, server: str) -> None:
        """Send it no new sessions; the ones it has go on."""
        ...

    def remove(self, backend: str, server: str) -> None:
        """Take it out of the backend (out of service first, so nothing new reaches it)."""
        ...
