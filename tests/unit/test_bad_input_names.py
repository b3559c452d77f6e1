"""Bad input: hostile names and image paths, at every door they can come in by.

Where it sits: the reliability suite (issue 7). A business, VM, host or inventory name with
quotes, angle brackets, slashes, ``..``, whitespace, shell or control characters must be refused
where it enters — policy files, the controller file, plan files for ``autoscaler apply``,
Snapshot JSON, operator commands, domain names and metadata read back from libvirt — so it can
never reach domain XML, a path or an argument list. Image names outside the image folder are
refused too.
"""

from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from actuators.domain_xml import InstanceSpec, build_domain_xml
from actuators.volumes import overlay_name
from autoscaler.cli.apply import main as apply_main
from autoscaler.cli.main import main
from autoscaler.config import load_controller_config
from autoscaler.model import Collection, ConfigError, Plan, Retire, Snapshot, check_name
from autoscaler.model.names import NAME_PATTERN
from autoscaler.runtime.snapshot_builder import build_snapshot
from collectors.libvirt_vms import DomainRecord, DomainStatsParser
from policies.loader import load_policy, load_policy_dir
from tests.reliability import record

pytest_plugins = ["tests.reliability_plugin"]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "businesses"
IMAGES = ROOT / "examples" / "images"
HOSTILE = [
    'web"',
    "web'",
    "<web>",
    "web/../x",
    "a/b",
    "..",
    "../etc",
    "web\n",
    "web\x00",
    "web;reboot",
    "$(reboot)",
    "`id`",
    "web x",
    "Web",
    "",
    "-web",
    "web-",
    "a" * 64,
    "wéb",
    "web&amp;",
]
IMAGE_PATHS = [
    "../web.qcow2",
    "/etc/passwd",
    "a/b.qcow2",
    "..",
    "web.qcow2\n",
    ".hidden.qcow2",
    "web..qcow2",
    "x" * 200,
]
_yaml = YAML(typ="safe", pure=True)


def _dump(doc: Any, path: Path) -> Path:
    with path.open("w") as out:
        _yaml.dump(doc, out)
    return path


def _yaml_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _controller_doc(policy_dir: Path = EXAMPLES) -> dict[str, Any]:
    host = {"name": "kvm-1", "uri": "qemu+tls://kvm-1/system", "cpus": 8, "memory_mib": 16384}
    rack = {"name": "r1", "hosts": [host]}
    return {
        "apiVersion": "autoscaler/v1",
        "kind": "Controller",
        "policy_dir": str(policy_dir),
        "image_dir": str(IMAGES),
        "state_dir": "state",
        "inventory": {
            "regions": [{"name": "north", "datacenters": [{"name": "n1", "racks": [rack]}]}]
        },
    }


def _policy_doc() -> dict[str, Any]:
    doc: dict[str, Any] = _yaml.load((EXAMPLES / "web.yaml").read_text())
    return doc


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_a_hostile_business_name_in_a_policy_file_is_refused(name: str, tmp_path: Path) -> None:
    """A policy file whose business name is hostile.

    Expect: ConfigError naming file, line and field 'business'.
    """
    path = _dump({**_policy_doc(), "business": name}, tmp_path / "p.yaml")
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    line = 1 + _yaml_lines(path).index(
        next(x for x in _yaml_lines(path) if x.startswith("business:"))
    )
    assert f"{path}:{line}: field 'business':" in str(caught.value)
    assert all(ln.startswith(str(path)) for ln in str(caught.value).splitlines())


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
@pytest.mark.parametrize("where", ["region", "datacenter", "rack", "host"])
def test_a_hostile_inventory_name_in_the_controller_file_is_refused(
    name: str, where: str, tmp_path: Path
) -> None:
    """A controller file with a hostile region, datacenter, rack or host name.

    Expect: ConfigError naming the file and the field.
    """
    doc = _controller_doc()
    region = doc["inventory"]["regions"][0]
    node = {
        "region": region,
        "datacenter": region["datacenters"][0],
        "rack": region["datacenters"][0]["racks"][0],
        "host": region["datacenters"][0]["racks"][0]["hosts"][0],
    }[where]
    node["name"] = name
    path = _dump(doc, tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="not a safe name") as caught:
        load_controller_config(path)
    assert str(caught.value).startswith(f"{path}:")
    assert ".name'" in str(caught.value)


@pytest.mark.parametrize("image", IMAGE_PATHS, ids=repr)
def test_an_image_outside_the_image_folder_is_refused(image: str, tmp_path: Path) -> None:
    """A policy whose template image is a path (or not a plain file name).

    Expect: ConfigError on field 'template.image'.
    """
    doc = _policy_doc()
    doc["template"]["image"] = image
    path = _dump(doc, tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match=r"field 'template.image'"):
        load_policy(path)


def test_an_image_missing_from_the_image_folder_is_refused(tmp_path: Path) -> None:
    """A policy naming an image the image folder does not have.

    Expect: ConfigError 'does not exist in the image folder', also via autoscaler validate.
    """
    doc = _policy_doc()
    doc["template"]["image"] = "passwd"
    path = _dump(doc, tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="does not exist in the image folder"):
        load_policy(path, images={p.name for p in IMAGES.iterdir()})
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["validate", str(path), "--image-dir", str(IMAGES)]) == 1
    assert "does not exist in the image folder" in err.getvalue()


def _plan_json(**changes: str) -> str:
    action = Retire(business="web", vm="web-3", host="kvm-1", reason="surplus")
    data = json.loads(Plan.build([action], created_at=1.0).to_json())
    data["actions"][0].update(changes)
    return json.dumps(data)


@pytest.mark.parametrize("name", ["../web-3", 'web"3', "<web>", "a/b", "web 3", "$(id)"])
@pytest.mark.parametrize("field", ["vm", "business", "host"])
def test_a_plan_file_with_a_hostile_name_is_refused_by_apply(
    name: str, field: str, tmp_path: Path
) -> None:
    """A plan file for `autoscaler apply` whose vm, business or host is hostile.

    Expect: exit 2 with a message naming the plan file, before any libvirt connection.
    """
    controller = _dump(_controller_doc(), tmp_path / "c.yaml")
    plan = tmp_path / "plan.json"
    plan.write_text(_plan_json(**{field: name}))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = apply_main([str(plan), "--config", str(controller)])
    assert code == 2
    assert str(plan) in err.getvalue() and "not a safe name" in err.getvalue()


def test_a_valid_plan_file_still_parses() -> None:
    """The control case of the plan tests: the unmodified plan is accepted.

    Expect: a Plan with one retire of web-3.
    """
    assert [a.vm for a in Plan.from_json(_plan_json()).actions] == ["web-3"]


def _snapshot_with_vm(vm: str = "web-1", business: str = "web") -> Snapshot:
    config = load_controller_config(_dump(_controller_doc(), Path("/tmp/bad-input-names-c.yaml")))
    policies = load_policy_dir(EXAMPLES)
    meta = f'<vm xmlns="https://kvm-autoscaler.dev/ns/vm/1" business="{business}"/>'
    samples = DomainStatsParser().parse(
        "kvm-1", [DomainRecord(vm, {"state.state": 1, "vcpu.current": 1}, meta)], 10.0
    )
    return build_snapshot(config, policies, [Collection("libvirt:kvm-1", tuple(samples))], 10.0)


@pytest.mark.parametrize("name", ["../web-1", 'web"1', "<web>", "a/b", "WEB-1", "web 1"])
def test_snapshot_json_with_a_hostile_vm_or_host_name_is_refused(name: str) -> None:
    """Snapshot JSON whose VM name or VM host is hostile.

    Expect: a validation error (ValueError) naming the field; the control snapshot loads.
    """
    text = _snapshot_with_vm().to_json()
    assert Snapshot.from_json(text).vms[0].name == "web-1"
    data = json.loads(text)
    for field in ("name", "host"):
        bad = json.loads(json.dumps(data))
        bad["vms"][0][field] = name
        with pytest.raises(ValueError, match="not a safe name"):
            Snapshot.from_json(json.dumps(bad))


@pytest.mark.parametrize(
    ("vm", "business_attr", "expect"),
    [
        ("web-1", "web", ("web-1", "web")),
        ("../web-1", "web", None),
        ("web 1", "web", None),
        ("<x>", "web", None),
        ("web-1", "&quot;&gt;&lt;x/&gt;", ("web-1", None)),
        ("web-1", "../etc", ("web-1", None)),
        ("web-1", "web&#10;x", ("web-1", None)),
    ],
)
def test_domains_read_back_from_libvirt_with_hostile_names_are_not_managed(
    vm: str, business_attr: str, expect: tuple[str, str | None] | None
) -> None:
    """Domains read back from libvirt with a hostile name or business metadata.

    Expect: a hostile domain name is left out of the Snapshot; a hostile business makes the VM
    unmanaged (business None), so no action can name it.
    """
    snapshot = _snapshot_with_vm(vm, business_attr)
    seen = [(v.name, v.business) for v in snapshot.vms]
    assert seen == ([expect] if expect else [])


@pytest.mark.parametrize(
    "meta",
    [
        '<vm business="web" max-vcpus="abc" max-memory-mib="lots"/>',
        '<vm business="web" cpu-quota="nan" ready="inf" created="-inf"/>',
        '<vm business="web" cpu-quota="-1" max-vcpus="0"/>',
        '<vm business="web"',
        "<!DOCTYPE vm [<!ENTITY a 'web'>]><vm business='&a;'/>",
        "",
    ],
)
def test_garbled_domain_metadata_is_ignored_not_a_crash(meta: str) -> None:
    """Domain metadata (editable by anyone with libvirt access) with non-numbers, NaN, negative
    values or broken XML.

    Expect: the odd values are absent; the domain and the rest of the host are still read.
    """
    samples = DomainStatsParser().parse(
        "kvm-1", [DomainRecord("web-1", {"state.state": 1, "vcpu.current": 2}, meta)], 10.0
    )
    by_metric = {s.metric: s.value for s in samples}
    assert by_metric["vm_vcpus"] == 2
    for metric in ("vm_template_max_vcpus", "vm_cpu_quota", "vm_ready_timestamp"):
        assert metric not in by_metric
    record(
        "bad-input",
        f"libvirt domain metadata: {meta[:40] or 'empty'}",
        injected=f"domain metadata {meta[:60]!r}",
        behaviour="odd values dropped as absent; the VM and its host still read",
        lost="nothing",
    )


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_hostile_names_never_reach_domain_xml_or_paths(name: str) -> None:
    """A hostile VM or business name handed straight to the domain XML and overlay builders.

    Expect: ValueError before any XML or path is made.
    """
    template = load_policy(EXAMPLES / "web.yaml").template.to_template()
    with pytest.raises(ValueError, match="not a safe name"):
        InstanceSpec(name=name, business="web", template=template, disk_path="/x")
    with pytest.raises(ValueError, match="not a safe name"):
        InstanceSpec(name="web-1", business=name, template=template, disk_path="/x")
    with pytest.raises(ValueError, match="not a safe name"):
        overlay_name(name)


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=70))
def test_any_name_accepted_is_safe_in_xml_paths_and_commands(name: str) -> None:
    """Any text as a name (hypothesis).

    Expect: accepted only if it matches the DNS-label pattern; an accepted name round-trips
    through domain XML unchanged and is a single plain path component.
    """
    try:
        check_name(name)
    except ValueError:
        return
    import re

    assert re.fullmatch(NAME_PATTERN, name)
    assert "/" not in name and ".." not in name and name == name.strip()
    template = load_policy(EXAMPLES / "web.yaml").template.to_template()
    xml = build_domain_xml(
        InstanceSpec(name=name, business="web", template=template, disk_path="/x")
    )
    assert ET.fromstring(xml).findtext("name") == name  # noqa: S314 - our own XML
    assert Path(overlay_name(name)).name == f"{name}.qcow2"


@pytest.mark.parametrize("name", ["../x", "a/b", "<h>", "h;reboot", "H1"])
@pytest.mark.parametrize("command", ["pause", "resume", "cordon", "drain", "uncordon"])
def test_operator_commands_refuse_hostile_names_with_a_message(
    name: str, command: str, tmp_path: Path
) -> None:
    """`autoscaler pause|resume|cordon|uncordon|drain NAME` with a hostile name.

    Expect: exit 2 and a one-line message, no traceback, no change to the controls file.
    """
    controller = _dump(_controller_doc(), tmp_path / "c.yaml")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([command, name, "--config", str(controller)])
    assert code == 2
    assert "not a safe name" in err.getvalue()
    assert not (tmp_path / "state" / "controls.json").exists()


@pytest.mark.parametrize("plan_id", ["../../../tmp/x", "plan-../../x", "plan-ZZZ", "/etc/passwd"])
def test_approve_refuses_a_plan_id_that_is_not_one(plan_id: str, tmp_path: Path) -> None:
    """`autoscaler approve` with a path instead of a plan id (path traversal in the state folder).

    Expect: exit 2 with a message; nothing approved.
    """
    outside = tmp_path / "x.json"
    outside.write_text("{}")
    controller = _dump(_controller_doc(), tmp_path / "c.yaml")
    (tmp_path / "state" / "plans").mkdir(parents=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["approve", plan_id, "--config", str(controller)])
    assert code == 2
    assert "plan id" in err.getvalue()
    assert not (tmp_path / "state" / "controls.json").exists()
