"""The shared vocabulary: names, sizes, snapshots and plans, and their JSON round trips."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from autoscaler.model import (
    VM,
    BackupCatalogue,
    BackupInstance,
    BackupRecord,
    Business,
    CloneFromTemplate,
    Datacenter,
    Host,
    HotAddVcpu,
    LiveMigrate,
    NicModel,
    Plan,
    Rack,
    Region,
    Retire,
    Sample,
    Scope,
    Signal,
    Snapshot,
    SnapshotDisk,
    Stale,
    Template,
    TemporaryError,
    VmState,
    check_name,
)

TEMPLATE = Template(image="web.qcow2", vcpus=1, max_vcpus=4, memory_mib=256, max_memory_mib=1024)


def small_snapshot() -> Snapshot:
    return Snapshot(
        now=1_700_000_000.0,
        regions=(Region(name="north"),),
        datacenters=(Datacenter(name="n1", region="north"),),
        racks=(Rack(name="r1", datacenter="n1"), Rack(name="r2", datacenter="n1")),
        hosts=(
            Host(name="h1", rack="r1", uri="qemu+tcp://10.0.0.1/system", cpus=8, memory_mib=32768),
            Host(name="h2", rack="r2", uri="qemu+tcp://10.0.0.2/system", cpus=8, memory_mib=32768),
        ),
        vms=(
            VM(
                name="web-1",
                host="h1",
                business="web",
                state=VmState.RUNNING,
                vcpus=1,
                max_vcpus=4,
                memory_mib=256,
                max_memory_mib=1024,
                cpu_quota=0.25,
                cpu_utilisation=0.5,
                ready=True,
            ),
            VM(
                name="db-1",
                host="h2",
                business=None,
                state=VmState.RUNNING,
                vcpus=2,
                max_vcpus=2,
                memory_mib=512,
                max_memory_mib=512,
                nic_model=NicModel.SRIOV,
            ),
        ),
        businesses=(Business(name="web", template=TEMPLATE, min_instances=1, max_instances=4),),
        signals=(
            Signal(
                scope=Scope.RACK,
                target="r2",
                name="temperature_celsius",
                value=31.5,
                observed_at=1_699_999_990.0,
            ),
        ),
        stale=(
            Stale(
                scope=Scope.HOST,
                target="h2",
                source="libvirt:h2",
                last_good=1_699_999_900.0,
                reason="timed out",
            ),
        ),
    )


@pytest.mark.parametrize("name", ["web", "web-1", "a", "n1-r1-h1", "x" * 63, "0abc"])
def test_safe_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Web",
        "web_1",
        "-web",
        "web-",
        "we b",
        "we'b",
        'we"b',
        "<web>",
        "a/b",
        "..",
        "a..b",
        "x" * 64,
        "web\n",
        "wéb",
    ],
)
def test_unsafe_names_are_rejected_with_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match="not a safe name"):
        check_name(name)


def test_names_are_validated_where_they_enter_a_model() -> None:
    with pytest.raises(ValidationError, match="not a safe name"):
        VM(
            name="web'><evil/>",
            host="h1",
            state=VmState.RUNNING,
            vcpus=1,
            max_vcpus=1,
            memory_mib=256,
            max_memory_mib=256,
        )


def test_template_maximum_below_current_is_rejected() -> None:
    with pytest.raises(ValidationError, match="max_vcpus"):
        Template(image="x.qcow2", vcpus=4, max_vcpus=2, memory_mib=256, max_memory_mib=256)


def test_sriov_vm_is_not_live_migratable() -> None:
    snapshot = small_snapshot()
    assert snapshot.vm_by_name["web-1"].live_migratable
    assert not snapshot.vm_by_name["db-1"].live_migratable


def test_vm_capacity_and_busy_cores_follow_the_quota() -> None:
    vm = small_snapshot().vm_by_name["web-1"]
    assert vm.capacity_cores == pytest.approx(0.25)
    assert vm.busy_cores == pytest.approx(0.125)
    assert small_snapshot().vm_by_name["db-1"].busy_cores is None


def test_snapshot_round_trips_through_json() -> None:
    snapshot = small_snapshot()
    text = snapshot.to_json()
    assert json.loads(text)["format"] == "autoscaler.snapshot/v1"
    assert Snapshot.from_json(text) == snapshot


def test_snapshot_rejects_unknown_fields_and_dangling_references() -> None:
    raw = json.loads(small_snapshot().to_json())
    raw["vms"][0]["hots"] = "h1"
    with pytest.raises(ValidationError, match="hots"):
        Snapshot.model_validate(raw)
    raw = json.loads(small_snapshot().to_json())
    raw["vms"][0]["host"] = "h9"
    with pytest.raises(ValidationError, match="unknown host 'h9'"):
        Snapshot.model_validate(raw)


def test_snapshot_rejects_duplicate_vms() -> None:
    raw = json.loads(small_snapshot().to_json())
    raw["vms"].append(raw["vms"][0])
    with pytest.raises(ValidationError, match="vm 'web-1' appears twice"):
        Snapshot.model_validate(raw)


def test_backup_catalogues_round_trip_and_tell_unknown_from_none() -> None:
    listed = BackupCatalogue(
        business="web",
        listed_at=1.0,
        records=(BackupRecord(vm="web-1", last_success_at=0.5, count=2, last_failure_at=None),),
    )
    snapshot = small_snapshot().model_copy(update={"backups": (listed,)})
    again = Snapshot.from_json(snapshot.to_json())
    assert again == snapshot
    assert again.backups_by_business["web"].record("web-1") == listed.records[0]
    assert again.backups_by_business["web"].record("web-2") is None  # listed: none
    assert "db" not in again.backups_by_business  # not listed: unknown
    assert small_snapshot().backups == ()


def test_backup_catalogues_reject_a_business_or_a_vm_twice() -> None:
    raw = json.loads(small_snapshot().to_json())
    raw["backups"] = [{"business": "web", "listed_at": 1.0}] * 2
    with pytest.raises(ValidationError, match="backup catalogue 'web' appears twice"):
        Snapshot.model_validate(raw)
    raw["backups"] = [{"business": "web", "listed_at": 1.0, "records": [{"vm": "a"}, {"vm": "a"}]}]
    with pytest.raises(ValidationError, match="vm 'a' twice"):
        Snapshot.model_validate(raw)


def test_snapshot_staleness_of_a_host_includes_its_rack() -> None:
    snapshot = small_snapshot()
    assert snapshot.is_stale(Scope.HOST, "h2")
    assert not snapshot.is_stale(Scope.HOST, "h1")
    rack_stale = snapshot.model_copy(
        update={"stale": (Stale(scope=Scope.RACK, target="r1", source="ceph", last_good=None),)}
    )
    assert rack_stale.is_stale(Scope.HOST, "h1")


def test_snapshot_indexes() -> None:
    snapshot = small_snapshot()
    assert [v.name for v in snapshot.vms_by_business["web"]] == ["web-1"]
    assert snapshot.rack_of("h2").name == "r2"
    assert snapshot.datacenter_of("h1").region == "north"
    assert snapshot.signals_for(Scope.RACK, "r2")[0].value == 31.5


def test_action_keys_identify_the_intended_end_state() -> None:
    add = HotAddVcpu(business="web", vm="web-1", host="h1", vcpus=2, reason="saturated")
    assert add.key == "hot_add_vcpu/web-1/vcpus=2"
    clone = CloneFromTemplate(business="web", vm="web-7", host="h2", reason="forecast")
    assert clone.key == "clone_from_template/web-7"
    move = LiveMigrate(business="web", vm="web-1", source="h1", destination="h2", reason="rack")
    assert move.key == "live_migrate/web-1/h1->h2"
    assert move.hosts == ("h1", "h2")
    backup = BackupInstance(
        business="web", vm="web-1", host="h1", backup_id="b20261201t0300", reason="slot"
    )
    assert backup.key == "backup/web-1/b20261201t0300"
    assert backup.hosts == ("h1",)
    assert Plan.from_json(Plan.build([backup], created_at=1.0).to_json()).actions == (backup,)
    with pytest.raises(ValidationError, match="not a safe name"):
        BackupInstance(business="web", vm="web-1", host="h1", backup_id="B/1", reason="x")


def test_live_migration_to_the_same_host_is_rejected() -> None:
    with pytest.raises(ValidationError, match="both 'h1'"):
        LiveMigrate(business="web", vm="web-1", source="h1", destination="h1", reason="x")


def test_actions_need_a_reason() -> None:
    with pytest.raises(ValidationError, match="reason"):
        Retire(business="web", vm="web-1", host="h1", reason="")


def test_plan_id_is_a_digest_of_its_content_and_round_trips() -> None:
    actions = [
        SnapshotDisk(business="web", vm="web-1", host="h1", tag="pre-move", reason="before move"),
        LiveMigrate(
            business="web",
            vm="web-1",
            source="h1",
            destination="h2",
            reason="rack r1 failing",
            facts={"rack": "r1", "score": 0.9},
        ),
    ]
    plan = Plan.build(actions, created_at=100.0)
    assert plan.id == Plan.build(actions, created_at=100.0).id
    assert plan.id != Plan.build(actions[:1], created_at=100.0).id
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert isinstance(again.actions[1], LiveMigrate)


def test_plan_rejects_two_actions_with_one_key() -> None:
    retire = Retire(business="web", vm="web-1", host="h1", reason="surplus")
    with pytest.raises(ValidationError, match="share the key"):
        Plan.build([retire, retire], created_at=1.0)


def test_samples_refuse_non_finite_values() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        Sample(metric="x", value=float("nan"), timestamp=1.0)
    assert (
        Sample(metric="x", value=1.0, timestamp=1.0, labels=(("host", "h1"),)).label("host") == "h1"
    )


def test_temporary_errors_carry_their_retry_delay() -> None:
    assert TemporaryError("busy", retry_after=7).retry_after == 7
    with pytest.raises(ValueError, match="retry_after"):
        TemporaryError("busy", retry_after=-1)
