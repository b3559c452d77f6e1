"""Load business policy files: YAML with line numbers → ``BusinessPolicy``.

Where it sits: the controller (and ``autoscaler validate``) call ``load_policy`` /
``load_policy_dir``; errors are ``ConfigError`` naming file, line and field. The image check
needs to know which images exist; the caller passes the names it found (so this module reads
only the policy files it is given, never the fleet).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from autoscaler.model.errors import ConfigError, ConfigProblem
from policies.schema import BusinessPolicy
from policies.yaml_source import line_of, read_yaml, validate_file


def load_policy(
    path: Path,
    *,
    images: Collection[str] | None = None,
    balancers: Collection[str] | None = None,
) -> BusinessPolicy:
    """Load one policy file. ``images``: names present in the image folder (None: not checked;
    a template on RBD is checked by the clone, against the pool). ``balancers``: the names of
    the controller file's balancers (None: not checked)."""
    data = read_yaml(path)
    policy = validate_file(BusinessPolicy, path, data)
    if (
        balancers is not None
        and policy.access is not None
        and policy.access.balancer not in balancers
    ):
        known = ", ".join(sorted(balancers)) or "none"
        raise ConfigError(
            str(path),
            [
                ConfigProblem(
                    line=line_of(data, ["access", "balancer"]),
                    field="access.balancer",
                    message=f"balancer {policy.access.balancer!r} is not in the controller"
                    f" file's balancers ({known})",
                )
            ],
        )
    if policy.backup is not None and not policy.template.on_rbd:
        raise ConfigError(
            str(path),
            [
                ConfigProblem(
                    line=line_of(data, ["backup"]),
                    field="backup",
                    message="backups copy RBD snapshots: they need template.storage"
                    " {kind: rbd, pool: POOL} (docs/storage.md)",
                )
            ],
        )
    if images is not None and not policy.template.on_rbd and policy.template.image not in images:
        raise ConfigError(
            str(path),
            [
                ConfigProblem(
                    line=line_of(data, ["template", "image"]),
                    field="template.image",
                    message=f"image {policy.template.image!r} does not exist in the image folder",
                )
            ],
        )
    return policy


def load_policy_dir(
    folder: Path,
    *,
    images: Collection[str] | None = None,
    balancers: Collection[str] | None = None,
) -> dict[str, BusinessPolicy]:
    """Load every ``*.yaml`` / ``*.yml`` of ``folder``; all problems of all files in one error."""
    policies: dict[str, BusinessPolicy] = {}
    origin: dict[str, Path] = {}
    errors: list[ConfigError] = []
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    for path in files:
        try:
            policy = load_policy(path, images=images, balancers=balancers)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if policy.business in policies:
            errors.append(
                ConfigError(
                    str(path),
                    [
                        ConfigProblem(
                            line=line_of(read_yaml(path), ["business"]),
                            field="business",
                            message=f"business {policy.business!r} is already defined in"
                            f" {origin[policy.business]}",
                        )
                    ],
                )
            )
            continue
        policies[policy.business] = policy
        origin[policy.business] = path
    if errors:
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(str(folder), [p for e in errors for p in _prefixed(e)])
    return policies


def _prefixed(error: ConfigError) -> list[ConfigProblem]:
    return [
        ConfigProblem(line=p.line, field=p.field, message=p.message, file=p.file or error.file)
        for p in error.problems
    ]
