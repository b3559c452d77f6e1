"""One builder of the actuators' handles for ``run`` and ``apply``, from the controller file;
and what else of the controller file reaches the controller shell (brakes, memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from actuators.domain_xml import AGENT_CHANNEL, QEMU_GA_CHANNEL
from actuators.migrate import MigrateActuator
from autoscaler.config import load_controller_config
from autoscaler.model import ConfigError
from autoscaler.observability.exporter import ControllerMetrics, HealthState
from autoscaler.runtime.collection import CollectionStage
from autoscaler.runtime.controller import Controller
from autoscaler.runtime.memory import ControllerMemory
from autoscaler.runtime.memory_file import MemoryFile
from autoscaler.runtime.wiring import actuator_registry, build_fleet, executor_limits
from policies.loader import load_policy_dir
from tests.unit.policies.builders import NOW

ROOT = Path(__file__).resolve().parents[2]


def controller_file(tmp_path: Path, **changes: object) -> Path:
    yaml = YAML(typ="safe", pure=True)
    doc = yaml.load((ROOT / "examples" / "controller.yaml").read_text())
    doc["policy_dir"] = str(ROOT / "examples" / "businesses")
    doc["image_dir"] = str(ROOT / "examples" / "images")
    doc["state_dir"] = str(tmp_path / "state")
    doc.update(changes)
    path = tmp_path / "controller.yaml"
    with path.open("w") as out:
        yaml.dump(doc, out)
    return path


def test_apply_and_run_get_the_migration_settings_of_the_controller_file(tmp_path: Path) -> None:
    config = load_controller_config(
        controller_file(
            tmp_path,
            executor={"migration_bandwidth_mib_s": 7, "migration_stall_s": 12, "retries": 1},
        )
    )
    migrate = actuator_registry(config)["live_migrate"]
    assert isinstance(migrate, MigrateActuator)
    assert (migrate.bandwidth_mib_s, migrate.stall_s) == (7, 12)
    assert executor_limits(config).retries == 1


def test_guests_get_the_channel_of_the_agent_the_controller_file_names(tmp_path: Path) -> None:
    policies = load_policy_dir(ROOT / "examples" / "businesses")
    default = build_fleet(load_controller_config(controller_file(tmp_path)), policies)
    assert default.channels == (QEMU_GA_CHANNEL,)
    assert default.readiness is not None and default.readiness.name == "qemu-guest-agent"
    serial = build_fleet(
        load_controller_config(
            controller_file(tmp_path, guest_agent="serial", guest_channels=["org.example.load"])
        ),
        policies,
    )
    assert serial.channels == (AGENT_CHANNEL, "org.example.load")
    assert serial.readiness is not None and serial.readiness.name == "serial-agent"
    assert serial.observer is not None


@pytest.mark.parametrize("channel", ["../etc", "a'b", "Org.Upper", "x y", ""])
def test_a_channel_name_that_could_leave_its_attribute_is_refused(
    tmp_path: Path, channel: str
) -> None:
    with pytest.raises(ConfigError, match="guest_channels"):
        load_controller_config(controller_file(tmp_path, guest_channels=[channel]))


def test_the_controller_file_sets_the_brakes_and_the_controller_restores_its_memory(
    tmp_path: Path,
) -> None:
    """The controller file's brakes, Ceph near-full ratio and snapshot limit reach the Cycle;
    the controller shell restores the memory its state folder holds."""
    path = controller_file(
        tmp_path,
        brakes={"max_actions_per_minute": 7, "collapse_drop": 0.9},
        intervals={"collect_s": 4, "stale_snapshot_collects": 5},
        ceph={"conf": "/etc/ceph/ceph.conf", "nearfull_ratio": 0.8},
    )
    config = load_controller_config(path)
    config.state_dir.mkdir(parents=True)
    saved = ControllerMemory(last_scale_down={"web": NOW - 30})
    saved.recent_actions["web"] += [NOW - 60, NOW - 30]
    MemoryFile(config.state_dir / "memory.json").save(saved.to_record(NOW))
    collection = CollectionStage([])
    controller = Controller(
        config,
        holder="t",
        metrics=ControllerMetrics(),
        health=HealthState(interval_s=config.intervals.decide_s),
        collection=collection,
        actuation=None,
        clock=lambda: NOW,
    )
    try:
        settings = controller.cycle.settings
        assert settings.decide.brakes.max_actions_per_minute == 7
        assert settings.decide.brakes.collapse_drop == 0.9
        assert settings.decide.storage.pool_nearfull_ratio == 0.8  # the Ceph gate on clones
        assert settings.snapshot_max_age_s == 5 * 4 + collection.deadline_s
        assert controller.memory.recent_actions["web"] == [NOW - 60, NOW - 30]
        assert controller.memory.last_scale_down == {"web": NOW - 30}
    finally:
        collection.close()
        controller.history.close()


def test_shared_state_is_refused_without_the_shared_lease_naming_the_field(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_controller_config(
            controller_file(tmp_path, lease={"kind": "file"}, state={"kind": "rados"})
        )
    assert "lease: {kind: rados}" in str(raised.value)
    shared = load_controller_config(
        controller_file(
            tmp_path,
            lease={"kind": "rados"},
            ceph={"conf": "/etc/ceph/ceph.conf", "pool": "fleet"},
            state={"kind": "rados", "namespace": "dc1"},
        )
    )
    assert (shared.state_pool, shared.state.namespace) == ("fleet", "dc1")
    assert load_controller_config(controller_file(tmp_path)).state.kind == "local"
    with pytest.raises(ConfigError, match="namespace"):
        load_controller_config(
            controller_file(
                tmp_path,
                lease={"kind": "rados"},
                ceph={"conf": "/etc/ceph/ceph.conf"},
                state={"kind": "rados", "namespace": "../x"},
            )
        )
