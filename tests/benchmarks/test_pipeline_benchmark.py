"""The pipeline benchmark's result structure, on the local backend (a Ray run costs minutes here)."""

from __future__ import annotations

import pytest

from benchmarks.pipeline import STAGES, job_overrides, run_benchmark


def test_local_run_reports_throughput_and_stage_split(sample_corpus, tiny_model_dir):
    result = run_benchmark(str(sample_corpus), "tiny", cpus=[1], backends=["local"])

    assert set(result) == {"source", "model", "pages", "baseline", "runs"}
    assert (result["model"], result["pages"], result["baseline"]) == ("tiny", 19, "local")
    [entry] = result["runs"]
    assert set(entry) == {"backend", "num_cpus", "wall_seconds", "pages_per_second", "stage_seconds"}
    assert (entry["backend"], entry["num_cpus"]) == ("local", 1)
    assert entry["pages_per_second"] == pytest.approx(19 / entry["wall_seconds"], rel=1e-3)
    assert set(entry["stage_seconds"]) == set(STAGES)
    # every stage did work, and per-page work is only part of a job that also starts up and loads a model
    assert all(seconds > 0 for seconds in entry["stage_seconds"].values())
    assert sum(entry["stage_seconds"].values()) < entry["wall_seconds"]


def test_one_cpu_ray_run_gets_stage_requests_that_fit():
    overrides = job_overrides("ray", 1)
    assert "ray.num_cpus=1" in overrides
    requested = {o.split("=")[0]: float(o.split("=")[1]) for o in overrides if ".num_cpus=" in o and "stages" in o}
    actors = requested["ray.stages.embed.num_cpus"] + requested["ray.stages.pool.num_cpus"]
    # what the job's fail-fast check demands: actors plus any one task stage within the CPU count
    assert actors + max(requested["ray.stages.rasterize.num_cpus"], requested["ray.stages.binarize.num_cpus"]) <= 1
    assert job_overrides("ray", 2) == ["backend=ray", "ray.num_cpus=2"]
    assert job_overrides("local", 2) == ["backend=local"]
