"""The fleet as a tree in the terminal: region / datacenter / rack / host / VM.

Where it sits: the output of ``autoscaler fleet`` and the first screen of ``make demo``; reads a
Snapshot only. Uses rich for the tree and colours.
"""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.tree import Tree

from autoscaler.model import Scope, Snapshot, VmState


def _vm_line(snapshot: Snapshot, name: str) -> str:
    vm = snapshot.vm_by_name[name]
    load = "load  n/a" if vm.cpu_utilisation is None else f"load {vm.cpu_utilisation:5.0%}"
    state = vm.state.value
    colour = "green" if vm.state is VmState.RUNNING else "yellow"
    flags = []
    if vm.ready:
        flags.append("ready")
    if vm.draining:
        flags.append("draining")
    if not vm.live_migratable:
        flags.append("not migratable")
    business = vm.business or "(unmanaged)"
    return (
        f"[bold]{vm.name}[/bold]  business={business}  size={vm.vcpus}/{vm.max_vcpus} vCPU "
        f"{vm.memory_mib}/{vm.max_memory_mib} MiB  [{colour}]{state}[/{colour}]  {load}"
        + (f"  ({', '.join(flags)})" if flags else "")
    )


def fleet_tree(snapshot: Snapshot) -> Tree:
    when = datetime.fromtimestamp(snapshot.now, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    root = Tree(
        f"[bold]fleet[/bold] at {when}: {len(snapshot.hosts)} hosts, {len(snapshot.vms)} VMs"
    )
    for region in snapshot.regions:
        r_node = root.add(f"region [cyan]{region.name}[/cyan]")
        for dc in (d for d in snapshot.datacenters if d.region == region.name):
            d_node = r_node.add(f"datacenter [cyan]{dc.name}[/cyan]")
            for rack in (k for k in snapshot.racks if k.datacenter == dc.name):
                k_node = d_node.add(f"rack [cyan]{rack.name}[/cyan]")
                for host in snapshot.hosts_by_rack.get(rack.name, []):
                    status = "[green]up[/green]" if host.reachable else "[red]unreachable[/red]"
                    if snapshot.is_stale(Scope.HOST, host.name):
                        status += " [yellow](stale)[/yellow]"
                    latency = (
                        f", libvirt {host.libvirt_latency_s * 1000:.0f} ms"
                        if host.libvirt_latency_s is not None
                        else ""
                    )
                    h_node = k_node.add(
                        f"host [bold]{host.name}[/bold] {status} ({host.cpus:g} cores,"
                        f" {host.memory_mib} MiB{latency})"
                    )
                    for vm in sorted(snapshot.vms_by_host.get(host.name, []), key=lambda v: v.name):
                        h_node.add(_vm_line(snapshot, vm.name))
    return root


def print_fleet(snapshot: Snapshot, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or under make: do not wrap at 80 columns
            console = Console(width=160)
    console.print(fleet_tree(snapshot))
