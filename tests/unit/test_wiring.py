"""One builder of the actuators' handles for ``run`` and ``apply``, from the controller file."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from actuators.domain_xml import AGENT_CHANNEL, QEMU_GA_CHANNEL
from actuators.migrate import MigrateActuator
from autoscaler.config import load_controller_config
from autoscaler.model import ConfigError
from autoscaler.runtime.wiring import actuator_registry, build_fleet, executor_limits
from policies.loader import load_policy_dir

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
