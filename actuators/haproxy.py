"""HAProxy as a ``LoadBalancer``: registering, draining and removing servers over its runtime API.

Where it sits: the actuator behind the access layer. The controller's access collector reads a
backend through ``servers`` into an ``AccessView``; a clone that is ready is registered with
``add``; a retire calls ``drain``, waits (its own policy bound) until ``sessions`` is 0, then
``remove`` and only then stops the VM. Everything goes through HAProxy's admin socket
(``stats socket PATH level admin``), one command per connection, each bounded by ``timeout``.

What HAProxy 2.6.12 (Debian 12) was seen to do, and what this module does about it:

* ``add server`` does **not** inherit the backend's ``default-server`` line: a server added
  without ``check`` reports "no check". So ``add`` passes the check options itself
  (``check_options``, e.g. ``check inter 1s fall 2 rise 2``); the backend's ``option httpchk``
  (the request the check sends) does apply to it.
* A dynamic server starts in maintenance, its check disabled. Leaving maintenance with
  ``enable server`` marks it **UP at once** (HAProxy sets its check health to ``rise``, "start
  OK but check immediately"), and a ``set server health down`` sent while it is still in
  maintenance is undone by that. So the server would take requests before any check passed.
  ``add`` avoids that by leaving maintenance into *drain* (``set server B/S state drain``: UP
  but given no new requests), marking it down (``set server B/S health down``) and only then
  ``set server B/S state ready``: it stays DOWN until ``rise`` checks pass.
* ``del server`` needs the server in maintenance ("Only servers in maintenance mode can be
  deleted.") and with no connection attached ("Server still has connections attached to it,
  cannot remove it."): the latter is ``ServerInUse``, a temporary error (drain longer).
  A server in maintenance keeps the sessions it has; it only gets no new ones.
* The runtime state is not persistent: after HAProxy restarts, its backends hold only the
  servers of its configuration, so the controller registers its servers again.

Sessions are the ``scur`` column of ``show stat BE_ID 4 -1`` (current sessions on that
server, the figure HAProxy's stats page shows; asked by the backend's numeric id, because by
name ``show stat`` finds a frontend of the same name first); admin state and health come from
``show servers state BACKEND`` (its version 1 format, fields found by the names in its header
line).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from autoscaler.model import PermanentError, TemporaryError
from autoscaler.model.access import (
    LoadBalancerUnavailable,
    ServerAdmin,
    ServerHealth,
    ServerState,
)

# HAProxy names (proxies, servers) are letters, digits and "-_.:"; checking them also keeps a
# name from smuggling a second command (";" or a newline) into the CLI line.
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

# srv_admin_state bits (HAProxy's include/haproxy/server-t.h, SRV_ADMF_*).
_ADMF_FMAINT = 0x01  # forced maintenance (the CLI, or "disabled" in the configuration)
_ADMF_IMAINT = 0x02  # inherited from a tracked server
_ADMF_CMAINT = 0x04  # configuration maintenance (a dynamic server not yet enabled)
_ADMF_FDRAIN = 0x08  # forced drain
_ADMF_IDRAIN = 0x10  # inherited drain
_ADMF_RMAINT = 0x20  # DNS resolution failed
_ADMF_HMAINT = 0x40  # set by "set server ... addr" with an FQDN that does not resolve
_MAINT = _ADMF_FMAINT | _ADMF_IMAINT | _ADMF_CMAINT | _ADMF_RMAINT | _ADMF_HMAINT
_DRAIN = _ADMF_FDRAIN | _ADMF_IDRAIN

# srv_check_state bits (CHK_ST_*): a check that runs is configured and enabled, not paused.
_CHK_CONFIGURED = 0x02
_CHK_ENABLED = 0x04
_CHK_PAUSED = 0x08

# srv_op_state: 0 stopped (down), 1 starting (slow start), 2 running, 3 stopping.
_OP_STOPPED = 0

DEFAULT_CHECK_OPTIONS = ("check", "inter", "1s", "fall", "2", "rise", "2")


class HaproxyRefused(PermanentError):
    """HAProxy answered, but refused the command (a configuration problem, not a stale view)."""


class UnknownBackend(HaproxyRefused):
    """The backend is not in HAProxy's configuration: the inventory and HAProxy disagree."""


class ServerInUse(TemporaryError):
    """``del server`` refused: the server still has connections. Drain (longer), then retry."""


def _name(kind: str, value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"not a valid HAProxy {kind} name: {value!r}")
    return value


def _address(value: str) -> str:
    # An IP address only: a host name would make HAProxy resolve it (and park the server in
    # maintenance while it does not resolve), which the controller never wants.
    return str(ipaddress.ip_address(value))


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise ValueError(f"port must be 1..65535, got {value}")
    return value


def _table(reply: str, *, header_prefix: str, separator: str | None) -> list[dict[str, str]]:
    """Rows of a CLI table as dicts keyed by the names of its header line."""
    lines = [line for line in reply.splitlines() if line.strip()]
    header_at = next((i for i, line in enumerate(lines) if line.startswith(header_prefix)), None)
    if header_at is None:
        raise LoadBalancerUnavailable(f"unexpected reply (no header line): {reply[:200]!r}")
    names = lines[header_at][len(header_prefix) :].strip().split(separator)
    rows = []
    for line in lines[header_at + 1 :]:
        values = line.split(separator)
        if len(values) < len(names):
            raise LoadBalancerUnavailable(f"unexpected reply (short row): {line[:200]!r}")
        rows.append(dict(zip(names, values, strict=False)))
    return rows


def _int(row: Mapping[str, str], field: str, default: int | None = None) -> int:
    value = row.get(field, "")
    if value == "" and default is not None:
        return default
    try:
        return int(value)
    except ValueError:
        raise LoadBalancerUnavailable(f"unexpected value {value!r} for {field}") from None


def _admin(bits: int) -> ServerAdmin:
    if bits & _MAINT:
        return ServerAdmin.MAINT
    if bits & _DRAIN:
        return ServerAdmin.DRAIN
    return ServerAdmin.READY


def _health(op_state: int, check_state: int) -> ServerHealth:
    # A check that is paused (the server is in maintenance), disabled or absent says nothing.
    running = check_state & (_CHK_CONFIGURED | _CHK_ENABLED) == (_CHK_CONFIGURED | _CHK_ENABLED)
    if not running or check_state & _CHK_PAUSED:
        return ServerHealth.UNCHECKED
    return ServerHealth.DOWN if op_state == _OP_STOPPED else ServerHealth.UP


class HaproxyRuntime:
    """One HAProxy instance, reached through its admin socket at ``socket_path``.

    ``timeout`` bounds each command (connect, send and the whole reply). ``check_options`` are
    the server keywords ``add`` passes (dynamic servers do not inherit ``default-server``).
    """

    def __init__(
        self,
        name: str,
        socket_path: Path | str,
        *,
        timeout: float = 2.0,
        check_options: Sequence[str] = DEFAULT_CHECK_OPTIONS,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.name = name
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.check_options = tuple(check_options)
        if "check" not in self.check_options:
            # Without a check a server would take requests the moment it is enabled.
            raise ValueError("check_options must include 'check'")

    # --- the wire ----------------------------------------------------------------------

    def command(self, line: str) -> str:
        """Send one command, return HAProxy's whole reply (it closes after answering)."""
        if "\n" in line or ";" in line:
            raise ValueError(f"one command per call: {line!r}")
        deadline = time.monotonic() + self.timeout
        where = f"HAProxy {self.name} at {self.socket_path}"
        chunks: list[bytes] = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(self.timeout)
                conn.connect(str(self.socket_path))
                conn.sendall(line.encode() + b"\n")
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    conn.settimeout(left)
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except FileNotFoundError:
            raise LoadBalancerUnavailable(f"{where}: no socket") from None
        except ConnectionRefusedError:
            raise LoadBalancerUnavailable(f"{where}: connection refused") from None
        except TimeoutError:
            raise LoadBalancerUnavailable(
                f"{where}: no whole answer within {self.timeout:g} s to {line.split()[0]!r}"
            ) from None
        except OSError as exc:
            raise LoadBalancerUnavailable(f"{where}: {exc}") from None
        try:
            return b"".join(chunks).decode()
        except UnicodeDecodeError:
            raise LoadBalancerUnavailable(f"{where}: a reply that is not text") from None

    def _checked(self, line: str, backend: str) -> str:
        """Send ``line``; raise on the replies that mean HAProxy refused it."""
        reply = self.command(line)
        text = reply.strip()
        if not text and not reply:
            # A closed connection with no answer at all: not the empty line of a success.
            raise LoadBalancerUnavailable(f"HAProxy {self.name}: no answer to {line!r}")
        if text in ("No such backend.", "Can't find backend."):
            raise UnknownBackend(f"HAProxy {self.name} has no backend {backend!r}")
        if text.startswith(("Unknown command", "Permission denied")):
            raise HaproxyRefused(
                f"HAProxy {self.name} refused {line.split()[0]!r} (is its socket level admin?): "
                f"{text[:200]}"
            )
        return text

    # --- the LoadBalancer protocol -------------------------------------------------------

    def servers(self, backend: str) -> tuple[ServerState, ...]:
        _name("backend", backend)
        state = self._checked(f"show servers state {backend}", backend)
        rows = _table(state, header_prefix="#", separator=None)
        rows = [r for r in rows if r.get("be_name") == backend]
        # ``show stat`` looks a proxy up by id or by name, and a name can be both a frontend
        # and a backend (the lab names both after the business): ask by the backend's id.
        sessions = self._sessions(backend, _int(rows[0], "be_id")) if rows else {}
        result = []
        for row in rows:
            name = row["srv_name"]
            result.append(
                ServerState(
                    name=name,
                    address=row["srv_addr"],
                    port=_int(row, "srv_port", 0),
                    admin=_admin(_int(row, "srv_admin_state")),
                    health=_health(_int(row, "srv_op_state"), _int(row, "srv_check_state")),
                    sessions=sessions.get(name, 0),
                )
            )
        return tuple(result)

    def _sessions(self, backend: str, backend_id: int) -> dict[str, int]:
        # type 4 = servers only, -1 = every server of that proxy.
        reply = self._checked(f"show stat {backend_id} 4 -1", backend)
        rows = _table(reply, header_prefix="# ", separator=",")
        return {row["svname"]: _int(row, "scur", 0) for row in rows if row.get("pxname") == backend}

    def add(self, backend: str, server: str, address: str, port: int) -> None:
        _name("backend", backend)
        _name("server", server)
        address, port = _address(address), _port(port)
        existing = self._find(backend, server)
        if existing is None:
            reply = self._checked(
                f"add server {backend}/{server} {address}:{port} {' '.join(self.check_options)}",
                backend,
            )
            if reply.startswith("Already exists"):
                existing = self._find(backend, server)  # someone else added it meanwhile
            elif not reply.startswith("New server registered"):
                raise HaproxyRefused(f"HAProxy {self.name}: add server {server}: {reply[:200]}")
        if existing is not None:
            if (existing.address, existing.port) != (address, port):
                self._set(backend, server, f"addr {address} port {port}")
            if existing.admin is ServerAdmin.READY:
                return
            if existing.admin is ServerAdmin.DRAIN:
                # Registered again while draining: it has been checked all along, so it can
                # simply take new requests again.
                self._set(backend, server, "state ready")
                return
        self._bring_in(backend, server)

    def _bring_in(self, backend: str, server: str) -> None:
        """From maintenance to ready, DOWN until its check passes ``rise`` times (see above)."""
        self._expect_empty(f"enable health {backend}/{server}", backend)
        self._set(backend, server, "state drain")  # leaves maintenance UP, but gets nothing new
        self._set(backend, server, "health down")  # now DOWN until the check passes
        self._set(backend, server, "state ready")

    def drain(self, backend: str, server: str) -> None:
        """No new sessions. A server that is not there has nothing to drain: not an error."""
        _name("backend", backend)
        _name("server", server)
        self._set(backend, server, "state drain", missing_ok=True)

    def remove(self, backend: str, server: str) -> None:
        """Maintenance (nothing new reaches it), then delete. Missing already: done."""
        _name("backend", backend)
        _name("server", server)
        if not self._set(backend, server, "state maint", missing_ok=True):
            return
        reply = self._checked(f"del server {backend}/{server}", backend)
        if reply.startswith("Server deleted") or reply.startswith("No such server"):
            return
        if "still has connections" in reply:
            raise ServerInUse(
                f"HAProxy {self.name}: {backend}/{server} still has connections; drain it until "
                "its sessions are 0, then remove it",
                retry_after=1.0,
            )
        raise HaproxyRefused(f"HAProxy {self.name}: del server {backend}/{server}: {reply[:200]}")

    # --- helpers -------------------------------------------------------------------------

    def _find(self, backend: str, server: str) -> ServerState | None:
        return next((s for s in self.servers(backend) if s.name == server), None)

    def _set(self, backend: str, server: str, what: str, *, missing_ok: bool = False) -> bool:
        """``set server B/S WHAT``; False if the server is not there and ``missing_ok``."""
        line = f"set server {backend}/{server} {what}"
        reply = self._checked(line, backend)
        if reply.startswith("No such server"):
            if missing_ok:
                return False
            raise HaproxyRefused(f"HAProxy {self.name}: no server {backend}/{server}")
        # Success is an empty reply, or a note such as "no need to change the addr, port
        # changed from ...". Anything else that looks like a refusal is one.
        lowered = reply.lower()
        if any(word in lowered for word in ("invalid", "require", "error", "failed", "cannot")):
            raise HaproxyRefused(f"HAProxy {self.name}: {line}: {reply[:200]}")
        return True

    def _expect_empty(self, line: str, backend: str) -> None:
        reply = self._checked(line, backend)
        if reply.startswith("No such server"):
            raise HaproxyRefused(f"HAProxy {self.name}: {line}: no such server")
        if reply:
            raise HaproxyRefused(f"HAProxy {self.name}: {line}: {reply[:200]}")
