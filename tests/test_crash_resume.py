"""Kill the index job (SIGKILL, no clean-up of any kind) at several points, rerun it, and check the
index holds every page exactly once, nothing is lost, and finished work was not redone.

Kill points: after some blocks are written (mid-document), between the ledger rows and the commit
marker, in the middle of compaction (named failpoints, ``pipelines.testing.failpoints``). Killed drivers and Ray
workers on every backend and storage are cells of the fault matrix (tests/test_fault_matrix.py).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from pipelines import index, schema
from pipelines.index import ledger
from pipelines.testing.corpus import EXPECTED_PAGE_COUNTS
from tests.helpers import start_cli

TOTAL_PAGES = sum(EXPECTED_PAGE_COUNTS.values())
RAY = ["backend=ray", "ray.num_cpus=2"]


@pytest.fixture
def source(sample_corpus, tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for pdf in sample_corpus.glob("*.pdf"):
        shutil.copy(pdf, src / pdf.name)
    return src


def job(source: Path, out: Path, *overrides: str, failpoints: str = "", once_dir: Path | None = None, **popen):
    """Start the index CLI (a process, because these tests kill it)."""
    env = {"PIPELINES_FAILPOINTS": failpoints}
    if once_dir is not None:
        env["PIPELINES_FAILPOINTS_ONCE_DIR"] = str(once_dir)
    args = ["model=tiny", f"source.location={source}", f"output.location={out}"]
    args += ["rasterize.window_pages=2", *overrides]  # documents span several blocks
    return start_cli("jobs.index", *args, env=env, **popen)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def assert_complete_and_exactly_once(out: Path) -> dict:
    location = index.IndexLocation(str(out))
    pages = location.read_pages(["page_id", "source_uri"])
    page_ids = pages.column("page_id").to_pylist()
    assert len(page_ids) == len(set(page_ids)) == TOTAL_PAGES
    per_file = {}
    for uri in pages.column("source_uri").to_pylist():
        per_file[Path(uri).name] = per_file.get(Path(uri).name, 0) + 1
    assert per_file == EXPECTED_PAGE_COUNTS
    # After the final run's compaction the files themselves hold each page once.
    # (Parts compaction retired stay readable for output.compaction_grace_s; they are not part of the index.)
    live = location.iter_part_files("pages", schema.PAGES_TABLE_SCHEMA, ["page_id"], skip=location.ledger.retired())
    raw = [p for _, t in live for p in t[0].to_pylist()]
    assert sorted(raw) == sorted(page_ids)
    report = json.loads((out / "run_report.json").read_text())
    assert report["files_unaccounted"] == [] and report["files_indexed"] == len(EXPECTED_PAGE_COUNTS)
    assert ledger.Ledger(location).pending_runs() == []
    return report


def pages_of_run(out: Path, run_id: str) -> int:
    location = index.IndexLocation(str(out))
    rows = [r for r in ledger.Ledger(location).state().values() if r["commit_run"] == run_id]
    return sum(r["pages"] for r in rows)


@pytest.mark.slow
def test_killed_mid_write_then_mid_compaction_resumes_without_loss_or_duplicates(source, tmp_path, model_cache):
    out = tmp_path / "index"
    code, stderr = finish(job(source, out, "backend=local", failpoints="after_write_block:3"))
    assert code == -signal.SIGKILL, stderr[-2000:]
    location = index.IndexLocation(str(out))
    [killed_run] = ledger.Ledger(location).pending_runs()
    assert location.read_pages(["page_id"]).num_rows == 0  # nothing is visible before a commit
    written = sum(t.num_rows for t in location.iter_parts("pages", schema.PAGES_TABLE_SCHEMA, ["page_id"]))
    assert 0 < written < TOTAL_PAGES

    code, stderr = finish(job(source, out, "backend=local", failpoints="compact_part_done:1"))
    assert code == -signal.SIGKILL, stderr[-2000:]
    kept = pages_of_run(out, killed_run)
    assert 0 < kept <= written  # documents the killed run finished were committed, not redone

    code, stderr = finish(job(source, out, "backend=local"))
    assert code == 0, stderr[-2000:]
    report = assert_complete_and_exactly_once(out)
    assert report["pages_embedded"] == 0 and report["files_this_run"]["unchanged"] == len(EXPECTED_PAGE_COUNTS)
    assert pages_of_run(out, killed_run) == kept


@pytest.mark.slow
def test_killed_between_ledger_rows_and_commit_marker(source, tmp_path, model_cache):
    out = tmp_path / "index"
    code, stderr = finish(job(source, out, "backend=local", failpoints="commit_between_ledger_and_marker"))
    assert code == -signal.SIGKILL, stderr[-2000:]
    code, stderr = finish(job(source, out, "backend=local"))
    assert code == 0, stderr[-2000:]
    report = assert_complete_and_exactly_once(out)
    assert report["pages_embedded"] == 0  # the rows were already in the ledger; the commit is completed
    assert len(report["recovered_runs"]) == 1
