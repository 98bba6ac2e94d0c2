"""Write the Vespa application package to disk and deploy it to a config server.

The package comes from :mod:`pipelines.vespa.app` (the one definition). :func:`write_all` writes every
topology under ``<output_dir>/{app,multinode}``; :func:`deploy` POSTs the zipped package to
``<config_server>/application/v2/tenant/<tenant>/prepareandactivate`` (Vespa's deploy API);
:func:`wait_healthy` polls ``/state/v1/health``. :func:`deploy_from_config` does all three for the
``deploy_vespa`` config (``conf/deploy_vespa.yaml``). Failures raise :class:`ConfigError` (bad settings)
or :class:`DeployError` (rejected, unreachable or never healthy); nothing here exits.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

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


def deploy_from_config(cfg: DictConfig, report: Callable[[str], Any] = print) -> None:
    """Write every package; with ``config_server``, deploy ``topology`` and wait for ``vespa.endpoint.url``.

    ``report`` receives one line per step (files written, deploy answer, health). Raises
    :class:`ConfigError` before writing anything when the config is unusable, :class:`DeployError`
    when deploying or waiting fails.
    """
    settings = config.settings(cfg, "app")
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
