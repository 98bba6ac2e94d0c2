"""Shared fixtures.

- ``shared_corpus``: the 32 real-world PDFs in ``../shared/corpus/py-pdf-sample-files`` (CC-BY-SA).
- ``sample_corpus``: the generated sample corpus (pipelines.testing.corpus), once per session.
- ``tiny_model_dir``: the random-weight TEST model, built offline once per session into a temp cache
  and loaded through the same ``from_pretrained`` path as real checkpoints.
- ``ray_cluster``: one local 2-CPU Ray instance per session (Ray start-up costs seconds).
- ``sample_index``: the sample corpus indexed once per session by the index job, in-process, with the
  in-process backend and the default config (pool factor 3), and what the job printed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Failpoints armed through this file reach every process the tests start, Ray workers of the session's Ray
# instance included (pipelines.testing.failpoints.arm); unarmed it does not exist.
os.environ.setdefault("PIPELINES_FAILPOINTS_FILE", os.path.join(tempfile.mkdtemp(prefix="failpoints-"), "armed"))

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus" / "py-pdf-sample-files"
ENCRYPTED_PDF = "005-libreoffice-writer-password_libreoffice-writer-password.pdf"


# Under pytest-xdist (``make test`` runs two workers with ``--dist loadgroup``) session fixtures exist once per
# worker. Tests that share an expensive one go to the same worker, so each is set up once per run. The marks
# must be in place before xdist's own collection hook turns them into scheduling scopes (a ``@group`` suffix on
# the node id): hence a wrapper, which also checks afterwards that the grouping took effect.
XDIST_GROUPS = {"ray_cluster": "ray", "sample_index": "sample_index", "cluster": "ray_nodes"}


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, group in XDIST_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
                break
    result = yield
    if config.getoption("loadgroup", default=False):
        marked = [item.nodeid for item in items if item.get_closest_marker("xdist_group")]
        ungrouped = [nodeid for nodeid in marked if "@" not in nodeid]
        if ungrouped:
            msg = (
                f"--dist loadgroup did not group {ungrouped[0]} (and {len(ungrouped) - 1} more): expensive session "
                "fixtures would be built once per worker. Check the pytest / pytest-xdist pair (pyproject.toml)."
            )
            raise pytest.UsageError(msg)
    return result


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    if not SHARED_CORPUS.is_dir():
        pytest.fail(f"shared corpus missing at {SHARED_CORPUS}")
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("model-cache")
    os.environ["PIPELINES_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_model_dir(model_cache) -> Path:
    from pipelines.models.tiny import ensure_tiny_model

    return ensure_tiny_model(model_cache)


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    from pipelines.testing.corpus import generate_sample_corpus

    out = tmp_path_factory.mktemp("sample-corpus")
    generate_sample_corpus(out)
    return out


@pytest.fixture(scope="session")
def ray_cluster(model_cache):
    import ray

    from pipelines.backends import worker_env

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": worker_env()}, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_index(sample_corpus, tiny_model_dir, tmp_path_factory) -> tuple[Path, str]:
    import contextlib
    import io

    from jobs.index import run
    from tests.helpers import index_config

    out = tmp_path_factory.mktemp("sample-index")
    printed = io.StringIO()
    cfg = index_config(f"source.location={sample_corpus}", f"output.location={out}", "backend=local")
    with contextlib.redirect_stdout(printed):
        status = run(cfg)
    assert status == 0, printed.getvalue()
    return out, printed.getvalue()
