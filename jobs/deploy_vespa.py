"""Write the Vespa application package and deploy it to a config server.

    python -m jobs.deploy_vespa                                      # write infra/vespa/app and infra/vespa/multinode
    python -m jobs.deploy_vespa config_server=http://cfg-host:19071  # also deploy (prepare + activate)

The package comes from :mod:`pipelines.vespa.app` (the one definition). Deploying POSTs the zipped
package to ``<config_server>/application/v2/tenant/<tenant>/prepareandactivate`` (Vespa's deploy
API), then waits for ``vespa.endpoint.url``'s ``/state/v1/health`` when an endpoint is set.
Exit status: 0 on success, 2 on bad config, 1 when the config server rejects the package.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import hydra
from omegaconf import DictConfig

from jobs._common import fail, setup_logging
from pipelines.errors import ConfigError
from pipelines.vespa import app, config

logger = logging.getLogger("jobs.deploy_vespa")

DIRS = {"single": "app", "multinode": "multinode"}


def write_all(settings: app.VespaAppSettings, output_dir: str) -> list[Path]:
    written = []
    for topology, directory in DIRS.items():
        written += app.write_package(settings, Path(output_dir) / directory, topology)
    return written


def deploy(settings: app.VespaAppSettings, config_server: str, topology: str, tenant: str, timeout_s: float = 300):
    """POST the zipped package to the deploy API; returns its JSON answer. Raises RuntimeError on rejection."""
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
        raise RuntimeError(msg) from exc
    except urllib.error.URLError as exc:
        msg = f"cannot reach config server {config_server}: {exc.reason}"
        raise RuntimeError(msg) from exc


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


@hydra.main(config_path="../conf", config_name="deploy_vespa", version_base="1.3")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.log_level)
    try:
        settings = config.settings(cfg, "app")
        if cfg.topology not in app.TOPOLOGIES:
            msg = f"topology must be one of {app.TOPOLOGIES}, got {cfg.topology!r}"
            raise ConfigError(msg)
    except ConfigError as exc:
        fail(str(exc))
    for path in write_all(settings, cfg.output_dir):
        print(f"wrote {path}")
    if not cfg.config_server:
        return
    try:
        answer = deploy(settings, str(cfg.config_server), str(cfg.topology), str(cfg.tenant))
    except RuntimeError as exc:
        fail(str(exc), code=1)
    print(f"deployed {cfg.topology} package to {cfg.config_server}: {answer.get('message', answer)}")
    endpoint = config.endpoint(cfg, required=False)
    if endpoint.configured and cfg.wait_s:
        if not wait_healthy(endpoint.safe_url, float(cfg.wait_s)):
            fail(f"{endpoint.safe_url} did not report healthy within {cfg.wait_s}s", code=1)
        print(f"{endpoint.safe_url} is up")


if __name__ == "__main__":
    sys.exit(main())
