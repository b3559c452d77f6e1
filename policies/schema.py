"""The business policy file: one YAML file per business, validated strictly.

Where it sits: written by operators, loaded by ``policies.loader``, read by ``decide()`` and
the controller. Every model forbids unknown fields, so a typo'd key is an error that names its
file, line and field (see ``policies.yaml_source``) instead of a silently ignored setting.
``autoscaler schema`` prints the JSON Schema of ``BusinessPolicy`` for editors.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from autoscaler.model import (
    AccessTarget,
    Business,
    LocalStorage,
    Name,
    NetworkSpec,
    NicModel,
    RbdStorage,
    Storage,
    Template,
)

API_VERSION = "autoscaler/v1"


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NowMax(Strict):
    now: int = Field(ge=1, description="size a new instance starts with")
    max: int = Field(ge=1, description="most the instance may be hot-added to")

    @model_validator(mode="after")
    def _max_covers_now(self) -> NowMax:
        if self.max < self.now:
            raise ValueError(f"max ({self.max}) must be at least now ({self.now})")
        return self


class TemplateSpec(Strict):
    image: str = Field(
        description="the template disk: with storage local, a file name in the image folder;"
        " with storage rbd, the template's RBD image in the pool (autoscaler images push)"
    )
    storage: Storage = Field(
        default=LocalStorage(),
        description="where clones' disks live: {kind: local} (a qcow2 overlay on the host) or"
        " {kind: rbd, pool: POOL, user: USER} (an RBD clone; migration copies no disk)",
    )
    version: Name | None = Field(
        default=None,
        description="the template version clones use: with rbd, the snapshot of the template"
        " image made by `autoscaler images push` (required with rbd)",
    )
    vcpus: NowMax
    memory_mib: NowMax
    dimm_mib: int = Field(default=128, ge=128, description="memory added per hot-plugged DIMM")
    nic: NicModel = Field(
        default=NicModel.VIRTIO, description="sr-iov makes VMs not live-migratable"
    )
    cpu_quota: float | None = Field(
        default=None, gt=0, le=1, description="host cores each vCPU may use (cgroup quota)"
    )
    network: NetworkSpec | None = Field(
        default=None,
        description="{bridge: NAME}: the NIC is on this host bridge (the same name on every"
        " host, so live migration finds it); without it the NIC is attached to nothing",
    )

    @field_validator("image")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value) or ".." in value:
            raise ValueError(
                f"image {value!r} must be a plain file name in the image folder"
                " (letters, digits, '.', '_', '-'; no '/' or '..')"
            )
        return value

    @model_validator(mode="after")
    def _memory_fits_dimms(self) -> TemplateSpec:
        if self.memory_mib.now < 64:
            raise ValueError("memory_mib.now must be at least 64")
        return self

    @model_validator(mode="after")
    def _rbd_names_its_image_and_version(self) -> TemplateSpec:
        if isinstance(self.storage, RbdStorage):
            if self.version is None:
                raise ValueError(
                    "storage rbd needs template.version: the snapshot of the template image"
                    " that clones are made from (autoscaler images push prints it)"
                )
            if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", self.image):
                raise ValueError(
                    f"with storage rbd, image {self.image!r} names an RBD image: use lowercase"
                    " letters, digits and '-' (e.g. the business name)"
                )
        return self

    @property
    def on_rbd(self) -> bool:
        return isinstance(self.storage, RbdStorage)

    def to_template(self) -> Template:
        return Template(
            image=self.image,
            storage=self.storage,
            version=self.version,
            vcpus=self.vcpus.now,
            max_vcpus=self.vcpus.max,
            memory_mib=self.memory_mib.now,
            max_memory_mib=self.memory_mib.max,
            dimm_mib=self.dimm_mib,
            nic_model=self.nic,
            cpu_quota=self.cpu_quota,
            network=self.network,
        )


class Instances(Strict):
    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _max_covers_min(self) -> Instances:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be at least min ({self.min})")
        return self


class SpreadLevel(StrEnum):
    RACK = "rack"
    DATACENTER = "datacenter"
    REGION = "region"


class Placement(Strict):
    spread: SpreadLevel = SpreadLevel.RACK
    max_per_rack: int | None = Field(default=None, ge=1)


class CapacitySli(Strict):
    """Built-in SLI: an interval is good when enough healthy instances carry the demand."""

    kind: Literal["capacity"] = "capacity"
    saturation: float = Field(
        default=0.9, gt=0, le=1, description="utilisation above which an instance is saturated"
    )


class PromqlSli(Strict):
    """SLI from Prometheus: a good/total pair of PromQL expressions (rates of events)."""

    kind: Literal["promql"]
    good: str = Field(min_length=1)
    total: str = Field(min_length=1)


class Sla(Strict):
    objective: float = Field(default=99.95, gt=0, lt=100, description="percent of good intervals")
    window_days: int = Field(default=30, ge=1, le=365)
    sli: Annotated[CapacitySli | PromqlSli, Field(discriminator="kind")] = CapacitySli()


class Horizontal(Strict):
    enabled: bool = True
    max_step_up: int = Field(default=4, ge=1, description="instances added per decision at most")
    max_step_down: int = Field(
        default=1, ge=1, description="instances retired per decision at most"
    )


class Vertical(Strict):
    enabled: bool = True
    vcpu_step: int = Field(default=1, ge=1)
    memory_step_mib: int = Field(default=128, ge=128)
    memory_threshold: float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="hot-add memory once the guest reports this share of its memory in use",
    )


class Cooldowns(Strict):
    scale_up_s: float = Field(default=0, ge=0)
    scale_down_s: float = Field(default=300, ge=0)


class Scaling(Strict):
    target_utilisation: float = Field(default=0.6, gt=0, lt=1)
    horizontal: Horizontal = Horizontal()
    vertical: Vertical = Vertical()
    cooldowns: Cooldowns = Cooldowns()
    scale_down_stabilisation_s: float = Field(default=600, ge=0)
    scale_down_tolerance: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="a retire must leave capacity this fraction above the most any decision of"
        " the stabilisation window asked for, so that a forecast that jitters by a few percent"
        " does not retire what it clones back minutes later (the Kubernetes HPA's 10%"
        " tolerance)",
    )
    max_actions_per_hour: int = Field(default=30, ge=1)
    migration_max_downtime_ms: int = Field(default=100, ge=1, le=10_000)


class Approval(Strict):
    """How long an operator's approval of a recommended plan stays good."""

    expires_after_s: float = Field(
        default=900,
        gt=0,
        description="a plan approved later than this after it was decided is refused",
    )


class ForecastModel(StrEnum):
    SEASONAL_NAIVE = "seasonal_naive"
    EWMA = "ewma"
    GBM = "gbm"


class Forecast(Strict):
    models: tuple[ForecastModel, ...] = Field(
        default=(ForecastModel.SEASONAL_NAIVE, ForecastModel.EWMA, ForecastModel.GBM), min_length=1
    )
    quantile: float | None = Field(
        default=None, gt=0.5, lt=1, description="upper quantile to provision for; None = from SLA"
    )
    history_days: int = Field(default=14, ge=1, le=90)
    min_history_hours: float = Field(default=24, gt=0, description="below this: reactive only")


def _check_hh_mm(value: str, what: str) -> str:
    if not re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", value):
        raise ValueError(f"{what} {value!r} must be HH:MM (24 h, UTC)")
    return value


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class MaintenanceWindow(Strict):
    """A weekly window (UTC) in which no disruptive action is taken."""

    days: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = Field(min_length=1)
    start: str = Field(description="HH:MM, UTC")
    duration_minutes: int = Field(ge=1, le=7 * 24 * 60)

    @field_validator("start")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        return _check_hh_mm(value, "start")

    def contains(self, epoch_s: float) -> bool:
        """True if the instant ``epoch_s`` falls inside this window (pure arithmetic)."""
        week_s = 7 * 86400
        # 1970-01-01 was a Thursday (index 3 in _DAYS).
        since_monday = (epoch_s + 3 * 86400) % week_s
        hh, mm = (int(x) for x in self.start.split(":"))
        length = self.duration_minutes * 60
        for day in self.days:
            opens = _DAYS.index(day) * 86400 + hh * 3600 + mm * 60
            offset = (since_monday - opens) % week_s
            if offset < length:
                return True
        return False


_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(?:\d+[smhd])+")


def parse_duration(value: Any) -> Any:
    """``"1d"``, ``"90m"``, ``"1h30m"`` (s, m, h, d) or a bare number of seconds -> seconds.
    Anything else is handed on unchanged for pydantic to refuse as a number."""
    if isinstance(value, str):
        text = value.strip()
        if _DURATION_RE.fullmatch(text):
            return float(sum(int(n) * _UNIT_S[u] for n, u in re.findall(r"(\d+)([smhd])", text)))
        try:
            return float(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a duration: use a number with s, m, h or d (e.g. 30m, 1d)"
            ) from None
    return value


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\d+[smhd])+$"},
                {"type": "number", "description": "seconds"},
            ]
        }
    ),
]
"""Seconds, written as ``30s``, ``15m``, ``6h``, ``1d`` (or combined: ``1h30m``) or a number."""


class PoolTarget(Strict):
    """Backups as RBD images in a Ceph pool (put it on a CRUSH rule of its own, so that a
    backup does not share the failure domain of the disks it protects)."""

    kind: Literal["pool"]
    pool: Name = Field(description="Ceph pool the backup images are written to")


class FolderTarget(Strict):
    """Backups as files in a folder outside Ceph (a mounted file system)."""

    kind: Literal["folder"]
    path: str = Field(description="absolute path of the folder on the controller machines")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or ".." in PurePosixPath(value).parts:
            raise ValueError(f"path {value!r} must be absolute, without '..'")
        if not value.isprintable() or len(value) > 4096:
            raise ValueError("path must be printable and at most 4096 characters")
        return value


BackupTarget = Annotated[PoolTarget | FolderTarget, Field(discriminator="kind")]

MIN_BACKUP_EVERY_S = 3600.0


class Backup(Strict):
    """Scheduled backups of every running VM of the business (``policies.backups``).

    The schedule's slots are ``at + k * every`` counted from 1970-01-01 00:00 UTC: with
    ``every: 1d, at: "03:00"`` every day at 03:00 UTC, with ``every: 6h, at: "03:00"`` at 03:00,
    09:00, 15:00 and 21:00. A VM is due once the latest slot is later than its last successful
    backup. Backups are never taken in a maintenance window and count against
    ``scaling.max_actions_per_hour``.
    """

    every: Duration = Field(description="time between two backups of a VM (30m, 6h, 1d...)")
    keep: int = Field(ge=1, description="backups kept per VM; older ones are removed")
    at: str | None = Field(
        default=None, description="HH:MM (UTC): the phase of the schedule; none: midnight UTC"
    )
    target: BackupTarget

    @field_validator("every")
    @classmethod
    def _at_least_an_hour(cls, value: float) -> float:
        if value < MIN_BACKUP_EVERY_S:
            raise ValueError(f"every must be at least 1h (got {value:g} s)")
        return value

    @field_validator("at")
    @classmethod
    def _phase(cls, value: str | None) -> str | None:
        return None if value is None else _check_hh_mm(value, "at")

    @property
    def phase_s(self) -> float:
        """Seconds after midnight UTC of the schedule's phase (``at``)."""
        if self.at is None:
            return 0.0
        hh, mm = (int(x) for x in self.at.split(":"))
        return float(hh * 3600 + mm * 60)


class HaproxyAccess(Strict):
    """The business is served through a backend of an HAProxy the controller file names.

    The controller registers every ready instance there (a server named after its VM, at the
    address the guest reported, on ``port``), which takes requests once HAProxy's health check
    passes; a retire drains its server for at most ``drain_timeout`` and removes it before the
    VM stops. While the balancer does not answer nothing that needs it is done: no retire.
    """

    kind: Literal["haproxy"]
    balancer: Name = Field(description="the balancer's name in the controller file")
    backend: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="the HAProxy backend of the business; none: named after the business",
    )
    port: int = Field(default=80, ge=1, le=65535, description="the port instances serve on")
    drain_timeout: Duration = Field(
        default=30.0, description="how long a retire waits for a server's sessions to end"
    )

    @field_validator("drain_timeout")
    @classmethod
    def _bounded_drain(cls, value: float) -> float:
        if not 0 < value <= 3600:
            raise ValueError(f"drain_timeout must be above 0 and at most 1h (got {value:g} s)")
        return value

    def target(self, business: str) -> AccessTarget:
        return AccessTarget(
            balancer=self.balancer,
            backend=self.backend or business,
            port=self.port,
            drain_timeout_s=self.drain_timeout,
        )


Access = Annotated[HaproxyAccess, Field(discriminator="kind")]


class Mode(StrEnum):
    RECOMMEND = "recommend"
    AUTO = "auto"


class BusinessPolicy(Strict):
    """One business: its template, bounds, placement, SLA, scaling and forecast settings."""

    api_version: Literal["autoscaler/v1"] = Field(alias="apiVersion")
    kind: Literal["BusinessPolicy"]
    business: Name
    description: str = ""
    mode: Mode = Mode.RECOMMEND
    approval: Approval = Approval()
    template: TemplateSpec
    instances: Instances
    placement: Placement = Placement()
    sla: Sla = Sla()
    scaling: Scaling = Scaling()
    forecast: Forecast = Forecast()
    maintenance: tuple[MaintenanceWindow, ...] = ()
    backup: Backup | None = Field(
        default=None, description="scheduled backups of the business's VMs; none: no backups"
    )
    access: Access | None = Field(
        default=None,
        description="the load balancer in front of the business; none: no access layer",
    )

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> BusinessPolicy:
        if self.placement.max_per_rack is not None and self.placement.max_per_rack < 1:
            raise ValueError("placement.max_per_rack must be at least 1")
        return self

    def to_business(self) -> Business:
        return Business(
            name=self.business,
            template=self.template.to_template(),
            min_instances=self.instances.min,
            max_instances=self.instances.max,
            access=self.access.target(self.business) if self.access is not None else None,
        )

    def in_maintenance(self, epoch_s: float) -> bool:
        return any(w.contains(epoch_s) for w in self.maintenance)
