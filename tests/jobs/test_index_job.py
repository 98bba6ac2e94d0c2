"""The index job on Ray with the tiny TEST model over the shared corpus (31 real-world PDFs and a
LICENSE) plus generated hostile files: every file is accounted for, each bad one with its reason,
a render that never ends is killed at its timeout (and retried once, then left alone), and the exit status
follows max_error_rate.

The job runs in-process on the session's Ray instance (``jobs.index.run`` returns the exit status
the CLI exits with), its reruns with the in-process backend; the CLI process itself is exercised by the
crash-resume tests.
"""

import json
import shutil
from pathlib import Path

from jobs.index import run
from pipelines import index
from pipelines.testing import hostile
from tests.helpers import index_config

LONG_PAGES = 20  # three windows of rasterize.window_pages=8
TRANSIENT = {"timeout", "memory_limit"}  # bounded failures a rerun retries (max_retries times)
#: Bounds and budget of every run. The render bomb ends at the pdfium worker's memory limit within a second or two
#: at 256 MiB (1 GiB by default), then at poppler's timeout. A quarter of the tiny model's pixel budget (64 tokens a
#: page) makes rendering, preprocessing and embedding the ~190 pages cheaper; what this test checks (accounting,
#: reasons, bounds, retries) does not depend on it. Neither is part of the config hash, so reruns may differ.
RASTERIZE = (
    "rasterize.timeout_s=10",
    "rasterize.pdfium_memory_limit_mb=256",
    "rasterize.max_pixels=50176",
    "rasterize.window_pages=8",
)
#: The reruns only retry the bomb (the rest is unchanged): in-process (the retry bookkeeping is the ledger's, the
#: same for both backends; this spares two Ray pipeline start-ups) and with a tighter timeout (nothing else renders).
RERUN = ("backend=local", "rasterize.timeout_s=3", "max_error_rate=0.5")


def run_job(source: Path, out: Path, capsys, *overrides: str) -> tuple[int, str]:
    """(exit status, what the job wrote to stderr)."""
    status = run(index_config(f"source.location={source}", f"output.location={out}", *RASTERIZE, *overrides))
    return status, capsys.readouterr().err


def test_shared_corpus_and_hostile_files_all_accounted_with_reasons(shared_corpus, tmp_path, ray_cluster, capsys):
    source = tmp_path / "source"
    shutil.copytree(shared_corpus, source / "shared")
    hostile.write_hostile_corpus(source / "hostile", long_pages=LONG_PAGES)
    out = tmp_path / "index"
    # More than 10 % of the files are broken: the default max_error_rate makes the run exit 4, after
    # finishing and recording everything.
    status, stderr = run_job(source, out, capsys)
    assert status == 4, stderr[-4000:]
    assert "over max_error_rate=0.1" in stderr
    report = json.loads((out / "run_report.json").read_text())

    assert report["files_listed"] == 31 + len(hostile.EXPECTED)
    assert [Path(u).name for u in report["files_skipped_by_suffix"]] == ["LICENSE"]
    assert report["files_unaccounted"] == []
    assert report["files_indexed"] + report["files_failed_entirely"] == report["files_listed"]
    errors = {Path(e["source_uri"]).name: e for e in report["errors"]}
    assert errors["005-libreoffice-writer-password_libreoffice-writer-password.pdf"]["type"] == "encrypted"
    for name, allowed in hostile.EXPECTED.items():
        outcome = errors[name]["type"] if name in errors and errors[name]["status"] == "failed" else ""
        assert outcome in allowed, (name, errors.get(name))
    bomb = errors["render_bomb.pdf"]  # killed at its time or memory bound, whichever it reaches first
    assert "timeout_s" in bomb["message"] or "memory" in bomb["message"], bomb
    pages = index.IndexLocation(str(out)).read_pages(["source_uri", "page_number", "image_width", "image_height"])
    rows = pages.to_pylist()
    long_doc = sorted(r["page_number"] for r in rows if r["source_uri"].endswith("long_document.pdf"))
    assert long_doc == list(range(1, LONG_PAGES + 1))  # rendered window by window, every page kept
    assert max(r["image_width"] * r["image_height"] for r in rows) <= 50_176  # the pixel budget, the huge page too
    shared_indexed = {Path(u).name for u in pages["source_uri"].to_pylist() if "/shared/" in u}
    assert len(shared_indexed) >= 29  # everything poppler can read is indexed

    # A rerun with a looser threshold exits 0; only the files that hit a time or memory bound are tried again
    # (those failures are transient), and they end at their bounds again.
    status, stderr = run_job(source, out, capsys, *RERUN)
    assert status == 0, stderr[-4000:]
    rerun = json.loads((out / "run_report.json").read_text())
    assert rerun["plan"]["to_process"] == sum(1 for e in report["errors"] if e["type"] in TRANSIENT)
    assert rerun["files_unaccounted"] == [] and rerun["files_listed"] == report["files_listed"]

    # Retries end: after max_retries (default 1) retries of the same file version a timeout is permanent, and a
    # third run skips it without rendering, saying so in its plan.
    bounded = {Path(e["source_uri"]).name for e in rerun["errors"] if e["type"] in TRANSIENT}
    assert "render_bomb.pdf" in bounded
    timed_out = len(bounded)
    status, stderr = run_job(source, out, capsys, *RERUN)
    assert status == 0, stderr[-4000:]
    third = json.loads((out / "run_report.json").read_text())
    assert third["plan"]["to_process"] == 0
    assert third["plan"]["retry_exhausted"] == timed_out
    assert third["files_unaccounted"] == []

    # The false rejections of earlier versions are indexed with their text layer.
    texts = {
        Path(r["source_uri"]).name: r["text"]
        for r in index.IndexLocation(str(out)).read_pages(["source_uri", "text", "renderer"]).to_pylist()
    }
    for name in hostile.FALSE_REJECTIONS:
        assert hostile.MARKER_TEXT in texts[name], name
