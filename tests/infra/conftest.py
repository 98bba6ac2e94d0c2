"""Fixtures of the infra checks: the repository's files they compare, read once.

- ``locked_versions``: package name -> version, from ``uv.lock``.
- ``kuberay_crds``: kind -> CRD document, from ``../shared/reference/kuberay`` (a missing reference fails).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / ".." / "shared" / "reference" / "kuberay"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}


@pytest.fixture(scope="session")
def locked_versions() -> dict[str, str]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {package["name"]: package["version"] for package in lock["package"] if "version" in package}


@pytest.fixture(scope="session")
def kuberay_crds() -> dict[str, dict]:
    crds = {}
    for kind, name in CRD_FILES.items():
        path = KUBERAY / name
        if not path.is_file():
            pytest.fail(f"KubeRay CRD reference missing: {path.resolve()} (needed to check infra/k8s)")
        # libyaml: the three CRDs are 56k lines, which PyYAML's pure-Python loader takes seconds on.
        crds[kind] = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return crds
