"""Hydra ``vespa`` config group -> typed settings, failing fast with the key to fix."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf
from vespa.retries import NO_RETRY

from pipelines.errors import ConfigError
from pipelines.redaction import redact_text
from pipelines.vespa.app import VespaAppSettings
from pipelines.vespa.client import VespaEndpoint
from pipelines.vespa.documents import DocumentSettings
from pipelines.vespa.feed import FeedSettings
from pipelines.vespa.query import VespaQuerySettings

_GROUPS = {
    "endpoint": VespaEndpoint,
    "app": VespaAppSettings,
    "documents": DocumentSettings,
    "feed": FeedSettings,
    "query": VespaQuerySettings,
}


def settings(cfg: DictConfig, group: str) -> Any:
    """The dataclass for ``vespa.<group>``; unknown keys or bad values raise :class:`ConfigError`."""
    cls = _GROUPS[group]
    node = OmegaConf.select(cfg, f"vespa.{group}")
    values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        msg = f"unknown keys vespa.{group}.{unknown}; known keys: {sorted(known)}"
        raise ConfigError(msg)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def endpoint(cfg: DictConfig, required: bool = True) -> VespaEndpoint:
    value = settings(cfg, "endpoint")
    if required and not value.configured:
        msg = "no Vespa endpoint: set vespa.endpoint.url=http(s)://<host>:8080"
        raise ConfigError(msg)
    return value


def check_reachable(value: VespaEndpoint, timeout_s: float) -> None:
    """Fail before any work when nothing usable answers at the endpoint: one ``GET /ApplicationStatus`` with the
    endpoint's credentials, ``timeout_s`` long.

    Raises :class:`ConfigError` naming ``vespa.endpoint.url`` when there is no answer (refused, unknown host, TLS
    failure, timeout), the credential settings when they cannot be read or Vespa refuses them (401, 403). Any other
    answer counts as reachable: a busy or degraded cluster is the feed's retries' business.
    """

    async def get_status() -> Any:
        app = value.connect()
        # The feed's own client (HTTP/2, pyvespa's retries off), so the probe sees what the feed will see.
        async with app.asyncio(connections=1, timeout=timeout_s, docv1_retry_policy=NO_RETRY) as session:
            return await session.httpr_client.get(f"{app.end_point}/ApplicationStatus")

    try:
        response = asyncio.run(get_status())
    except OSError as exc:  # the client reads the mTLS files when it opens
        msg = f"cannot read the Vespa client certificate or key ({exc}): check vespa.endpoint.cert and key"
        raise ConfigError(msg) from exc
    except Exception as exc:  # the HTTP client's transport errors: refused, unknown host, TLS, timeout
        reason = redact_text(f"{type(exc).__name__}: {exc}", value.secrets())
        msg = (
            f"no answer from Vespa at vespa.endpoint.url={value.safe_url!r} ({reason}): check the URL and that the "
            "cluster is up (infra/vespa/README.md), then rerun; nothing was sent"
        )
        raise ConfigError(msg) from exc
    if response.status_code in (401, 403):
        msg = (
            f"Vespa at {value.safe_url} refused the credentials (HTTP {response.status_code}, "
            f"auth={value.auth_method}): check vespa.endpoint.token_env (or token) or vespa.endpoint.cert and key; "
            "nothing was sent"
        )
        raise ConfigError(msg)
