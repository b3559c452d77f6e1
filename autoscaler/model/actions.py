"""Actions and Plans: what ``decide()`` asks the actuators to do, and why.

Where it sits: the output of the policies and the input of the executor. Every action names
its targets, carries a human-readable ``reason`` and the ``facts`` behind it, and has an
idempotency ``key`` derived from its content: executing an action whose key is already done is
a no-op. ``lease_generation`` is stamped by the controller so an actuator can refuse an action
from a deposed leader.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, model_validator

from autoscaler.model.names import Name
from autoscaler.model.topology import Frozen

FactValue = str | int | float | bool


class BaseAction(Frozen):
    business: Name
    vm: Name
    reason: str = Field(min_length=1)
    facts: dict[str, FactValue] = Field(default_factory=dict)
    lease_generation: int | None = Field(default=None, ge=0)

    @property
    def key(self) -> str:
        """Idempotency key: the intended end state (each action kind defines it)."""
        raise NotImplementedError  # pragma: no cover - every kind overrides it

    @property
    def hosts(self) -> tuple[str, ...]:
        """Hosts this action touches (for concurrency caps and locking)."""
        raise NotImplementedError  # pragma: no cover - every kind overrides it


class HotAddVcpu(BaseAction):
    """Raise a running VM's vCPU count (live and persistent). Never lowers it."""

    kind: Literal["hot_add_vcpu"] = "hot_add_vcpu"
    host: Name
    vcpus: int = Field(ge=2, description="vCPU count after the action")

    @property
    def key(self) -> str:
        return f"hot_add_vcpu/{self.vm}/vcpus={self.vcpus}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


class HotAddMemory(BaseAction):
    """Raise a running VM's memory by attaching DIMMs (live and persistent)."""

    kind: Literal["hot_add_memory"] = "hot_add_memory"
    host: Name
    memory_mib: int = Field(ge=128, description="memory after the action")

    @property
    def key(self) -> str:
        return f"hot_add_memory/{self.vm}/memory_mib={self.memory_mib}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


class CloneFromTemplate(BaseAction):
    """Create ``vm`` on ``host`` as a linked clone of the business template, and start it."""

    kind: Literal["clone_from_template"] = "clone_from_template"
    host: Name
    version: Name | None = Field(
        default=None,
        description="the template version to clone (a rollout's target); None: the policy's",
    )

    @property
    def key(self) -> str:
        return f"clone_from_template/{self.vm}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


class Retire(BaseAction):
    """Drain, shut down, undefine ``vm`` and delete its overlay (scale-in)."""

    kind: Literal["retire"] = "retire"
    host: Name
    shutdown_timeout_s: float = Field(default=30.0, gt=0)

    @property
    def key(self) -> str:
        return f"retire/{self.vm}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


class ReplaceInstance(BaseAction):
    """Replace ``vm`` on ``host`` by a fresh template-size clone ``new_vm`` on ``new_host``:
    surge the clone (of ``version``), wait until it is ready and, behind a load balancer,
    serving there; then drain and retire ``vm``. A rollout's step, and how a VM that holds
    hot-added vCPUs or memory it no longer needs is made small again (never by unplugging).
    """

    kind: Literal["replace"] = "replace"
    host: Name
    new_vm: Name
    new_host: Name
    version: Name | None = Field(default=None, description="of the clone; None: the policy's")
    cause: Literal["rollout", "shrink"] = "rollout"
    shutdown_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _a_new_name(self) -> ReplaceInstance:
        if self.new_vm == self.vm:
            raise ValueError(f"the replacement of {self.vm!r} needs a name of its own")
        return self

    @property
    def key(self) -> str:
        return f"replace/{self.vm}->{self.new_vm}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,) if self.new_host == self.host else (self.host, self.new_host)

    def clone(self) -> CloneFromTemplate:
        """The surge step, as the clone actuator runs it."""
        return CloneFromTemplate(
            business=self.business,
            vm=self.new_vm,
            host=self.new_host,
            version=self.version,
            reason=self.reason,
            facts=self.facts,
            lease_generation=self.lease_generation,
        )

    def retire(self) -> Retire:
        """The last step, as the retire actuator runs it."""
        return Retire(
            business=self.business,
            vm=self.vm,
            host=self.host,
            shutdown_timeout_s=self.shutdown_timeout_s,
            reason=self.reason,
            facts=self.facts,
            lease_generation=self.lease_generation,
        )


class Adopt(BaseAction):
    """An operator's word that ``vm`` on ``host`` is an instance of ``business``: stamp it with
    the fleet key so the controller may manage it (``autoscaler adopt``; never decided)."""

    kind: Literal["adopt"] = "adopt"
    host: Name

    @property
    def key(self) -> str:
        return f"adopt/{self.vm}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


class LiveMigrate(BaseAction):
    """Move a running ``vm`` from ``source`` to ``destination`` without stopping it."""

    kind: Literal["live_migrate"] = "live_migrate"
    source: Name
    destination: Name
    max_downtime_ms: int = Field(default=100, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _distinct_hosts(self) -> LiveMigrate:
        if self.source == self.destination:
            raise ValueError(f"source and destination are both {self.source!r}")
        return self

    @property
    def key(self) -> str:
        return f"live_migrate/{self.vm}/{self.source}->{self.destination}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.source, self.destination)


class SnapshotDisk(BaseAction):
    """A live external disk-only snapshot, without libvirt snapshot metadata."""

    kind: Literal["snapshot"] = "snapshot"
    host: Name
    tag: Name

    @property
    def key(self) -> str:
        return f"snapshot/{self.vm}/{self.tag}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


class MergeSnapshot(BaseAction):
    """Merge a disk snapshot back into its base (block commit and pivot)."""

    kind: Literal["merge_snapshot"] = "merge_snapshot"
    host: Name
    tag: Name

    @property
    def key(self) -> str:
        return f"merge_snapshot/{self.vm}/{self.tag}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


class BackupInstance(BaseAction):
    """Take a snapshot of ``vm``'s disk and copy it to its business's backup target
    (incrementally where the storage allows), then keep the newest ``keep`` there.

    ``backup_id`` names the schedule slot the backup is for (``b20261201t0300``: the slot
    01 Dec 2026 03:00 UTC, ``policies.backups.backup_id``), so deciding the same slot again
    gives the same key: a backup already taken for its slot is a no-op."""

    kind: Literal["backup"] = "backup"
    host: Name
    backup_id: Name

    @property
    def key(self) -> str:
        return f"backup/{self.vm}/{self.backup_id}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


Action = Annotated[
    HotAddVcpu
    | HotAddMemory
    | CloneFromTemplate
    | Retire
    | LiveMigrate
    | SnapshotDisk
    | MergeSnapshot
    | Adopt
    | BackupInstance
    | ReplaceInstance,
    Field(discriminator="kind"),
]
ACTION_KINDS: tuple[str, ...] = (
    "hot_add_vcpu",
    "hot_add_memory",
    "clone_from_template",
    "retire",
    "live_migrate",
    "snapshot",
    "merge_snapshot",
    "adopt",
    "backup",
    "replace",
)
action_adapter: TypeAdapter[Action] = TypeAdapter(Action)

PLAN_FORMAT: Literal["autoscaler.plan/v1"] = "autoscaler.plan/v1"


class Plan(Frozen):
    """An ordered list of actions decided at ``created_at`` from the view taken at
    ``snapshot_at``.

    ``id`` is a digest of the content, so the same decision gives the same plan id and an
    operator can approve exactly what they read; ``content_id()`` recomputes it, and a plan
    whose id does not match (edited after it was exported) is refused for execution.
    """

    format: Literal["autoscaler.plan/v1"] = PLAN_FORMAT
    id: str = Field(pattern=r"^plan-[0-9a-f]{12}$")
    created_at: float
    snapshot_at: float | None = Field(
        default=None, description="when the view this plan was decided on was taken"
    )
    actions: tuple[Action, ...] = ()

    @model_validator(mode="after")
    def _unique_keys(self) -> Plan:
        seen: set[str] = set()
        for action in self.actions:
            if action.key in seen:
                raise ValueError(f"two actions share the key {action.key!r}")
            seen.add(action.key)
        return self

    @staticmethod
    def _digest(
        actions: tuple[Action, ...] | list[Action], created_at: float, snapshot_at: float | None
    ) -> str:
        content: list[object] = [action_adapter.dump_python(a, mode="json") for a in actions]
        content.append(created_at)
        if snapshot_at is not None:
            content.append({"snapshot_at": snapshot_at})
        body = json.dumps(content, sort_keys=True)
        return "plan-" + hashlib.sha256(body.encode()).hexdigest()[:12]

    @classmethod
    def build(
        cls,
        actions: list[Action] | tuple[Action, ...],
        created_at: float,
        snapshot_at: float | None = None,
    ) -> Plan:
        return cls(
            id=cls._digest(actions, created_at, snapshot_at),
            created_at=created_at,
            snapshot_at=snapshot_at,
            actions=tuple(actions),
        )

    def under(self, generation: int) -> Plan:
        """This plan with every action stamped with lease ``generation`` (the holder that runs
        an operator's plan decides it anew under its own lease)."""
        actions = tuple(a.model_copy(update={"lease_generation": generation}) for a in self.actions)
        return Plan.build(actions, self.created_at, self.snapshot_at)

    def content_id(self) -> str:
        """The id this plan's content gives (equal to ``id`` unless it was edited)."""
        return self._digest(self.actions, self.created_at, self.snapshot_at)

    def signature(self) -> str:
        """What the plan *does*, for deduplicating recommendations: each action's kind,
        business, hosts and the existing VM it acts on (a clone's new name, the reasons and
        the times do not make a plan new)."""
        parts = sorted(
            json.dumps(
                [a.kind, a.business, "" if a.kind == "clone_from_template" else a.vm, a.hosts]
            )
            for a in self.actions
        )
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        return cls.model_validate_json(text)
