"""``infra/docker/Dockerfile`` installs the project the way the Makefile's ``setup`` does.

Same Debian packages for the pipeline (not the Java ones, which only serve the Vespa verification
tests), ``uv sync --frozen`` with the same Python, the Ray version of ``uv.lock`` in the image, a CUDA
base whose major version is the one of the CUDA wheels torch is locked with, and every first-party
package copied in.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"


def makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*:?=\s*(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile has no {name}"
    return match.group(1).strip()


@pytest.fixture(scope="module")
def dockerfile() -> str:
    # Continuation lines joined: one instruction per line.
    return re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())


def instructions(dockerfile: str, keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in dockerfile.splitlines() if line.startswith(f"{keyword} ")]


def arg(dockerfile: str, name: str) -> str:
    values = [a.split("=", 1)[1].strip('"') for a in instructions(dockerfile, "ARG") if a.startswith(f"{name}=")]
    assert len(values) == 1, f"Dockerfile must set ARG {name}=... once"
    return values[0]


def test_same_apt_packages_as_the_makefile(dockerfile):
    assert set(arg(dockerfile, "APT_PACKAGES").split()) == set(makefile_var("APT_PACKAGES").split())
    installs = [r for r in instructions(dockerfile, "RUN") if "apt-get install" in r]
    assert installs and all("${APT_PACKAGES}" in r for r in installs)
    # Java and Maven serve only the Vespa verification tests: not in the worker image.
    for package in makefile_var("JAVA_APT_PACKAGES").split():
        assert not any(package in r for r in installs), package
        assert package in DOCKERFILE.read_text(), f"say why {package} is left out"


def test_uv_sync_frozen_with_the_makefiles_python(dockerfile):
    make_sync = re.search(r"sync --frozen --python (\S+)", (REPO / "Makefile").read_text())
    assert make_sync, "Makefile's venv target no longer runs uv sync --frozen --python X"
    python = make_sync.group(1)
    syncs = [shlex.split(r) for r in instructions(dockerfile, "RUN") if "uv sync" in r]
    assert syncs, "Dockerfile must install with uv sync --frozen"
    for argv in syncs:
        assert "--frozen" in argv
        assert argv[argv.index("--python") + 1] == python
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert python in pyproject["project"]["requires-python"]
    # Packages come from uv (the lock), never from a plain pip.
    assert not any(
        re.search(r"pip3? install", r.replace("uv pip install", "")) for r in instructions(dockerfile, "RUN")
    )


def test_ray_version_and_tag_match_uv_lock(dockerfile, locked_versions):
    ray = locked_versions["ray"]
    assert arg(dockerfile, "RAY_VERSION") == ray
    tags = re.findall(r"docker build .*-t \S+:(\S+)", DOCKERFILE.read_text())
    assert tags and all(tag == f"ray{ray}" for tag in tags), tags


def test_cuda_base_matches_torchs_cuda_wheels(dockerfile, locked_versions):
    bases = [f.split()[0] for f in instructions(dockerfile, "FROM")]
    final = bases[-1]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-\w+-ubuntu\d+\.\d+", final)
    assert match, f"final stage should be an nvidia/cuda image, got {final}"
    runtime = locked_versions["nvidia-cuda-runtime"]
    assert match.group(1) == runtime.split(".")[0], f"base CUDA {final} vs nvidia-cuda-runtime {runtime}"


def test_every_first_party_package_is_copied(dockerfile):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = pyproject["tool"]["ruff"]["lint"]["isort"]["known-first-party"]
    copies = [c.split()[:-1] for c in instructions(dockerfile, "COPY") if not c.startswith("--from")]
    copied = {source.rstrip("/") for sources in copies for source in sources}
    assert {*packages, "conf", "pyproject.toml", "uv.lock"} <= copied
