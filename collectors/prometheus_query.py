"""Instant PromQL queries through prometheus-api-client, parsed and bounded.

Where it sits: shared by the collectors that read Prometheus (node metrics, PromQL SLIs). A
query is evaluated at the collector's ``now``; connection failures and HTTP errors become
``TemporaryError``; NaN or infinite values are dropped as missing (never turned into zero).
``connect`` builds the client with TLS verification always on: against the system's CAs, or
the CA file of the controller file's ``prometheus.ca_file`` for a private CA.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import RETRY_ON_STATUS
from urllib3.util.retry import Retry

from autoscaler.model import TemporaryError
from collectors.common import finite_or_none


def connect(url: str, *, ca_file: str | None = None) -> PrometheusConnect:
    """A client of the Prometheus at ``url`` that verifies its TLS certificate (with
    ``ca_file``'s CAs if given, else the system's); a plain ``http`` URL is used as it is."""
    session = requests.Session()
    session.verify = ca_file if ca_file else True
    # One quick retry: the collector asks again next cycle, and a refused certificate or a
    # down server must not hold the call for the client's default 3 retries with 1-s backoff.
    retry = Retry(total=1, backoff_factor=0.1, status_forcelist=RETRY_ON_STATUS)
    return PrometheusConnect(url=url, session=session, retry=retry)


def redacted(url: str) -> str:
    """``url`` without its user and password: what may appear in errors, logs and snapshots."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=f"***@{netloc}"))


@dataclass(frozen=True)
class InstantValue:
    labels: Mapping[str, str]
    value: float


def parse_vector(result: object, query: str) -> list[InstantValue]:
    """Parse an instant-vector result; NaN/Inf entries are dropped (missing, not zero)."""
    if not isinstance(result, list):
        raise TemporaryError(f"prometheus: {query!r} did not return a vector")
    values: list[InstantValue] = []
    for item in result:
        if not isinstance(item, dict):
            raise TemporaryError(f"prometheus: {query!r} returned a malformed entry")
        metric, pair = item.get("metric"), item.get("value")
        if not isinstance(metric, dict) or not isinstance(pair, list) or len(pair) != 2:
            raise TemporaryError(f"prometheus: {query!r} returned a malformed entry")
        number = finite_or_none(pair[1])
        if number is not None:
            values.append(InstantValue({str(k): str(v) for k, v in metric.items()}, number))
    return values


def instant_query(
    prometheus: PrometheusConnect, query: str, now: float, timeout_s: float
) -> list[InstantValue]:
    """Evaluate ``query`` at ``now``; connection problems become ``TemporaryError``."""
    try:
        result = prometheus.custom_query(query, params={"time": f"{now:.3f}"}, timeout=timeout_s)
    except (requests.RequestException, PrometheusApiClientException, ValueError) as exc:
        raise TemporaryError(f"prometheus at {redacted(prometheus.url)}: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:  # the client indexes the body blindly
        problem = f"malformed answer ({type(exc).__name__}: {exc})"
        raise TemporaryError(f"prometheus at {redacted(prometheus.url)}: {problem}") from exc
    return parse_vector(result, query)
