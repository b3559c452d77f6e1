"""The online boost of a vCPU hot-add: the quota is lifted while the guest onlines its CPU and
put back after, also when a killed controller left it lifted (a fake domain: libvirt's calls)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest

from actuators.hotadd import online_boost


class FakeDomain:
    """The few calls of a libvirt domain the boost makes."""

    def __init__(self, quota: int, meta: dict[str, str]) -> None:
        self.quota = quota
        self.meta = dict(meta)
        self.quotas_set: list[int] = []

    def schedulerParametersFlags(self, flags: int) -> dict[str, int]:  # noqa: N802 - libvirt's
        return {"vcpu_period": 100000, "vcpu_quota": self.quota}

    def setSchedulerParametersFlags(self, params: dict[str, int], flags: int) -> None:  # noqa: N802
        assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE  # the boost never reaches the definition
        self.quota = params["vcpu_quota"]
        self.quotas_set.append(self.quota)

    def metadata(self, kind: int, uri: str, flags: int) -> str:
        return ET.tostring(ET.Element("vm", self.meta), encoding="unicode")

    def setMetadata(self, kind: int, xml: str, prefix: str, uri: str, flags: int) -> None:  # noqa: N802
        self.meta = dict(ET.fromstring(xml).attrib)  # noqa: S314 - our own test XML

    def isActive(self) -> bool:  # noqa: N802
        return True


READY = {"business": "web", "cpu-quota": "0.25", "ready": "1.0"}


def test_a_throttled_vm_is_boosted_for_the_block_and_its_quota_put_back() -> None:
    dom = FakeDomain(25000, READY)
    with online_boost(dom) as boosted:  # type: ignore[arg-type]
        assert boosted and dom.quota == 100000
        assert "boost-from" in dom.meta
    assert dom.quotas_set == [100000, 25000]
    assert float(dom.meta["boost-until"]) >= float(dom.meta["boost-from"])


def test_the_quota_is_put_back_when_the_guest_never_sees_the_cpu() -> None:
    dom = FakeDomain(25000, READY)
    with pytest.raises(RuntimeError), online_boost(dom):  # type: ignore[arg-type]
        raise RuntimeError("the guest does not see 2 online CPUs")
    assert dom.quota == 25000


def test_a_boost_left_by_a_killed_controller_is_ended_by_the_next_verification() -> None:
    dom = FakeDomain(100000, READY)
    with online_boost(dom) as boosted:  # type: ignore[arg-type]
        assert not boosted
    assert dom.quota == 25000


def test_a_vm_in_its_boot_boost_or_without_a_quota_is_left_alone() -> None:
    for dom in (FakeDomain(-1, READY), FakeDomain(100000, {"business": "web"})):
        with online_boost(dom) as boosted:  # type: ignore[arg-type]
            assert not boosted
        assert dom.quotas_set == []
