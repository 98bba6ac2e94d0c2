"""Helpers shared by the tests: one way to compose a Hydra config, one way to run a job's CLI.

Most tests run jobs in-process (``jobs.<name>.run(cfg)`` returns the exit status); a subprocess is
used only where the process itself is under test (its exit status, a SIGKILL, a CLI as users type it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
#: Nothing a test starts may reach a model hub.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def compose_config(name: str = "index", overrides: Iterable[str] = ()) -> DictConfig:
    """The config ``python -m jobs.<name> <overrides>`` would run with."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def index_config(*overrides: str) -> DictConfig:
    """An index job config with the tiny TEST model (later overrides win)."""
    return compose_config("index", ["model=tiny", *overrides])


def job_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **OFFLINE, **(env or {})}


def job_args(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_python(args: Iterable[str], env: Mapping[str, str] | None = None, timeout: float = 600, **kwargs):
    """Run ``python <args>`` (``-m module ...`` or ``-c code ...``) from the repository root, offline;
    returns the CompletedProcess (text stdout/stderr captured)."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=job_env(env), capture_output=True, text=True, timeout=timeout, **kwargs
    )


def run_cli(module: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 600, **kwargs):
    """Run ``python -m <module> <args>`` (see :func:`run_python`)."""
    return run_python(["-m", module, *args], env=env, timeout=timeout, **kwargs)


def start_cli(module: str, *args: str, env: Mapping[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start ``python -m <module> <args>`` without waiting (for tests that kill it)."""
    return subprocess.Popen(
        job_args(module, *args),
        cwd=REPO,
        env=job_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
