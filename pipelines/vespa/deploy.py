"""Write the Vespa application package to disk and deploy it to a config server.

The package comes from :mod:`pipelines.vespa.app` (the one definition). :func:`write_all` writes every
topology under ``<output_dir>/{app,multinode}``; :func:`deploy` POSTs the zipped package to
``<config_server>/application/v2/tenant/<tenant>/prepareandactivate`` (Vespa's deploy API);
:func:`wait_healthy` polls ``/state/v1/health``. :func:`deploy_from_config` does all three for the
``deploy_vespa`` config (``conf/deploy_vespa.yaml``). Failures raise :class:`ConfigError` (bad settings)
or :class:`DeployError` (rejected, unreachable or never healthy); nothing here exits.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipelines.errors import ConfigError
from pipelines.vespa import app, config

#: Directory under ``output_dir`` of each topology's package.
DIRS = {"single": "app", "multinode": "multinode"}


class DeployError(RuntimeError):
    """The config server rejected the package or could not be reached, or the cluster never became healthy."""


def write_all(settings: app.VespaAppSettings, output_dir: str) -> list[Path]:
    written = []
    for topology, directory in DIRS.items():
        written += app.write_package(settings, Path(output_dir) / directory, topology)
    return written


def deploy(settings: app.VespaAppSettings, config_server: str, topology: str, tenant: str, timeout_s: float = 300):
    """POST the zipped package to the deploy API; returns its JSON answer. Raises :class:`DeployError` on rejection."""
    url = f"{config_server.rstrip('/')}/application/v2/tenant/{tenant}/prepareandactivate"
    request = urllib.request.Request(
        url, data=app.package_zip(settings, topology), headers={"Content-Type": "application/zip"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:2000]
        msg = f"config server rejected the package (HTTP {exc.code}): {detail}"
        raise DeployError(msg) from exc
    except urllib.error.URLError as exc:
        msg = f"cannot reach config server {config_server}: {exc.reason}"
        raise DeployError(msg) from exc


def wait_healthy(url: str, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/state/v1/health", timeout=5) as response:
                if json.loads(response.read()).get("status", {}).get("code") == "up":
                    return True
        except (OSError, ValueError):
            pass
        time.sleep(2)
    return False


def with_model_dim(
    settings: app.VespaAppSettings,
    index: str | None = None,
    model: str | None = None,
    storage_options: Any = None,
) -> app.VespaAppSettings:
    """``settings`` whose tensor types follow the index's vector width (``index``: its recorded dimension) or the
    registered model's (``model``). Raises :class:`ConfigError` when they disagree with each other or with an
    explicit ``vespa.app.embedding_dim``, or when the index or model does not exist."""
    from pipelines.index.location import IndexLocation, embedding_dim
    from pipelines.models.registry import get_spec

    dims: dict[str, int] = {}
    if settings.embedding_dim is not None:
        dims["vespa.app.embedding_dim"] = settings.embedding_dim
    if model:
        try:
            dims[f"model={model}"] = get_spec(str(model)).dim
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if index:
        options = (
            OmegaConf.to_container(storage_options) if isinstance(storage_options, DictConfig) else storage_options
        )
        location = IndexLocation(str(index), options or {})
        if location.ledger.read_meta() is None and not location.part_files("pages"):
            msg = f"no index at {index!r} to take the vector width from; set index=<an index> or model=<name>"
            raise ConfigError(msg)
        dims[f"index={index}"] = embedding_dim(location)
    if len(set(dims.values())) > 1:
        msg = f"vector widths disagree: {dims}; the Vespa schema needs the width of the vectors it will hold"
        raise ConfigError(msg)
    if not dims:
        return settings
    return dataclasses.replace(settings, embedding_dim=next(iter(dims.values())))


def deploy_from_config(cfg: DictConfig, report: Callable[[str], Any] = print) -> None:
    """Write every package; with ``config_server``, deploy ``topology`` and wait for ``vespa.endpoint.url``.

    The schema's tensor types follow ``index`` (its recorded vector width) or ``model`` when given
    (:func:`with_model_dim`), else ``vespa.app.embedding_dim``, else the default model's width.

    ``report`` receives one line per step (files written, deploy answer, health). Raises
    :class:`ConfigError` before writing anything when the config is unusable, :class:`DeployError`
    when deploying or waiting fails.
    """
    settings = with_model_dim(
        config.settings(cfg, "app"), cfg.get("index"), cfg.get("model"), cfg.get("storage_options")
    )
    if cfg.topology not in app.TOPOLOGIES:
        msg = f"topology must be one of {app.TOPOLOGIES}, got {cfg.topology!r}"
        raise ConfigError(msg)
    for path in write_all(settings, cfg.output_dir):
        report(f"wrote {path}")
    if not cfg.config_server:
        return
    answer = deploy(settings, str(cfg.config_server), str(cfg.topology), str(cfg.tenant))
    report(f"deployed {cfg.topology} package to {cfg.config_server}: {answer.get('message', answer)}")
    endpoint = config.endpoint(cfg, required=False)
    if endpoint.configured and cfg.wait_s:
        if not wait_healthy(endpoint.safe_url, float(cfg.wait_s)):
            msg = f"{endpoint.safe_url} did not report healthy within {cfg.wait_s}s"
            raise DeployError(msg)
        report(f"{endpoint.safe_url} is up")
