"""Operator controls: what an operator asked for (pauses, cordons, drains, approvals).

Where it sits: in the vocabulary, because ``policies.decide`` takes the controls as an input
(a paused business is not acted for, a cordoned host takes no VM, a draining host is emptied)
and the runtime reads and writes them (``autoscaler.runtime.controls``, a file in the state
folder).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.model.names import Name

ALL = "*"


class Rollout(BaseModel):
    """An operator's rollout of a business to a template version (``autoscaler rollout``).

    ``to`` overrides the policy's ``template.version`` while it is set: every clone of the
    business, scale-outs included, is of ``to``, and instances of any other version are
    replaced one at a time. ``previous`` is what ``--undo`` goes back to.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    to: Name
    previous: Name | None = None
    paused: bool = False


class Controls(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    paused: frozenset[str] = Field(default=frozenset(), description="businesses, or '*' for all")
    cordoned: frozenset[Name] = frozenset()
    draining: frozenset[Name] = frozenset()
    approved: frozenset[str] = Field(default=frozenset(), description="plan ids approved to run")
    rollouts: dict[Name, Rollout] = Field(
        default_factory=dict, description="per business, a rollout an operator started"
    )

    def is_paused(self, business: str) -> bool:
        return ALL in self.paused or business in self.paused
