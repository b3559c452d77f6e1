"""The lab's traffic generator: a bounded rate of real HTTP GETs to one lab URL, all counted.

Where it sits: a lab tool (the product never imports it). It plays the business's users
against a frontend of the lab's HAProxy, so the request SLI has requests to measure and a test
can say "no request was lost" (a retire, a rollout) by counting every failure. Run it in
process (``run``) or inside a lab network namespace::

    ip netns exec NS python -m lab.traffic --url http://10.0.0.1:8080/ --rate 20 \\
        --duration 30 --max-requests 600 --allow-subnet 10.0.0.0/24 --json

Bounded on purpose: the rate, the duration and the number of requests are all required and
capped (``MAX_RATE``, ``MAX_DURATION_S``, ``MAX_REQUESTS``), it stops by itself, and it refuses
any target that is not an IP literal on loopback or inside the lab subnets it is given (no name
is ever resolved), so its traffic stays in the lab.

Outcomes: ``ok`` (2xx, answered within ``timeout_s``), ``http_error`` (any other status),
``timeout`` (no whole answer within ``timeout_s``) and ``connection_error`` (refused, reset,
closed early). Requests are sent open-loop at the given rate from a bounded pool of workers
(``MAX_IN_FLIGHT``); when every worker is busy a request waits for one, so a slow target lowers
the rate actually sent (the summary says what was sent).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

MAX_RATE = 100.0  # requests per second
MAX_DURATION_S = 15 * 60.0
MAX_REQUESTS = 100_000
MAX_TIMEOUT_S = 60.0
MAX_IN_FLIGHT = 64
MAX_ANSWER_KINDS = 32  # distinct first lines of 2xx bodies kept in ``answers``

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TargetRefused(ValueError):
    """The URL is not one the lab's traffic may go to."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str


def check_target(url: str, lab_subnets: Sequence[str | Network] = ()) -> Target:
    """The URL's address if it is loopback or inside ``lab_subnets``; ``TargetRefused`` if not."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise TargetRefused(f"only http:// URLs, not {url!r}")
    host = parts.hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise TargetRefused(
            f"the target must be an IP address (no name is resolved), not {host!r}"
        ) from None
    networks = [ipaddress.ip_network(s, strict=False) for s in lab_subnets]
    if not (address.is_loopback or any(address in n for n in networks)):
        allowed = ", ".join(str(n) for n in networks) or "none given"
        raise TargetRefused(
            f"{address} is neither loopback nor in the lab subnets ({allowed}): "
            "the lab's traffic stays in the lab"
        )
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise TargetRefused(f"bad port in {url!r}: {exc}") from None
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(host=str(address), port=port, path=path)


def _bounded(name: str, value: float, low: float, high: float) -> None:
    if not low < value <= high:
        raise ValueError(f"{name} must be in ({low:g}, {high:g}], got {value:g}")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Summary:
    """Every request sent and what became of it. ``failures`` must be 0 for "nothing lost"."""

    url: str
    rate: float
    sent: int = 0
    ok: int = 0
    http_error: int = 0
    timeout: int = 0
    connection_error: int = 0
    elapsed_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    errors: list[str] = field(default_factory=list)  # the first few failure reasons

    @property
    def failures(self) -> int:
        return self.http_error + self.timeout + self.connection_error

    @property
    def completed(self) -> int:
        return self.ok + self.failures

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        latencies = data.pop("latencies_ms")
        data["failures"] = self.failures
        data["completed"] = self.completed
        data["latency_ms"] = {
            "p50": percentile(latencies, 0.50),
            "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies) if latencies else None,
        }
        return data


class _Tally:
    """The running counts, shared by the workers (one lock, short critical sections)."""

    def __init__(self, summary: Summary) -> None:
        self.summary = summary
        self.lock = threading.Lock()

    def record(self, outcome: str, latency_s: float, status: int | None, answer: str) -> None:
        with self.lock:
            s = self.summary
            setattr(s, outcome, getattr(s, outcome) + 1)
            if status is not None:
                s.statuses[str(status)] = s.statuses.get(str(status), 0) + 1
            if outcome == "ok":
                s.latencies_ms.append(round(latency_s * 1000, 3))
                if answer in s.answers or len(s.answers) < MAX_ANSWER_KINDS:
                    s.answers[answer] = s.answers.get(answer, 0) + 1
            elif len(s.errors) < 20:
                s.errors.append(f"{outcome}: {answer}"[:200])

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return self.summary.to_dict()


def _one(target: Target, timeout_s: float, tally: _Tally) -> None:
    started = time.monotonic()
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
    try:
        conn.request("GET", target.path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read(4096)
        latency = time.monotonic() - started
        if latency > timeout_s:
            tally.record("timeout", latency, response.status, f"answered after {latency:.2f} s")
        elif 200 <= response.status < 300:
            first = body.decode(errors="replace").strip().splitlines()
            tally.record("ok", latency, response.status, first[0][:64] if first else "")
        else:
            tally.record("http_error", latency, response.status, f"HTTP {response.status}")
    except TimeoutError:
        tally.record("timeout", time.monotonic() - started, None, f"no answer in {timeout_s:g} s")
    except (OSError, http.client.HTTPException) as exc:
        tally.record("connection_error", time.monotonic() - started, None, repr(exc))
    finally:
        conn.close()


def _write_status(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # a reader never sees half a file


def run(
    url: str,
    *,
    rate: float,
    duration_s: float,
    max_requests: int,
    timeout_s: float = 5.0,
    lab_subnets: Sequence[str | Network] = (),
    status_path: Path | None = None,
    stop: threading.Event | None = None,
) -> Summary:
    """Send GETs to ``url`` at ``rate`` per second until ``duration_s`` or ``max_requests``.

    Returns once every request sent has an outcome. ``stop`` ends it early (for a caller that
    runs it in a thread). ``status_path`` gets the running counts every second, and at the end.
    """
    target = check_target(url, lab_subnets)
    _bounded("rate", rate, 0, MAX_RATE)
    _bounded("duration_s", duration_s, 0, MAX_DURATION_S)
    _bounded("max_requests", max_requests, 0, MAX_REQUESTS)
    _bounded("timeout_s", timeout_s, 0, MAX_TIMEOUT_S)
    stop = stop or threading.Event()
    summary = Summary(url=url, rate=rate)
    tally = _Tally(summary)
    started = time.monotonic()
    next_status = started + 1.0
    in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def work() -> None:
        try:
            _one(target, timeout_s, tally)
        finally:
            in_flight.release()

    def wait_until(due: float) -> bool:
        """Sleep until ``due``, writing the status file on the way; False if stopped."""
        nonlocal next_status
        while True:
            now = time.monotonic()
            if status_path is not None and now >= next_status:
                with tally.lock:
                    summary.elapsed_s = round(now - started, 3)
                _write_status(status_path, tally.snapshot())
                next_status += 1.0
            if stop.is_set():
                return False
            if now >= due:
                return True
            stop.wait(min(due - now, 0.2))

    def free_worker() -> bool:
        """A worker slot; False if stopped or out of time while every worker was busy."""
        while not in_flight.acquire(timeout=0.2):
            # The duration is a wall limit too: a slow target cannot stretch it.
            if stop.is_set() or time.monotonic() - started >= duration_s:
                return False
        return True

    with ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix="traffic") as pool:
        for i in range(max_requests):
            due = started + i / rate
            if due - started >= duration_s or not wait_until(due) or not free_worker():
                break
            with tally.lock:
                summary.sent += 1
            pool.submit(work)
    summary.elapsed_s = round(time.monotonic() - started, 3)
    if status_path is not None:
        _write_status(status_path, tally.snapshot())
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.traffic", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help=f"per second, <= {MAX_RATE:g}")
    parser.add_argument(
        "--duration", type=float, required=True, help=f"seconds, <= {MAX_DURATION_S:g}"
    )
    parser.add_argument("--max-requests", type=int, required=True, help=f"<= {MAX_REQUESTS}")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument(
        "--allow-subnet", action="append", default=[], help="a lab subnet (repeatable)"
    )
    parser.add_argument("--status-file", type=Path, help="running counts, rewritten every second")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    # SIGTERM ends the run early, cleanly: the requests in flight finish and are counted, and
    # the summary is printed as at the end of the duration.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    try:
        summary = run(
            args.url,
            rate=args.rate,
            duration_s=args.duration,
            max_requests=args.max_requests,
            timeout_s=args.timeout,
            lab_subnets=args.allow_subnet,
            status_path=args.status_file,
            stop=stop,
        )
    except ValueError as exc:  # TargetRefused included
        print(f"lab.traffic: {exc}", file=sys.stderr)
        return 2
    data = summary.to_dict()
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        latency = data["latency_ms"]
        print(
            f"sent {summary.sent}: ok {summary.ok}, http_error {summary.http_error}, "
            f"timeout {summary.timeout}, connection_error {summary.connection_error} "
            f"in {summary.elapsed_s:.1f} s; latency ms {latency}"
        )
    return 0 if summary.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
