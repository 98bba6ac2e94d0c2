"""Per-document isolation end to end: the index job over a few hundred malformed-but-openable PDFs
(:mod:`tests.fuzz_pdfs`) and over the absurd page box that once stopped every run.

In-process (``jobs.index.run`` returns the exit status the CLI exits with), ``backend=local`` and the tiny TEST
model at a quarter of its pixel budget (64 tokens a page): what is checked (no file stops the run, each is
accounted for with a reason, the rerun has nothing new to do) does not depend on either.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from jobs.index import run
from pipelines import index
from pipelines.testing.hostile import absurd_box
from tests.fuzz_pdfs import write_fuzz_corpus
from tests.helpers import index_config

#: Small budget, tight bounds: nothing in the corpus needs more, and a file that does is an error row anyway.
SETTINGS = (
    "backend=local",
    "rasterize.max_pixels=50176",
    "rasterize.timeout_s=10",
    "rasterize.text_timeout_s=5",
    "rasterize.pdfium_memory_limit_mb=256",
    "pooling=none",
)


def run_job(source: Path, out: Path, capsys, *overrides: str) -> tuple[int, dict, str]:
    """(exit status, the run report, what the job wrote to stderr)."""
    status = run(index_config(f"source.location={source}", f"output.location={out}", *SETTINGS, *overrides))
    return status, json.loads((out / "run_report.json").read_text()), capsys.readouterr().err


def test_no_fuzzed_pdf_stops_the_run_each_is_accounted_and_the_rerun_has_nothing_new(tmp_path, model_cache, capsys):
    source, out = tmp_path / "fuzz", tmp_path / "index"
    files = write_fuzz_corpus(source)
    assert len(files) >= 300
    started = time.monotonic()
    # Many of these files cannot be indexed at all: only the accounting is under test, not the error rate.
    status, report, stderr = run_job(source, out, capsys, "max_error_rate=1.0")
    elapsed = time.monotonic() - started
    assert status == 0, stderr[-4000:]
    assert report["files_listed"] == len(files) and report["files_unaccounted"] == []
    assert report["files_this_run"]["indexed"] + report["files_this_run"]["failed"] == len(files)
    assert report["files_indexed"] > len(files) // 2  # most of them still open and render

    location = index.IndexLocation(str(out))
    state = location.ledger.state()
    assert sorted(Path(uri).name for uri in state) == sorted(f.name for f in files)
    for row in state.values():
        if row["status"] == "failed" or row["page_errors"]:
            assert row["error_type"] and len(row["error_message"] or "") > 10, row
    errors = location.read_errors().to_pylist()
    assert all(e["error_type"] and e["error_stage"] and e["error_message"] for e in errors)
    by_type = Counter(e["error_type"] for e in errors)
    statuses = Counter(row["status"] for row in state.values())
    with capsys.disabled():
        print(f"\nfuzz: {len(files)} files in {elapsed:.1f} s: {dict(statuses)}; error rows by type: {dict(by_type)}")

    # The rerun: every file is unchanged except those whose failure is retryable (a time or memory bound a
    # loaded machine may hit), which are tried once more (source.max_retries=1).
    retryable = sorted(uri for uri, row in state.items() if row["retry"])
    status, rerun, stderr = run_job(source, out, capsys, "max_error_rate=1.0")
    assert status == 0, stderr[-4000:]
    assert rerun["plan"]["to_process"] == len(retryable)
    assert rerun["files_this_run"]["unchanged"] == len(files) - len(retryable)
    assert rerun["files_unaccounted"] == []


def test_an_absurd_page_box_is_an_error_row_and_the_run_exits_0(tmp_path, model_cache, capsys):
    source, out = tmp_path / "in", tmp_path / "index"
    source.mkdir()
    (source / "absurd.pdf").write_bytes(absurd_box())
    status, report, stderr = run_job(source, out, capsys)
    assert status == 0, stderr[-4000:]
    assert report["files_indexed"] == 1 and report["files_unaccounted"] == []
    [error] = report["errors"]
    assert error["status"] == "indexed" and error["page_errors"] == 1 and error["type"] == "invalid_page_size"
    assert "aspect ratio" in error["message"]
    pages = index.IndexLocation(str(out)).read_pages(["page_number", "image_width", "image_height"]).to_pylist()
    assert [p["page_number"] for p in pages] == [1]
