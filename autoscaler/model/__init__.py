"""The shared vocabulary of the controller (frozen: other packages build on it).

Where it sits: imported by collectors, policies, actuators and the controller; imports nothing
else of the project. See DESIGN.md for the flow and docs/snapshot-format.md for the JSON format.
"""

from __future__ import annotations

from autoscaler.model.actions import (
    ACTION_KINDS,
    Action,
    Adopt,
    BackupInstance,
    BaseAction,
    CloneFromTemplate,
    HotAddMemory,
    HotAddVcpu,
    LiveMigrate,
    MergeSnapshot,
    Plan,
    ReplaceInstance,
    Retire,
    SnapshotDisk,
    action_adapter,
)
from autoscaler.model.backups import BackupCatalogue, BackupRecord
from autoscaler.model.collection import Collection, Collector
from autoscaler.model.controls import Controls
from autoscaler.model.errors import (
    AutoscalerError,
    ConfigError,
    ConfigProblem,
    DeposedLeader,
    PermanentError,
    PreconditionFailed,
    RefusedAction,
    TemporaryError,
)
from autoscaler.model.interfaces import Journal, JournalEntry, Lease, LeaseState, Phase
from autoscaler.model.memory_store import (
    MEMORY_SCHEMA_VERSION,
    ControllerRecord,
    LedgerRecord,
    MemoryStore,
    UnreadableRecord,
)
from autoscaler.model.names import Name, check_name
from autoscaler.model.ownership import (
    FleetKeys,
    NotOwned,
    OwnershipStamp,
    parse_fleet_keys,
)
from autoscaler.model.signals import Sample, Scope, Signal, SignalName, Stale
from autoscaler.model.snapshot import Snapshot
from autoscaler.model.topology import (
    VM,
    AccessTarget,
    Business,
    Datacenter,
    Health,
    Host,
    LocalStorage,
    NetworkSpec,
    NicModel,
    Rack,
    RbdStorage,
    Region,
    Storage,
    Template,
    VmState,
)

__all__ = [
    "ACTION_KINDS",
    "MEMORY_SCHEMA_VERSION",
    "VM",
    "AccessTarget",
    "Action",
    "Adopt",
    "AutoscalerError",
    "BackupCatalogue",
    "BackupInstance",
    "BackupRecord",
    "BaseAction",
    "Business",
    "CloneFromTemplate",
    "Collection",
    "Collector",
    "ConfigError",
    "ConfigProblem",
    "ControllerRecord",
    "Controls",
    "Datacenter",
    "DeposedLeader",
    "FleetKeys",
    "Health",
    "Host",
    "HotAddMemory",
    "HotAddVcpu",
    "Journal",
    "JournalEntry",
    "Lease",
    "LeaseState",
    "LedgerRecord",
    "LiveMigrate",
    "LocalStorage",
    "MemoryStore",
    "MergeSnapshot",
    "Name",
    "NetworkSpec",
    "NicModel",
    "NotOwned",
    "OwnershipStamp",
    "PermanentError",
    "Phase",
    "Plan",
    "PreconditionFailed",
    "Rack",
    "RbdStorage",
    "RefusedAction",
    "Region",
    "ReplaceInstance",
    "Retire",
    "Sample",
    "Scope",
    "Signal",
    "SignalName",
    "Snapshot",
    "SnapshotDisk",
    "Stale",
    "Storage",
    "Template",
    "TemporaryError",
    "UnreadableRecord",
    "VmState",
    "action_adapter",
    "check_name",
    "parse_fleet_keys",
]
