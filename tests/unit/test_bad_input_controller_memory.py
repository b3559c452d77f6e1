"""The controller's memory across restarts, and a snapshot too old to decide on.

The same ``Cycle`` the controller schedules, on the simulated fleet (``tests.unit.test_cycle``'s
``Run``), with the real ``MemoryFile`` in a temporary state folder: caps, cooldowns and the SLA
ledger survive a restart and a takeover; a garbled, planted or newer record never turns into an
empty memory that lifts the caps; a stale snapshot is refused, shown, and decided on again once
a fresh one comes. Each test records its reliability row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from autoscaler.model import ConfigError, Controls, Retire
from autoscaler.observability.exporter import HealthState
from autoscaler.runtime.cycle import Cycle
from autoscaler.runtime.memory import ControllerMemory
from autoscaler.runtime.memory_file import MemoryFile, restore_memory
from autoscaler.simulation.fleet import FixedControls
from policies.decide import decide
from policies.sla import sla_status
from policies.state import DecideSettings
from tests.reliability import record
from tests.unit.policies.builders import NOW, Fleet, history, policy
from tests.unit.test_cycle import STEP_S, Run, trace, web

pytest_plugins = ["tests.reliability_plugin"]
log = logging.getLogger("test.memory")


def _scaled_out(store: MemoryFile) -> Run:
    """A web business that scaled out under a jump, its memory saved in ``store``."""
    demand = np.concatenate([np.full(10, 0.2), np.full(20, 1.5)])
    run = Run(web(max_actions_per_hour=6), trace(demand), instances=2)
    run.cycle.store = store
    return run.step()


def _restarted(run: Run, memory: ControllerMemory, store: MemoryFile | None) -> Cycle:
    """A new Cycle on the same fleet; web paused, so that what it remembers is only what it
    was given (nothing it does itself)."""
    return Cycle(
        snapshots=run.fleet,
        actuation=run.fleet,
        plans=run.plans,
        controls=FixedControls(Controls(paused=frozenset({"web"}))),
        history=run.history,
        policies=lambda: {"web": run.policy},
        settings=run.cycle.settings,
        memory=memory,
        store=store,
    )


def _figures(cycle: Cycle, run: Run, now: float) -> tuple[int, float, float]:
    state = cycle.memory.decision_state({}, cycle.settings.decide)
    budget = sla_status(state.sla["web"], run.policy.sla, now).error_budget_left
    return state.actions_in_last_hour("web", now), state.last_scale_up["web"], budget


def test_caps_cooldowns_and_the_sla_ledger_survive_a_restart_and_a_takeover(
    tmp_path: Path,
) -> None:
    """The controller restarted (or a standby taking over) after it acted."""
    store = MemoryFile(tmp_path / "memory.json")
    run = _scaled_out(store)
    now = float(run.times[-1])
    before = _figures(run.cycle, run, now)
    assert before[0] >= 2 and before[2] < 1.0, "the run acted and burned budget"
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600

    restarted = _restarted(run, restore_memory(store, now, log), store)
    assert _figures(restarted, run, now) == before

    standby = _restarted(run, ControllerMemory(), store)  # started before the leader acted
    standby.run_once(now, generation=None)
    assert "web" not in standby.memory.recent_actions
    standby.run_once(now, generation=2)  # takes over: the leader's memory, not its own
    assert _figures(standby, run, now) == before
    later = now + STEP_S  # the standby's own interval after the saved ledger is kept
    standby.memory.ledgers["web"] = standby.memory.ledgers["web"].record(later, 60, 60, 1e9)
    standby.run_once(later, generation=None)
    standby.run_once(later, generation=3)
    assert standby.memory.ledgers["web"].ends_s[-1] == later
    record(
        "bad-input",
        "controller restarted or failed over after acting",
        injected=f"a new Cycle (restart) and a standby taking over, after {before[0]} actions",
        behaviour=f"both see the same hourly cap count ({before[0]}), scale-up cooldown and"
        f" error budget left ({before[2]:.1%}), read from state_dir/memory.json (0600)",
        lost="nothing",
    )


def _quiet_decision(memory: ControllerMemory) -> list[Retire]:
    fleet = Fleet()
    fleet.add_vms("web", 6, utilisation=0.1)
    pol = policy("web")
    state = memory.decision_state({"web": history([0.15] * 24)}, DecideSettings())
    plan = decide(fleet.snapshot(pol), {"web": pol}, Controls(), state, NOW).plan
    return [a for a in plan.actions if isinstance(a, Retire)]


GARBLED = {
    "not json": b"\x00\xffnot json",
    "truncated": b'{"schema_version": 1, "saved_at": 17, "recent_actions": {"web": [1',
    "a list": b"[1, 2, 3]",
    "wrong types": json.dumps({"schema_version": 1, "saved_at": "x"}).encode(),
    "unknown field": json.dumps({"schema_version": 1, "saved_at": 1, "caps": {}}).encode(),
    "hostile business name": json.dumps(
        {"schema_version": 1, "saved_at": 1, "last_scale_up": {"../x": 1}}
    ).encode(),
    "nan time": b'{"schema_version": 1, "saved_at": NaN, "last_scale_down": {"web": NaN}}',
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(GARBLED))
def test_a_garbled_memory_file_is_kept_aside_and_the_controller_starts_conservatively(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A garbled memory file at start."""
    path = tmp_path / "memory.json"
    path.write_bytes(GARBLED[name])
    with caplog.at_level(logging.ERROR):
        memory = restore_memory(MemoryFile(path, clock=lambda: NOW), NOW, log)
    assert memory.conservative_since == NOW
    assert "saved memory unreadable" in caplog.text
    aside = tmp_path / f"memory.json.unreadable-{int(NOW)}"
    assert aside.read_bytes() == GARBLED[name] and not path.exists()
    assert _quiet_decision(ControllerMemory()), "a fresh memory would retire here"
    assert _quiet_decision(memory) == []
    record(
        "bad-input",
        f"memory file garbled: {name}",
        injected=f"state_dir/memory.json holding {name} bytes",
        behaviour="error logged, the bytes kept aside as memory.json.unreadable-<time>;"
        " started conservatively: cooldowns from now, no retire on a quiet business",
        lost="the saved caps and ledger (kept aside for an operator); no VM",
    )


def test_a_memory_record_from_a_newer_controller_is_refused_with_a_clear_error(
    tmp_path: Path,
) -> None:
    """A memory record whose schema_version is newer than this controller knows."""
    path = tmp_path / "memory.json"
    text = json.dumps({"schema_version": 2, "saved_at": 1.0, "future": {"x": 1}})
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        restore_memory(MemoryFile(path), NOW, log)
    message = str(refused.value)
    assert "schema_version" in message and "newer than this controller" in message
    assert str(path) in message
    assert path.read_text() == text  # left for the newer controller
    record(
        "bad-input",
        "memory record from a newer controller",
        injected="state_dir/memory.json with schema_version 2 (this code knows 1)",
        behaviour=f"refused to start with a ConfigError: {message[:120]}; the file left as is",
        lost="nothing",
    )


def test_the_memory_file_is_written_0600_and_never_through_a_planted_symlink(
    tmp_path: Path,
) -> None:
    """Symlinks planted at the memory file and at its temporary name."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "memory.json"
    path.symlink_to(victim)
    (tmp_path / ".memory.json.tmp").symlink_to(victim)
    store = MemoryFile(path)
    memory = restore_memory(store, NOW, log)  # reading refuses the link (O_NOFOLLOW)
    assert memory.conservative_since == NOW
    store.save(ControllerMemory(last_scale_up={"web": NOW}).to_record(NOW))
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    again = store.load()
    assert again is not None and again.last_scale_up == {"web": NOW}
    record(
        "bad-input",
        "symlinks planted at the memory file",
        injected="memory.json and its temporary name symlinked to another file",
        behaviour="read refused (started conservatively); written as a new 0600 file, the"
        " link target untouched",
        lost="nothing",
    )


def test_a_snapshot_older_than_its_limit_is_refused_then_decided_on_when_fresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Collection stopped: the last snapshot ages past three collect intervals."""
    demand = np.concatenate([np.full(10, 0.4), np.full(10, 1.5)])
    run = Run(web(), trace(demand), instances=2)
    limit = 3 * STEP_S
    run.cycle.settings = dataclasses.replace(run.cycle.settings, snapshot_max_age_s=limit)
    run.step(10)
    taken = float(run.times[9])
    metric = run.cycle.metrics.registry.get_sample_value
    with caplog.at_level(logging.WARNING):
        fresh = run.cycle.run_once(taken + limit, generation=1)
        stale = run.cycle.run_once(taken + limit + 1, generation=1)
    assert fresh.decision is not None
    assert stale.decision is None and stale.executed is None
    assert "stale snapshot refused" in caplog.text
    assert metric("autoscaler_stale_snapshot") == 1
    assert metric("autoscaler_stale_snapshot_refusals_total") == 1
    health = HealthState(interval_s=STEP_S, stale_snapshot=run.cycle.stale_snapshot)
    shown = health.check(taken + limit + 1)[1]["stale_snapshot"]
    assert isinstance(shown, str) and "more than 180 s" in shown
    run.step(1)  # the next collection: fresh, decided on (and the jump acted on)
    assert run.results[-1].decision is not None and run.results[-1].executed is not None
    assert run.cycle.stale_snapshot is None and metric("autoscaler_stale_snapshot") == 0
    record(
        "bad-input",
        "a snapshot older than three collect intervals",
        injected="collection stopped with demand jumping; decide asked to run 181 s after the"
        " last snapshot (limit 3 x 60 s)",
        behaviour="refused: no decision, no action; logged, autoscaler_stale_snapshot 1,"
        " /healthz stale_snapshot says why; decided and acted on the next fresh one",
        lost="nothing",
    )
