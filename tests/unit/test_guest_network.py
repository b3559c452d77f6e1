"""Guests on a network, without a lab: the policy's ``template.network``, the domain XML with
and without a bridge, the address in the guest's STATE line, in the domain metadata and in
the VM model."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydantic import ValidationError

from actuators.domain_xml import GuestBoot, InstanceSpec, build_domain_xml, parse_vm_metadata
from actuators.guest_agent import GuestView
from autoscaler.model import VM, ConfigError, NetworkSpec, VmState
from collectors.libvirt_vms import DomainRecord, DomainStatsParser
from policies.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "businesses"
IMAGES = {p.name for p in (ROOT / "examples" / "images").iterdir()}
WEB = (EXAMPLES / "web.yaml").read_text()
NETWORK_LINE = "  network: {bridge: gbr0}"
STATE = (
    "STATE seq=4 ready=1 vm=web-1 business=web cpus=0 ncpus=1 mem_kib=156540 duty=0"
    " held_mib=0 disk=vda mounted=1 content=25ad5be25b51bacb data_mib=0 boots=1"
)


def web_without_network(tmp_path: Path) -> Path:
    path = tmp_path / "web.yaml"
    path.write_text("\n".join(line for line in WEB.splitlines() if "network:" not in line))
    return path


def test_the_example_template_is_on_the_lab_bridge() -> None:
    template = load_policy(EXAMPLES / "web.yaml", images=IMAGES).template.to_template()
    assert template.network == NetworkSpec(bridge="gbr0")


def test_a_template_without_network_has_none(tmp_path: Path) -> None:
    policy = load_policy(web_without_network(tmp_path), images=IMAGES)
    assert policy.template.network is None and policy.template.to_template().network is None


@pytest.mark.parametrize(
    ("new", "field", "expected"),
    [
        ("  network: {bridge: gbr0, vlan: 3}", "template.network.vlan", "unknown field"),
        ("  network: {bridge: a/b}", "template.network.bridge", "pattern"),
        ("  network: {bridge: a-bridge-name-too-long}", "template.network.bridge", "pattern"),
        ("  network: {}", "template.network.bridge", "required field is missing"),
        ("  network: gbr0", "template.network", "valid dictionary"),
    ],
)
def test_a_bad_network_section_names_file_line_and_field(
    tmp_path: Path, new: str, field: str, expected: str
) -> None:
    assert NETWORK_LINE in WEB
    text = WEB.replace(NETWORK_LINE, new)
    path = tmp_path / "web.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path, images=IMAGES)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("  network:"))
    message = str(caught.value)
    assert f"{path}:{line}: field '{field}'" in message
    assert expected in message


def domain(tmp_path: Path, *, network: bool, kernel: bool = True) -> ET.Element:
    path = EXAMPLES / "web.yaml" if network else web_without_network(tmp_path)
    template = load_policy(path, images=IMAGES).template.to_template()
    boot = GuestBoot(kernel="/k", initrd="/i") if kernel else GuestBoot()
    spec = InstanceSpec(name="web-9", business="web", template=template, disk_path="/x", boot=boot)
    return ET.fromstring(build_domain_xml(spec))  # noqa: S314 - our own XML


def test_a_template_with_a_bridge_plugs_the_nic_into_it_and_asks_for_dhcp(
    tmp_path: Path,
) -> None:
    root = domain(tmp_path, network=True)
    (nic,) = root.findall("./devices/interface")
    assert nic.get("type") == "bridge"
    source = nic.find("source")
    assert source is not None and source.attrib == {"bridge": "gbr0"}
    model = nic.find("model")
    assert model is not None and model.get("type") == "virtio"
    assert nic.find("mac") is not None
    assert (root.findtext("./os/cmdline") or "").endswith(" as.net=dhcp")


def test_a_template_without_network_keeps_a_nic_attached_to_nothing(tmp_path: Path) -> None:
    root = domain(tmp_path, network=False)
    (nic,) = root.findall("./devices/interface")
    assert nic.get("type") == "ethernet" and nic.find("source") is None
    assert "as.net" not in (root.findtext("./os/cmdline") or "")


def test_a_guest_booting_from_its_disk_gets_no_command_line(tmp_path: Path) -> None:
    root = domain(tmp_path, network=True, kernel=False)
    assert root.find("./os/cmdline") is None
    assert root.find("./devices/interface/source") is not None


def test_the_guest_view_parses_the_reported_address() -> None:
    view = GuestView.parse(STATE + " addr=10.211.1.105", 1.0)
    assert view is not None and view.address == "10.211.1.105"
    none = GuestView.parse(STATE + " addr=none", 1.0)
    assert none is not None and none.address is None
    older = GuestView.parse(STATE, 1.0)
    assert older is not None and older.address is None  # a guest without a network
    assert GuestView.parse(STATE + " addr=10.1.2", 1.0) is None  # garbage is no report


def test_the_metadata_carries_the_address_and_refuses_garbage() -> None:
    base = '<vm business="web" image="web.qcow2" max-vcpus="4" max-memory-mib="1024"'
    meta = parse_vm_metadata(base + ' address="10.211.1.105"/>')
    assert meta is not None and meta.address == "10.211.1.105"
    plain = parse_vm_metadata(base + "/>")
    assert plain is not None and plain.address is None
    with pytest.raises(ValueError, match="invalid vm metadata"):
        parse_vm_metadata(base + ' address="10.211.1"/>')


def test_the_vm_model_holds_an_ip_address_only() -> None:
    fields = {
        "name": "web-1",
        "host": "h1",
        "state": VmState.RUNNING,
        "vcpus": 1,
        "max_vcpus": 4,
        "memory_mib": 256,
        "max_memory_mib": 1024,
    }
    assert VM(**fields, address="10.211.1.105").address == "10.211.1.105"
    assert VM(**fields).address is None
    with pytest.raises(ValidationError, match="address"):
        VM(**fields, address="web-1.example")


@pytest.mark.parametrize(
    ("attribute", "label"),
    [(' address="10.211.1.105"', "10.211.1.105"), (' address="x<y"', ""), ("", "")],
)
def test_the_libvirt_collector_reports_the_recorded_address(attribute: str, label: str) -> None:
    meta = f'<vm xmlns="https://kvm-autoscaler.dev/ns/vm/1" business="web"{attribute}/>'
    samples = DomainStatsParser().parse(
        "kvm-1", [DomainRecord("web-1", {"state.state": 1, "vcpu.current": 1}, meta)], 10.0
    )
    (info,) = [s for s in samples if s.metric == "vm_info"]
    assert info.label("address") == label


INIT = ROOT / "lab" / "guest" / "init.sh"
BUSYBOX = "/bin/busybox"


def run_web_root(tmp_path: Path, content: Path) -> Path:
    """The guest's own ``web_root`` function (cut from init.sh), run by busybox's shell."""
    lines = INIT.read_text().splitlines()
    start = lines.index("web_root() {")
    end = lines.index("}", start)
    www = tmp_path / "www"
    script = "\n".join(
        [f"VM=web-7 BUSINESS=web WORK=300 WWW={www} CONTENT={content}", *lines[start : end + 1]]
    )
    subprocess.run([BUSYBOX, "sh", "-c", script + "\nweb_root"], check=True, timeout=30)
    return www


@pytest.mark.skipif(not Path(BUSYBOX).exists(), reason="busybox-static is not installed")
def test_the_guest_web_root_serves_its_index_health_and_work_cgi(tmp_path: Path) -> None:
    www = run_web_root(tmp_path, tmp_path / "no-content")
    assert "web-7" in (www / "index.html").read_text()
    assert (www / "health").read_text() == "ok\n"
    done = subprocess.run(
        [BUSYBOX, "sh", str(www / "cgi-bin" / "work")], capture_output=True, timeout=30, check=True
    )
    assert done.stdout == b"Content-Type: text/plain\r\n\r\nvm=web-7 work=300\n"


@pytest.mark.skipif(not Path(BUSYBOX).exists(), reason="busybox-static is not installed")
def test_the_business_content_replaces_the_generated_index(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "index.html").write_text("<p>business index</p>\n")
    www = run_web_root(tmp_path, content)
    assert (www / "index.html").read_text() == "<p>business index</p>\n"
    (content / "www").mkdir()  # a whole web root wins over a lone index.html
    (content / "www" / "index.html").write_text("<p>from www</p>\n")
    (content / "www" / "app.js").write_text("1\n")
    www = run_web_root(tmp_path / "again", content)
    assert (www / "index.html").read_text() == "<p>from www</p>\n"
    assert (www / "app.js").exists() and (www / "health").exists()  # health check still there
