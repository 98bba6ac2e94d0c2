"""Hydra ``vespa`` config group -> typed settings, failing fast with the key to fix."""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipelines.errors import ConfigError
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
