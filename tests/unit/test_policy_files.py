"""Business policy and controller files: the examples load, every bad file names file:line:field."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.cli.main import main
from autoscaler.config import load_controller_config
from autoscaler.model import ConfigError
from policies.loader import load_policy, load_policy_dir
from policies.schema import Backup, BusinessPolicy, MaintenanceWindow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "businesses"
IMAGES = {p.name for p in (ROOT / "examples" / "images").iterdir()}
WEB = (EXAMPLES / "web.yaml").read_text()
DB_REPLICA = (EXAMPLES / "db-replica.yaml").read_text()


def write(tmp_path: Path, text: str, name: str = "web.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_every_example_business_loads_with_its_image() -> None:
    policies = load_policy_dir(EXAMPLES, images=IMAGES)
    assert len(policies) == 8
    assert policies["db-replica"].to_business().template.live_migratable is False
    assert policies["web"].sla.objective == 99.95
    assert policies["web"].sla.window_days == 30


@pytest.mark.parametrize(
    ("old", "new", "field", "expected"),
    [
        ("mode: auto", "mdoe: auto", "mdoe", "unknown field"),
        (
            "  max_per_rack: 2",
            "  max_per_rack: 2\n  spred: rack",
            "placement.spred",
            "unknown field",
        ),
        (
            "instances: {min: 2, max: 8}",
            "instances: {min: 5, max: 3}",
            "instances",
            "max (3) must be at least min (5)",
        ),
        (
            "vcpus: {now: 1, max: 4}",
            "vcpus: {now: 4, max: 2}",
            "template.vcpus",
            "max (2) must be at least now (4)",
        ),
        ("objective: 99.95", "objective: 120", "sla.objective", "less than 100"),
        ("image: web.qcow2", "image: nope.qcow2", "template.image", "does not exist"),
        ("image: web.qcow2", "image: ../../etc/passwd", "template.image", "plain file name"),
        (
            "nic: virtio",
            "nic: e1000",
            "template.nic",
            "'virtio', 'vhost-net', 'macvtap' or 'sr-iov'",
        ),
        ("business: web", 'business: "web\'><x"', "business", "not a safe name"),
        (
            "target_utilisation: 0.6",
            "target_utilisation: high",
            "scaling.target_utilisation",
            "valid number",
        ),
        ('start: "02:00"', 'start: "25:00"', "maintenance[0].start", "HH:MM"),
    ],
)
def test_bad_business_file_names_file_line_and_field(
    tmp_path: Path, old: str, new: str, field: str, expected: str
) -> None:
    assert old in WEB
    text = WEB.replace(old, new)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path, images=IMAGES)
    message = str(caught.value)
    first_new_line = new.splitlines()[-1].strip().split(":")[0]
    assert f"{path}:{line_of(text, first_new_line)}: field '{field}'" in message
    assert expected in message


@pytest.mark.parametrize(
    ("old", "new", "field", "expected"),
    [
        ("every: 1d", "every: 30m", "backup.every", "every must be at least 1h (got 1800 s)"),
        ("every: 1d", "every: daily", "backup.every", "'daily' is not a duration"),
        ("keep: 7", "keep: 0", "backup.keep", "greater than or equal to 1"),
        ('at: "03:00"', 'at: "3am"', "backup.at", "at '3am' must be HH:MM"),
        (
            "target: {kind: pool, pool: backups}",
            "target: {kind: folder, path: mnt/backup}",
            "backup.target.path",
            "path 'mnt/backup' must be absolute",
        ),
        (
            "target: {kind: pool, pool: backups}",
            "target: {kind: pool, pool: Backups_1}",
            "backup.target.pool",
            "not a safe name",
        ),
        ("target: {kind: pool, pool: backups}", "target: {kind: tape}", "backup.target", "tape"),
        ("keep: 7", "keep: 7\n  kept: 3", "backup.kept", "unknown field"),
    ],
)
def test_bad_backup_section_names_file_line_and_field(
    tmp_path: Path, old: str, new: str, field: str, expected: str
) -> None:
    assert old in DB_REPLICA
    text = DB_REPLICA.replace(old, new)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path, images=IMAGES)
    message = str(caught.value)
    key = new.splitlines()[-1].strip().split(":")[0]
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith(f"  {key}:"))
    assert f"{path}:{line}: field '{field}'" in message
    assert expected in message


def test_backup_durations_take_units_and_a_folder_target_an_absolute_path() -> None:
    backup = load_policy(EXAMPLES / "db-replica.yaml").backup
    assert backup is not None and backup.every == 86400 and backup.phase_s == 3 * 3600
    folder = Backup.model_validate(
        {"every": "1h30m", "keep": 1, "target": {"kind": "folder", "path": "/mnt/backup"}}
    )
    assert folder.every == 5400 and folder.at is None and folder.phase_s == 0
    assert Backup.model_validate({**folder.model_dump(), "every": 7200}).every == 7200


def test_a_backup_section_on_a_template_with_local_disks_names_the_field(
    tmp_path: Path,
) -> None:
    backup = DB_REPLICA[DB_REPLICA.index("backup:") :]
    path = write(tmp_path, WEB + backup)
    with pytest.raises(ConfigError) as caught:
        load_policy(path, images=IMAGES)
    line = len(WEB.splitlines()) + 1
    assert f"{path}:{line}: field 'backup'" in str(caught.value)
    assert "template.storage" in str(caught.value)


def test_missing_required_field_is_named(tmp_path: Path) -> None:
    text = "\n".join(line for line in WEB.splitlines() if not line.startswith("instances"))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"field 'instances': required field is missing"):
        load_policy(path, images=IMAGES)


def test_broken_yaml_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "business: web\ntemplate: [\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: field '-': not valid YAML"):
        load_policy(path)


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, WEB + "mode: recommend\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_policy(path)


def test_a_file_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_policy(write(tmp_path, "- just\n- a list\n"))


def test_two_files_for_one_business_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, WEB, "a.yaml")
    write(tmp_path, WEB, "b.yaml")
    with pytest.raises(ConfigError, match="already defined in"):
        load_policy_dir(tmp_path)


def test_maintenance_window_contains_its_instants() -> None:
    window = MaintenanceWindow(days=("sun",), start="23:00", duration_minutes=120)
    sunday_2330 = 1_700_436_600.0  # 2023-11-19 23:30 UTC, a Sunday
    assert window.contains(sunday_2330)
    assert window.contains(sunday_2330 + 3600)  # Monday 00:30: the window runs over midnight
    assert not window.contains(sunday_2330 + 2 * 3600)
    assert not window.contains(sunday_2330 - 86400)


def test_schema_command_prints_the_policy_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert '"title": "BusinessPolicy"' in out
    assert '"additionalProperties": false' in out


def test_validate_command_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in sorted(EXAMPLES.glob("*.yaml"))]
    assert main(["validate", *files]) == 0
    assert capsys.readouterr().out.count(": ok") == 8


def test_validate_command_fails_on_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, WEB.replace("objective: 99.95", "objective: 120"))
    good = EXAMPLES / "api.yaml"
    assert (
        main(["validate", str(good), str(bad), "--image-dir", str(ROOT / "examples/images")]) == 1
    )
    err = capsys.readouterr().err
    assert f"{bad}:{line_of(WEB, 'objective')}: field 'sla.objective'" in err


CONTROLLER = """\
apiVersion: autoscaler/v1
kind: Controller
policy_dir: {policies}
image_dir: {images}
state_dir: state
domain_type: kvm
inventory:
  regions:
    - name: north
      datacenters:
        - name: n1
          racks:
            - name: r1
              hosts:
                - {{name: kvm-1, uri: "qemu+tls://kvm-1/system", cpus: 32, memory_mib: 262144}}
                - {{name: kvm-2, uri: "qemu+tls://kvm-2/system", cpus: 32, memory_mib: 262144}}
intervals: {{collect_s: 5, decide_s: 10}}
"""


def test_controller_file_loads_and_resolves_folders(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        CONTROLLER.format(policies=EXAMPLES, images=ROOT / "examples/images"),
        "controller.yaml",
    )
    config = load_controller_config(path)
    assert config.state_dir == tmp_path / "state"
    regions, dcs, racks, hosts = config.inventory.topology()
    assert [h.name for h in hosts] == ["kvm-1", "kvm-2"]
    assert main(["validate", str(path)]) == 0


def test_controller_file_rejects_duplicate_hosts_and_typos(tmp_path: Path) -> None:
    text = CONTROLLER.format(policies=EXAMPLES, images=ROOT / "examples/images")
    path = write(tmp_path, text.replace("name: kvm-2", "name: kvm-1"), "c.yaml")
    with pytest.raises(ConfigError, match="host names must be unique; repeated: kvm-1"):
        load_controller_config(path)
    path = write(tmp_path, text.replace("decide_s", "decied_s"), "c.yaml")
    with pytest.raises(ConfigError, match=r"c.yaml:17: field 'intervals.decied_s': unknown field"):
        load_controller_config(path)


def test_policy_model_forbids_extra_fields_everywhere() -> None:
    schema = BusinessPolicy.model_json_schema(by_alias=True)
    for name, definition in schema.get("$defs", {}).items():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, name


ACCESS = "access:\n  kind: haproxy\n  balancer: edge\n  port: 80\n  drain_timeout: 20s\n"


@pytest.mark.parametrize(
    ("old", "new", "field", "expected"),
    [
        ("kind: haproxy", "kind: nginx", "access", "'nginx'"),
        ("balancer: edge", "balancer: Edge_1", "access.balancer", "not a safe name"),
        ("port: 80", "port: 0", "access.port", "greater than or equal to 1"),
        ("drain_timeout: 20s", "drain_timeout: 2h", "access.drain_timeout", "at most 1h"),
        ("port: 80", "port: 80\n  prot: 81", "access.prot", "unknown field"),
    ],
)
def test_bad_access_section_names_file_line_and_field(
    tmp_path: Path, old: str, new: str, field: str, expected: str
) -> None:
    text = WEB + ACCESS.replace(old, new)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path, images=IMAGES, balancers={"edge"})
    message = str(caught.value)
    key = new.splitlines()[-1].strip().split(":")[0]
    lines = text.splitlines()
    line = next(
        (i for i, t in enumerate(lines, 1) if t.startswith(f"  {key}:") and field != "access"),
        lines.index("access:") + 1,
    )
    assert f"{path}:{line}: field '{field}'" in message, message
    assert expected in message


def test_an_access_section_naming_a_balancer_the_controller_lacks_names_the_field(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, WEB + ACCESS)
    assert load_policy(path, images=IMAGES).access is not None  # not checked without a list
    with pytest.raises(ConfigError) as caught:
        load_policy(path, images=IMAGES, balancers={"lb-1"})
    line = (WEB + ACCESS).splitlines().index("  balancer: edge") + 1
    assert f"{path}:{line}: field 'access.balancer'" in str(caught.value)
    assert "not in the controller file's balancers (lb-1)" in str(caught.value)
