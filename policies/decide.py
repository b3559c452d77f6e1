"""decide(snapshot, policies, controls, state, now) -> Decision: the brain, a pure function.

Where it sits: between the Snapshot (built from the collectors) and the actuators. Steps:
1. score every rack's health (``policies.rack_health``);
2. forecast every business (fitted forecasters in one batch; reactive on a cold start) and
   read its SLA status, then order the businesses most SLA-critical first;
3. evacuate: live-migrate VMs off failing racks (off degraded ones too when the business's SLA
   is at risk), within the executor's caps, never on stale data, never for an SR-IOV VM (it is
   replaced by a clone instead), never in the business's maintenance window;
4. scale each business: vertical hot-adds for load beyond capacity now, clones for the
   forecast (none of a business on RBD while Ceph says its pool is near full or PGs are
   inactive, or cannot say: ``policies.storage``), retires when every scale-down rule allows
   (``policies.scaling``) and the business's access layer can drain the VM first (its balancer
   answered: ``policies.access``);
   When scaling takes no action for a business, replace one of its instances
   (``policies.rollout``): one of an out-of-date template version (a rollout), else one that
   holds hot-added resources it has not needed (scale-down by replacement);
5. drain: live-migrate every VM off the hosts an operator drains (``policies.drain``);
6. back up the VMs whose backup slot has come (``policies.backups``), after everything above
   (scaling has priority: a backup takes only what is left of the hourly cap), one per
   business per cycle, never in a maintenance window, never on an unknown catalogue;
7. brakes (``policies.brakes``): no retire and no live migration while the fleet's metrics look
   broken (a freeze, decided before 3.), and the fleet-wide cap on actions per minute
   (backups are the first to wait).
The operator's controls are an input: cordoned hosts take no VM, a paused business gets no
action (it is still assessed, so its forecast and SLA are in the Decision). Every placement is
decided on a ``PlacementView`` that already holds the earlier actions. The Plan is built once;
the mode (recommend or auto) is the cycle's business, not decide's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from autoscaler.model import VM, Action, Controls, Health, LiveMigrate, Plan, Scope, Snapshot
from policies.access import retire_hold
from policies.assess import BusinessView, assess
from policies.backups import plan_backups
from policies.brakes import actions_in_last_minute, fleet_cap, fleet_freeze
from policies.decision import Decision
from policies.drain import drain_actions
from policies.forecast import predict_many
from policies.placement import PlacementView
from policies.rack_health import RackHealth, score_racks
from policies.rollout import out_of_date, plan_rollout, plan_shrink, target_version
from policies.scaling import Budget, scale_down, scale_up, vertical
from policies.schema import BusinessPolicy, Mode
from policies.state import DecisionState


def decide(
    snapshot: Snapshot,
    policies: Mapping[str, BusinessPolicy],
    controls: Controls,
    state: DecisionState,
    now: float,
) -> Decision:
    """The Decision for ``now``: same inputs, same Plan (and the same plan id)."""
    settings = state.settings
    snapshot = with_cordons(snapshot, controls.cordoned)
    health = score_racks(snapshot, state.temperatures, now, settings.rack_health)
    placement = PlacementView(snapshot, health, settings.placement)
    forecasts = predict_many(
        {b: f for b, f in state.forecasters.items() if b in policies}, state.demand, now
    )
    views = sorted(
        (
            assess(snapshot, policies[b], state, health, forecasts.get(b), now)
            for b in sorted(policies)
        ),
        key=lambda v: v.sla_rank,
    )
    reasons: dict[str, list[str]] = {v.name: [] for v in views}
    freeze = fleet_freeze(snapshot, state.demand, policies, now, settings.brakes)
    for view in views:
        if controls.is_paused(view.name):
            reasons[view.name].append("paused by an operator")
        if view.in_maintenance:
            reasons[view.name].append("in a maintenance window: nothing disruptive")
        if view.stale:
            reasons[view.name].append(f"stale: {view.stale_why}")
    # A paused business is assessed (its figures are reported) but gets no action.
    acting = [v for v in views if not controls.is_paused(v.name)]
    names_taken = {vm.name for vm in snapshot.vms}
    budgets = {
        v.name: Budget(
            left=v.policy.scaling.max_actions_per_hour - state.actions_in_last_hour(v.name, now),
            names_taken=names_taken,
        )
        for v in acting
    }
    actions: list[Action] = []
    outgoing: Counter[str] = Counter()
    for view in acting if freeze is None else ():
        actions += evacuate(view, snapshot, health, placement, state, outgoing, len(actions))
    for view in acting:
        budget = budgets[view.name]
        if budget.left <= 0:
            reasons[view.name].append(
                f"{view.policy.scaling.max_actions_per_hour} actions in the last hour: capped"
            )
        target = target_version(view.policy, controls)
        override = target if view.name in controls.rollouts else None
        grown, extra = vertical(view, placement, state, budget)
        clones, uncovered, refused = scale_up(
            view, placement, state, budget, extra, now, version=override
        )
        if refused is not None:
            reasons[view.name].append(refused)
        if uncovered > 0 and not grown:
            # No clone possible (at the maximum, no room): hot-add is the remaining lever.
            grown, _ = vertical(view, placement, state, budget)
        actions += grown + clones
        retires: list[Action] = []
        if not clones and not grown and freeze is None:
            if (hold := retire_hold(snapshot, view.name)) is not None:
                reasons[view.name].append(hold)
            else:
                old = frozenset(v.name for v in view.vms if out_of_date(v, target))
                retires = scale_down(view, placement, state, budget, now, old)
                actions += retires
        if not clones and not grown and not retires:
            replaced = plan_rollout(view, snapshot, controls, placement, budget, freeze, now)
            if not replaced.actions:
                shrunk = plan_shrink(
                    view, snapshot, controls, placement, state, budget, freeze, now
                )
                replaced.actions += shrunk.actions
            actions += replaced.actions
            reasons[view.name] += replaced.reasons
    drains, stays = drain_actions(
        snapshot,
        policies,
        controls.draining if freeze is None else (),
        state,
        now,
        already=actions,
        health=health,
    )
    if freeze is not None:
        stays += [f"drain of {h} waits: frozen: {freeze}" for h in sorted(controls.draining)]
    drains = [d for d in drains if not controls.is_paused(d.business)]
    actions += drains
    busy = {a.vm for a in actions}
    for view in acting:
        backups, waits = plan_backups(
            snapshot,
            view.policy,
            budgets[view.name],
            now,
            busy=busy,
            draining_hosts=controls.draining,
            last_acted_at=max(state.recent_actions.get(view.name, ()), default=None),
        )
        actions += backups
        reasons[view.name] += waits
    actions, foreign = without_unowned(actions, snapshot)
    stays += foreign
    if freeze is not None:
        for view in views:
            reasons[view.name].append(f"frozen: no retire or migration: {freeze}")
    done = actions_in_last_minute(state.recent_actions, now)
    ordered = frozenset(d.key for d in drains)
    # Only what executes takes room: a recommend business's actions are exported, not done
    # (an operator's drain is done whatever the mode).
    actions, held = fleet_cap(
        actions,
        done,
        settings.brakes,
        lambda a: policies[a.business].mode is Mode.AUTO or a.key in ordered,
    )
    cap = settings.brakes.max_actions_per_minute
    held_why = tuple(
        f"held by the fleet-wide cap ({done} done in the last minute, {cap} a minute):"
        f" {a.kind} {a.vm} of {a.business}"
        for a in held
    )
    for action, why in zip(held, held_why, strict=True):
        reasons.setdefault(action.business, []).append(why)
    for action in actions:
        reasons.setdefault(action.business, []).append(action.reason)
    return Decision(
        plan=Plan.build(actions, created_at=now),
        now=now,
        rack_health=health,
        forecasts={v.name: v.forecast for v in views},
        sla={v.name: v.sla for v in views},
        reasons={b: tuple(r) for b, r in reasons.items()},
        notes=tuple(stays),
        ordered=ordered,
        freeze=freeze,
        held=held_why,
        needed_cores={v.name: v.needed_cores for v in views},
    )


def without_unowned(actions: list[Action], snapshot: Snapshot) -> tuple[list[Action], list[str]]:
    """The actions less those on a VM without a valid ownership stamp (reported only, until an
    operator adopts it), and a note per VM left alone."""
    unowned = {vm.name for vm in snapshot.vms if not vm.owned}
    if not unowned:
        return actions, []
    kept = [a for a in actions if a.kind == "clone_from_template" or a.vm not in unowned]
    notes = [
        f"{a.vm}: not acted on ({a.kind}): it carries no valid ownership stamp;"
        f" adopt it with: autoscaler adopt {a.vm} --business {a.business}"
        for a in actions
        if a not in kept
    ]
    return kept, notes


def with_cordons(snapshot: Snapshot, cordoned: frozenset[str]) -> Snapshot:
    """The snapshot with the operator's cordoned hosts marked so (placement skips them)."""
    if not cordoned:
        return snapshot
    return snapshot.model_copy(
        update={
            "hosts": tuple(
                h.model_copy(update={"cordoned": h.cordoned or h.name in cordoned})
                for h in snapshot.hosts
            )
        }
    )


def evacuate(
    view: BusinessView,
    snapshot: Snapshot,
    health: Mapping[str, RackHealth],
    placement: PlacementView,
    state: DecisionState,
    outgoing: Counter[str],
    planned: int,
) -> list[Action]:
    """Live migrations of this business's VMs off racks it should leave, within the caps."""
    settings = state.settings
    if view.in_maintenance:
        return []
    actions: list[Action] = []
    for vm in sorted(view.ready + view.pending, key=lambda v: v.name):
        host = snapshot.host_by_name[vm.host]
        rack = health.get(host.rack)
        if rack is None or rack.health in (Health.HEALTHY, Health.UNKNOWN):
            continue
        reason = _why_leave(view, rack, settings.evacuate_degraded_below_budget)
        if reason is None or not _may_move(vm, snapshot):
            continue
        if planned + len(actions) >= settings.max_migrations_per_plan:
            break
        if outgoing[vm.host] >= settings.max_outgoing_migrations_per_host:
            continue
        where = placement.choose(view.policy, vm.capacity_cores, vm.memory_mib, migrating=vm)
        if where is None:
            continue
        placement.migrate(vm.name, where.host)
        outgoing[vm.host] += 1
        actions.append(
            LiveMigrate(
                business=view.name,
                vm=vm.name,
                source=vm.host,
                destination=where.host,
                max_downtime_ms=view.policy.scaling.migration_max_downtime_ms,
                reason=f"{view.name}: {reason}: move {vm.name} {vm.host} -> {where.host}"
                f" (rack {where.rack})",
                facts={
                    "rack": host.rack,
                    "rack_health": rack.health.value,
                    "rack_score": round(rack.score, 3),
                    "destination_rack": where.rack,
                    "error_budget_left": round(view.sla.error_budget_left, 4),
                },
            )
        )
    return actions


def _why_leave(view: BusinessView, rack: RackHealth, degraded_budget: float) -> str | None:
    if rack.health is Health.FAILING:
        return rack.explanation
    risky = view.sla.alert.value != "ok" or view.sla.error_budget_left < degraded_budget
    if rack.health is Health.DEGRADED and risky:
        return (
            f"{rack.explanation}; error budget left {view.sla.error_budget_left:.0%},"
            f" alert {view.sla.alert.value}"
        )
    return None


def _may_move(vm: VM, snapshot: Snapshot) -> bool:
    """Live-migratable, on a reachable host, and measured freshly (stale data never moves VMs)."""
    host = snapshot.host_by_name[vm.host]
    return (
        vm.live_migratable
        and host.reachable
        and not snapshot.is_stale(Scope.HOST, vm.host)
        and not snapshot.is_stale(Scope.VM, vm.name)
    )
