"""Operator controls in RADOS: pause, cordon, drain and approvals shared by every machine.

Where it sits: the controls of ``state: {kind: rados}``, in place of ``ControlFile``. The
operator's CLI on any management machine changes them, and every controller reads them at
the start of each cycle, so a pause or a cordon set through one machine holds after a failover
to another; like the file, they work while no controller runs.

They live in an object of their own (``autoscaler.controls``), not in the leader's fenced
object: an operator is not a leader. Concurrent changes are settled by the cluster: each change
compares the ``revision`` it read in the same atomic write op that sets the new controls
(``omap_cmp``), and is applied again on the new state when another change came first.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import rados

from autoscaler.model.controls import Controls
from autoscaler.runtime.controls import ControlsEditor, _with
from autoscaler.runtime.rados_state import StoreUnavailable, errno_of, padded, read_keys

CONTROLS_OBJECT = "autoscaler.controls"
CONTROLS_KEY = "controls"
REVISION_KEY = "revision"
ATTEMPTS = 20


class RadosControls(ControlsEditor):
    def __init__(self, ioctx: Any, obj: str = CONTROLS_OBJECT) -> None:
        self.ioctx = ioctx
        self.obj = obj

    def _read(self) -> tuple[Controls, bytes | None]:
        values = read_keys(self.ioctx, self.obj, (CONTROLS_KEY, REVISION_KEY))
        body = values.get(CONTROLS_KEY)
        controls = Controls.model_validate_json(body) if body else Controls()
        return controls, values.get(REVISION_KEY)

    def read(self) -> Controls:
        return self._read()[0]

    def update(self, edit: Callable[[Controls], Controls]) -> Controls:
        for _ in range(ATTEMPTS):
            current, revision = self._read()
            changed = _with(edit(current))
            following = int(revision.decode()) + 1 if revision else 1
            with rados.WriteOpCtx() as op:
                if revision is None:
                    op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
                else:
                    op.omap_cmp(REVISION_KEY, revision.decode(), rados.LIBRADOS_CMPXATTR_OP_EQ)
                self.ioctx.set_omap(
                    op,
                    (CONTROLS_KEY, REVISION_KEY),
                    (changed.model_dump_json().encode(), padded(following)),
                )
                try:
                    self.ioctx.operate_write_op(op, self.obj)
                except rados.ObjectExists:
                    continue  # created by another change meanwhile: apply ours on it
                except rados.Error as exc:
                    if errno_of(exc) in (errno.ECANCELED, errno.EEXIST):
                        continue  # another change came first: apply ours on it
                    raise StoreUnavailable(
                        f"{self.obj}: write failed: {exc}", retry_after=2
                    ) from exc
            return changed
        raise StoreUnavailable(
            f"{self.obj}: {ATTEMPTS} concurrent changes in a row; try again", retry_after=1
        )
