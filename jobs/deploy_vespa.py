"""Write the Vespa application package and deploy it to a config server.

    python -m jobs.deploy_vespa                                      # write infra/vespa/app and infra/vespa/multinode
    python -m jobs.deploy_vespa config_server=http://cfg-host:19071  # also deploy (prepare + activate)

The work is :func:`pipelines.vespa.deploy.deploy_from_config` (the package comes from
:mod:`pipelines.vespa.app`, the one definition); :func:`run` runs it in-process and returns the exit
status: 0 on success, 2 on bad config, 1 when the config server rejects
the package or the cluster does not report healthy within ``wait_s``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from jobs._common import error, setup_logging
from pipelines.errors import ConfigError
from pipelines.vespa.deploy import DeployError, deploy_from_config


def run(cfg: DictConfig) -> int:
    """Write (and deploy) the packages in this process; returns the exit status."""
    try:
        deploy_from_config(cfg)
    except ConfigError as exc:
        return error(str(exc))
    except DeployError as exc:
        return error(str(exc), code=1)
    return 0


@hydra.main(config_path="../conf", config_name="deploy_vespa", version_base="1.3")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.log_level)
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
