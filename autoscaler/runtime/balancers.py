"""The access layer's balancers, built from the controller file.

Where it sits: wiring shared by the collection stage (the access collector reads them) and
the actuation (the access sync and the retire actuator drive them). Nothing is connected
here: each call of a balancer opens its control socket.
"""

from __future__ import annotations

from autoscaler.config import ControllerConfig
from autoscaler.model.access import LoadBalancer


def balancers_of(config: ControllerConfig) -> dict[str, LoadBalancer]:
    """The access layer's balancers of the controller file, by name (nothing is connected
    here: each call opens the runtime API's socket)."""
    if not config.balancers:
        return {}
    from actuators.haproxy import HaproxyRuntime

    return {b.name: HaproxyRuntime(b.name, b.socket, timeout=b.timeout_s) for b in config.balancers}
