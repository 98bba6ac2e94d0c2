"""Benchmark: peak memory of one long document, the whole job process tree, before and after streaming.

    python -m benchmarks memory [--size 1000]     # pages of the one generated PDF

One PDF of ``pages`` pages (:func:`long_pdf`) is indexed by a real ``python -m jobs.index`` job with
``backend=local`` twice: from :data:`BEFORE_REF` (the loop that materialized every window of a document, then
every page's model inputs, before embedding) extracted with ``git archive``, and from this checkout (windows
streamed through the stages). Each job's resident memory is the sum over its process tree (the job plus its
renderer children: the pdfium worker, poppler's pdfinfo/pdftoppm/pdftotext), sampled every
:data:`SAMPLE_SECONDS`; ``peak_rss_bytes`` is the largest sum seen and ``ratio`` is before / after.

Pages are rendered at the ColQwen2.5 budget (``rasterize.max_pixels`` = :data:`REFERENCE_MODEL`'s, 602,112
pixels) and embedded with the tiny TEST model, whose processor resizes them to its own small budget: the job
figure covers full-size rendering, image encoding and text, with the tiny model's inputs. The full-size
architecture (``model.random_weights=true``) would also make ColQwen2.5's model inputs, but a 3B forward pass
over 1,000 pages on CPU takes hours. So ``full_size_inputs`` measures those inputs on their own: the local
backend running rasterization plus preprocessing with ColQwen2.5's own processor (built offline, no weights) and
dropping each block (:data:`PREPROCESS_ONLY`), now over ``pages`` and over ``before_pages`` pages, and from
:data:`BEFORE_REF` over ``before_pages`` only (the old loop holds every page's inputs, ~14 MB each: a
1,000-page run would need ~14 GB, too much for a shared machine; ``per_page_bytes`` extrapolates it).
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psutil
from reportlab.lib.pagesizes import LETTER
from reportlab.pdfgen.canvas import Canvas

from benchmarks.common import REFERENCE_MODEL, REPO, check
from benchmarks.rasterize import tree_rss_bytes
from pipelines.models.registry import get_spec

#: ``main`` before issue 20 part 6: its local loop held a whole document's windows and model inputs.
BEFORE_REF = "d263a60b87a72cb80296f5fa981d04419537a564"
SAMPLE_SECONDS = 0.02
#: Rasterize + ColQwen2.5 preprocessing of the PDF ``argv[1]`` at ``argv[2]`` pixels in the local backend, each
#: finished block dropped (the same calls in the old and the new checkout).
PREPROCESS_ONLY = """
import sys, pyarrow as pa
from pipelines import schema
from pipelines.backends.base import StagePlan
from pipelines.backends.local import LocalBackend
from pipelines.models.registry import ModelConfig
from pipelines.stages.preprocess import PreprocessStage
from pipelines.stages.rasterize import RasterizeStage
path, max_pixels = sys.argv[1], int(sys.argv[2])
model = ModelConfig(name="colqwen2.5-v0.2", random_weights=True)
plan = StagePlan([RasterizeStage(max_pixels=max_pixels), PreprocessStage(model=model)])
sources = pa.table({"source_uri": [path], "source_size": [0]}, schema=schema.SOURCE_SCHEMA)
LocalBackend().execute(sources, plan, lambda block: {"rows": block.num_rows})
"""
_WORDS = ("page", "budget", "render", "window", "stream", "memory", "index", "vector", "model", "table", "summary")


def long_pdf(path: str | os.PathLike[str], pages: int, seed: int = 0) -> Path:
    """Write a ``pages``-page Letter PDF of text lines and a box per page (about 1 ms a page); returns its path."""
    rng = random.Random(seed)
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=LETTER, invariant=1)
    width, height = LETTER
    for number in range(1, pages + 1):
        canvas.setFont("Helvetica", 10)
        for line in range(40):
            words = " ".join(rng.choice(_WORDS) for _ in range(12))
            canvas.drawString(54, height - 72 - 15 * line, f"{number}.{line} {words}")
        canvas.setFillColorRGB(rng.random(), rng.random(), rng.random())
        canvas.rect(54, 54, width - 108, 60 + rng.random() * 60, fill=1)
        canvas.showPage()
    canvas.save()
    out = Path(path)
    out.write_bytes(buffer.getvalue())
    return out


def peak_tree_rss(command: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> dict:
    """Run ``command``, sampling its process tree's RSS; returns ``peak_rss_bytes``, ``wall_seconds``, exit code."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        if time.perf_counter() - started > timeout_s:
            child.kill()
            break
        peak = max(peak, tree_rss_bytes(process))
        time.sleep(SAMPLE_SECONDS)
    stderr = child.communicate()[1]
    return {
        "peak_rss_bytes": peak,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "returncode": child.returncode,
        "stderr_tail": stderr[-2000:] if child.returncode else "",
    }


def checkout(ref: str, dest: Path) -> Path:
    """The tree of ``ref`` of this repository, extracted under ``dest`` (``git archive``, no worktree metadata)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _measured(repo: Path, args: list[str], timeout_s: float) -> dict:
    """``python <args>`` with the code of ``repo``, its process tree's peak RSS measured; raises when it fails."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = peak_tree_rss([sys.executable, *args], repo, env, timeout_s)
    if run["returncode"] != 0:
        msg = f"{args[:2]} from {repo} failed (exit {run['returncode']}):\n{run['stderr_tail']}"
        raise RuntimeError(msg)
    del run["stderr_tail"], run["returncode"]
    run["peak_rss_mib"] = round(run["peak_rss_bytes"] / 2**20, 1)
    return run


def index_job(repo: Path, source: Path, out: Path, max_pixels: int, timeout_s: float) -> dict:
    """``python -m jobs.index`` of ``source`` with the code of ``repo`` (``backend=local``, tiny model), measured."""
    command = [
        "-m",
        "jobs.index",
        f"source.location={source}",
        f"output.location={out}",
        "model=tiny",
        "backend=local",
        f"rasterize.max_pixels={max_pixels}",
        "log_level=WARNING",
    ]
    return _measured(repo, command, timeout_s)


def bench_memory(
    pages: int = 1000, before_pages: int = 100, before_ref: str = BEFORE_REF, timeout_s: float = 3600
) -> dict:
    """Peak RSS of the job process tree indexing one ``pages``-page PDF, before (``before_ref``) and now; and of
    full-size ColQwen2.5 model inputs (``full_size_inputs``, see the module docstring)."""
    max_pixels = get_spec(REFERENCE_MODEL).max_pixels
    before_pages = min(before_pages, pages)
    job, inputs = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        (root / "source").mkdir()
        pdf = long_pdf(root / "source" / "long.pdf", pages)
        short = long_pdf(root / "short.pdf", before_pages)
        repos = {"before": checkout(before_ref, root / "before"), "after": REPO}
        for label, repo in repos.items():
            job[label] = index_job(repo, root / "source", root / f"index-{label}", max_pixels, timeout_s)
        for label, repo in repos.items():
            script = ["-c", PREPROCESS_ONLY, short.as_uri(), str(max_pixels)]
            inputs[f"{label}_{before_pages}_pages"] = _measured(repo, script, timeout_s)
        if pages != before_pages:  # else the loop above measured it
            script = ["-c", PREPROCESS_ONLY, pdf.as_uri(), str(max_pixels)]
            inputs[f"after_{pages}_pages"] = _measured(repos["after"], script, timeout_s)
    job["ratio"] = round(job["before"]["peak_rss_bytes"] / job["after"]["peak_rss_bytes"], 2)
    before, after = inputs[f"before_{before_pages}_pages"], inputs[f"after_{before_pages}_pages"]
    inputs["ratio_at_before_pages"] = round(before["peak_rss_bytes"] / after["peak_rss_bytes"], 2)
    per_page = (before["peak_rss_bytes"] - after["peak_rss_bytes"]) / before_pages
    inputs["before_per_page_bytes"] = round(per_page)
    inputs[f"before_{pages}_pages_extrapolated_bytes"] = round(after["peak_rss_bytes"] + per_page * pages)
    # Bounded: the long document's peak over the short one's, both now.
    inputs["after_long_over_short"] = round(
        inputs[f"after_{pages}_pages"]["peak_rss_bytes"] / after["peak_rss_bytes"], 3
    )
    claim = f"one {pages}-page PDF, job process tree: peak RSS before / after streaming windows"
    bounded = (
        f"full-size inputs, now: peak RSS of {before_pages} pages / of {pages} pages (1.0: independent of length)"
    )
    return {
        "params": {
            "pages": pages,
            "before_pages": before_pages,
            "backend": "local",
            "job_model": "tiny (test model; its processor resizes pages to its own budget)",
            "inputs_model": "colqwen2.5-v0.2 processor (random_weights: built offline, no forward pass)",
            "max_pixels": max_pixels,
            "max_pixels_of": REFERENCE_MODEL,
            "before": before_ref,
            "sample_seconds": SAMPLE_SECONDS,
        },
        "results": {"job": job, "full_size_inputs": inputs},
        "checks": [
            check("memory_job_before_over_after", claim, job["ratio"], 1.5),
            check("memory_bounded_per_document", bounded, round(1 / inputs["after_long_over_short"], 3), 0.9),
        ],
    }
