"""Backends that execute a stage plan: ``local`` (a plain in-process loop) and ``ray`` (Ray Data)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from pipelines.backends.base import Backend, RayConfig
from pipelines.errors import ConfigError

NAMES = ("ray", "local")


def create(name: str, ray: RayConfig | None = None, worker_env: Mapping[str, str] | None = None) -> Backend:
    """The backend called ``name``; Ray is imported only when it is the one chosen."""
    if name == "local":
        from pipelines.backends.local import LocalBackend

        return LocalBackend()
    if name == "ray":
        from pipelines.backends.ray_data import RayDataBackend

        return RayDataBackend(ray or RayConfig(), dict(worker_env or {}))
    msg = f"backend must be one of {list(NAMES)}, got {name!r}"
    raise ConfigError(msg)


#: Environment variables the driver passes on to Ray workers when set (offline hub settings, caches,
#: the crash-test failpoints).
PASSED_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "PIPELINES_CACHE_DIR",
    "TOKENIZERS_PARALLELISM",
    "PIPELINES_FAILPOINTS",
    "PIPELINES_FAILPOINTS_ONCE_DIR",
    "PIPELINES_FAILPOINTS_FILE",
)


def worker_env() -> dict[str, str]:
    """Environment for Ray workers: the repository importable, and :data:`PASSED_ENV` as set here.

    In a job submitted with ``ray job submit``, variables the job's own runtime env sets are left out:
    they reach every worker already, and Ray refuses a driver runtime env that names them again.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    env.update({key: os.environ[key] for key in PASSED_ENV if key in os.environ})
    return {key: value for key, value in env.items() if key not in _submitted_job_env()}


def _submitted_job_env() -> set[str]:
    """Names of the env vars set by the runtime env of the submitted Ray job this driver runs in (if any)."""
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job supervisor for the entrypoint
    if not injected:
        return set()
    try:
        return set((json.loads(injected).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return set()
