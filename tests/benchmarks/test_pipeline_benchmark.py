"""The pipeline benchmark's result structure, on the local backend (a Ray run costs minutes here), and the GPU
benchmark end to end on the CPU with the tiny test model."""

from __future__ import annotations

import pytest

from benchmarks.pipeline import STAGES, job_overrides, run_benchmark


def test_local_run_reports_throughput_and_stage_split(sample_corpus, tiny_model_dir):
    result = run_benchmark(str(sample_corpus), "tiny", cpus=[1], backends=["local"])

    assert set(result) == {"source", "model", "pages", "baseline", "runs"}
    assert (result["model"], result["pages"], result["baseline"]) == ("tiny", 19, "local")
    [entry] = result["runs"]
    keys = {"backend", "num_cpus", "wall_seconds", "cpu_seconds", "pages_per_second", "stage_seconds", "load_average"}
    assert set(entry) == keys | {"threads"}  # a local entry records the loop's torch threads
    assert entry["threads"] == 1
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
    tasks = ("rasterize", "preprocess", "binarize")
    # what the job's fail-fast check demands: actors plus any one task stage within the CPU count
    assert actors + max(requested[f"ray.stages.{stage}.num_cpus"] for stage in tasks) <= 1
    assert job_overrides("ray", 2) == ["backend=ray", "ray.num_cpus=2"]
    assert job_overrides("local", 2) == ["backend=local"]


def test_gpu_benchmark_runs_the_embed_path_end_to_end_on_cpu(tiny_model_dir):
    from benchmarks.gpu import bench_gpu

    # No source: the generated bulk corpus, as `python -m benchmarks gpu` runs it.
    body = bench_gpu("tiny", pages=3, device="cpu", micro_batch_size=2, peak=1.0)
    result = body["results"]
    assert (result["device"], result["pages"], result["random_weights"]) == ("cpu", 3, False)
    assert result["all_finite"] and result["vectors_per_page"] == result["tokens_per_page"] > 0
    assert result["tokens_per_second"] == pytest.approx(
        result["pages_per_second"] * result["tokens_per_page"], rel=0.01
    )
    # FLOPs of a page: at least 2 x parameters x tokens (every weight multiplies every token once or more)
    assert result["flops_per_page"] >= 2 * 0.9 * result["parameters"] * result["tokens_per_page"]
    assert result["mfu"] == pytest.approx(result["flops_per_page"] * result["pages_per_second"] / 1e12, rel=0.01)
    cpu = result["cpu"]
    assert set(cpu["cpu_s_per_page"]) == {"rasterize", "preprocess", "pool", "binarize"}
    assert all(v >= 1 for v in cpu["workers_per_gpu"].values())
    # The CPU stages were timed on pages that really rendered (the corpus outlives the embedding run).
    # (binarize of a few pages can round to 0 s; rendering and preprocessing take milliseconds a page.)
    assert cpu["pages_rasterized"] >= 3 and cpu["cpu_s_per_page"]["rasterize"] > 0
    assert cpu["cpu_s_per_page"]["preprocess"] > 0
