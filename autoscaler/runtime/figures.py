"""Each business's demand, ready capacity and ready instances, as one Snapshot shows them.

Where it sits: read from the latest Snapshot by the cycle (the capacity SLI of the SLA ledger),
the collect job (history) and the metrics collector (the fleet's gauges at scrape time).
"""

from __future__ import annotations

from dataclasses import dataclass

from autoscaler.model import Snapshot, VmState


@dataclass
class BusinessFigures:
    """``unmeasured``: ready VMs with no CPU figure yet (a collector's first reading, a clone
    just ready): while any is, ``demand_cores`` is only part of the business's demand."""

    demand_cores: float = 0.0
    capacity_cores: float = 0.0
    ready: int = 0
    unmeasured: int = 0

    @property
    def demand_known(self) -> bool:
        return self.unmeasured == 0


def business_figures(snapshot: Snapshot) -> dict[str, BusinessFigures]:
    out: dict[str, BusinessFigures] = {b.name: BusinessFigures() for b in snapshot.businesses}
    for vm in snapshot.vms:
        if vm.business is None or vm.business not in out or vm.state is not VmState.RUNNING:
            continue
        if not vm.ready or vm.draining:
            continue  # a booting clone's CPU is not demand; a draining VM gets none
        fig = out[vm.business]
        if vm.busy_cores is not None:
            fig.demand_cores += vm.busy_cores
        else:
            fig.unmeasured += 1
        fig.ready += 1
        fig.capacity_cores += vm.capacity_cores
    return out
