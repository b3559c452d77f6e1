"""The access layer: each business's backend as its load balancer reports it.

Where it sits: a collector, first stage of the flow. For every business whose policy has an
``access`` section it asks the named balancer (a ``LoadBalancer``: HAProxy's runtime API) for
the backend's servers, and reports one sample per server (labels: business, server, address,
port, admin, health; value: its open sessions) and one ``access_backend_read`` per backend
read. A balancer that does not answer, or is not in the controller file, gives an
``access_backend_unread`` sample with the reason instead; the snapshot builder then marks the
business's ``AccessView`` stale and nothing that needs the balancer is planned for it. It is
not a stale *business* scope on purpose: the business's own metrics are fine, and it goes on
scaling out (its clones are registered once the balancer answers again).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from autoscaler.model import AccessTarget, Collection, Sample, Scope
from autoscaler.model.access import LoadBalancer, LoadBalancerUnavailable

READ = "access_backend_read"
UNREAD = "access_backend_unread"
SERVER = "access_server_sessions"
SOURCE = "access"


@dataclass
class AccessCollector:
    """Reads every business's backend from the balancer the policies in force name."""

    balancers: Mapping[str, LoadBalancer]
    targets: Callable[[], Mapping[str, AccessTarget]]
    name: str = SOURCE
    scope: Scope = Scope.BUSINESS
    target: str = "*"

    def collect(self, now: float) -> Collection:
        started = time.monotonic()
        samples: list[Sample] = []
        errors: list[str] = []
        for business, target in sorted(self.targets().items()):
            labels = (
                ("business", business),
                ("balancer", target.balancer),
                ("backend", target.backend),
            )
            balancer = self.balancers.get(target.balancer)
            try:
                if balancer is None:
                    raise LoadBalancerUnavailable("not in the controller file")
                servers = balancer.servers(target.backend)
            except LoadBalancerUnavailable as exc:
                why = str(exc) or type(exc).__name__
                samples.append(Sample(UNREAD, 1.0, now, (*labels, ("reason", why[:300]))))
                errors.append(f"{business}: {target.balancer}: {why}")
                continue
            samples.append(Sample(READ, 1.0, now, labels))
            for server in servers:
                samples.append(
                    Sample(
                        SERVER,
                        float(server.sessions),
                        now,
                        (
                            ("business", business),
                            ("server", server.name),
                            ("address", server.address),
                            ("port", str(server.port)),
                            ("admin", server.admin.value),
                            ("health", server.health.value),
                        ),
                    )
                )
        return Collection(
            source=self.name,
            samples=tuple(samples),
            duration_s=time.monotonic() - started,
            errors=tuple(errors),
        )
