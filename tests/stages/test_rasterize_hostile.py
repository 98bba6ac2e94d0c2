"""Rasterize against hostile files: false rejections indexed through the fallback with real content, bombs
and floods ending as error rows within their time limits, one reused pdfium worker, the renderer recorded."""

import io
import os
import pickle
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import psutil
import pytest
from PIL import Image

from pipelines.render import repair
from pipelines.stages.rasterize import AUTO_PRIMARY, RasterizeStage
from pipelines.testing import hostile

BUDGET = 200_704


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    hostile.write_hostile_corpus(out, long_pages=5)
    return out


@pytest.fixture(scope="module")
def stage():
    stage = RasterizeStage(max_pixels=BUDGET, timeout_s=3, text_timeout_s=1)
    yield stage
    stage.close()


def dark_fraction(row) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(row["image"])).convert("L"))
    return float((pixels < 128).mean())


@pytest.mark.parametrize("name", hostile.FALSE_REJECTIONS)
def test_false_rejections_are_indexed_with_real_content(stage, hostile_dir, name):
    rows = stage.rasterize_document((hostile_dir / name).as_uri())
    assert [(r["page_number"], r.get("error_type")) for r in rows] == [(1, None)], rows
    [row] = rows
    assert hostile.MARKER_TEXT in row["text"]  # the text layer is read
    assert dark_fraction(row) > 0.05  # and the blue box is drawn: the page is not blank
    assert row["renderer"] in ("poppler", "pdfium")
    assert row["image_width"] * row["image_height"] <= BUDGET


def test_empty_cropbox_falls_back_to_the_mediabox_with_poppler_too(hostile_dir):
    rows = RasterizeStage(max_pixels=BUDGET, renderer="poppler").rasterize_document(
        (hostile_dir / "empty_cropbox.pdf").as_uri()
    )
    assert rows[0].get("error_type") is None and rows[0]["renderer"] == "poppler"
    assert (rows[0]["width_pt"], rows[0]["height_pt"]) == (612, 792)
    assert dark_fraction(rows[0]) > 0.05


def test_only_poppler_rejects_what_pdfium_reads_and_auto_falls_back(hostile_dir):
    poppler = RasterizeStage(max_pixels=BUDGET, renderer="poppler")
    rows = poppler.rasterize_document((hostile_dir / "count_overflow.pdf").as_uri())
    assert rows[0]["error_type"] == "corrupt" and "Invalid page count" in rows[0]["error_message"]
    pdfium = RasterizeStage(max_pixels=BUDGET, renderer="pdfium")
    try:
        rows = pdfium.rasterize_document((hostile_dir / "binary_header.pdf").as_uri())
        assert rows[0]["error_type"] == "not_pdf"  # pdfium alone cannot read it; auto reads it with poppler
    finally:
        pdfium.close()


def test_zero_pages_is_no_pages(stage, hostile_dir):
    rows = stage.rasterize_document((hostile_dir / "zero_pages.pdf").as_uri())
    assert [r["error_type"] for r in rows] == ["no_pages"]


@pytest.mark.parametrize("name", ["render_bomb.pdf", "flood.pdf", "image_bomb.pdf"])
def test_bombs_and_floods_end_within_their_time_limit(stage, hostile_dir, name):
    started = time.monotonic()
    rows = stage.rasterize_document((hostile_dir / name).as_uri())
    elapsed = time.monotonic() - started
    # at most: the text layer (1 s, then no other reader), the render (3 s), and a worker restart
    assert elapsed < 15, elapsed
    assert len(rows) == 1
    outcome = rows[0].get("error_type") or ""
    assert outcome in hostile.EXPECTED[name], rows[0].get("error_message")
    if outcome == "timeout":
        assert "timeout_s" in rows[0]["error_message"]


def test_one_pdfium_worker_serves_every_document_and_restarts_after_a_kill(shared_corpus, hostile_dir):
    # A limit no other test uses: this process's worker for it is this test's alone.
    stage = RasterizeStage(
        max_pixels=BUDGET, renderer="pdfium", timeout_s=2, extract_text=False, pdfium_memory_limit_mb=1000
    )
    try:
        for name in ["001-trivial_minimal-document.pdf", "004-pdflatex-4-pages_pdflatex-4-pages.pdf"]:
            rows = stage.rasterize_document((shared_corpus / name).as_uri())
            assert rows and all(r.get("error_type") is None and r["renderer"] == "pdfium" for r in rows)
        starts, pid = stage._pdfium.starts, stage._pdfium.pid
        # Another stage object in this process (as Ray Data unpickles one per task) reuses the running worker.
        other = pickle.loads(pickle.dumps(stage))
        rows = other.rasterize_document((shared_corpus / "001-trivial_minimal-document.pdf").as_uri())
        assert rows[0].get("error_type") is None
        assert other._pdfium is stage._pdfium and stage._pdfium.starts == starts and stage._pdfium.pid == pid
        rows = stage.rasterize_document((hostile_dir / "render_bomb.pdf").as_uri())
        assert rows[0]["error_type"] in ("timeout", "memory_limit")  # killed either way
        rows = stage.rasterize_document((shared_corpus / "001-trivial_minimal-document.pdf").as_uri())
        assert rows[0].get("error_type") is None
        assert stage._pdfium.starts == starts + 1 and stage._pdfium.pid != pid
    finally:
        stage.close()


def test_a_renderer_over_its_memory_limit_is_a_memory_limit_row(hostile_dir):
    """A real renderer, not a fake child: the pdfium worker builds the render bomb's display list (~300 bytes a
    path) until RLIMIT_AS stops it; the page becomes a ``memory_limit`` row well before its timeout, and the
    next document gets a fresh worker."""
    stage = RasterizeStage(max_pixels=BUDGET, renderer="pdfium", timeout_s=60, pdfium_memory_limit_mb=192)
    try:
        started = time.monotonic()
        [row] = stage.rasterize_document((hostile_dir / "render_bomb.pdf").as_uri())
        assert time.monotonic() - started < 30  # the memory bound, not the 60 s timeout, ended it
        assert row["error_type"] == "memory_limit" and row["page_number"] == 1
        assert "memory limit of 192 MiB" in row["error_message"], row["error_message"]
        rows = stage.rasterize_document((hostile_dir / "count_overflow.pdf").as_uri())
        assert rows[0].get("error_type") is None and hostile.MARKER_TEXT in rows[0]["text"]
    finally:
        stage.close()


def test_each_page_records_its_renderer_and_both_match_the_budget(shared_corpus):
    uri = (shared_corpus / "015-arabic_habibi-rotated.pdf").as_uri()
    by_renderer = {}
    for renderer in ("poppler", "pdfium"):
        stage = RasterizeStage(max_pixels=BUDGET, renderer=renderer)
        by_renderer[renderer] = stage.rasterize_document(uri)
        stage.close()
        assert {r["renderer"] for r in by_renderer[renderer]} == {renderer}
    for a, b in zip(by_renderer["poppler"], by_renderer["pdfium"], strict=True):
        assert a["width_pt"] == pytest.approx(b["width_pt"], abs=0.01)
        assert abs(a["image_width"] - b["image_width"]) <= 1 and abs(a["image_height"] - b["image_height"]) <= 1
        assert b["text"]  # renderer=pdfium uses no poppler at all: pdfium's own text layer
    default = RasterizeStage(max_pixels=BUDGET)
    rows = default.rasterize_document(uri)
    default.close()
    assert {r["renderer"] for r in rows} == {AUTO_PRIMARY}
    assert [r["text"] for r in rows] == [r["text"] for r in by_renderer["poppler"]]  # auto: pdftotext's text


def test_repair_points_root_at_the_catalog_only_when_it_misses_it():
    broken = hostile.false_rejections()["root_misdirected.pdf"]
    fixed = repair.repair_root(broken)
    assert fixed is not None and b"/Root 1 0 R" in fixed and len(fixed) == len(broken)
    assert repair.repair_root(fixed) is None
    assert repair.repair_root(b"not a pdf") is None


def test_unknown_renderer_is_a_config_error():
    with pytest.raises(ValueError, match="renderer"):
        RasterizeStage(max_pixels=BUDGET, renderer="mupdf")


def test_a_pickled_stage_carries_no_worker(shared_corpus):
    stage = RasterizeStage(max_pixels=BUDGET, renderer="pdfium")
    stage.rasterize_document((shared_corpus / "001-trivial_minimal-document.pdf").as_uri())
    copy = pickle.loads(pickle.dumps(stage))
    assert copy._pdfium is None and stage._pdfium is not None
    assert copy == stage
    stage.close()


@pytest.mark.parametrize(("value", "size"), [(0, 3 * 2**20 + 123), (0x80, 2**20), (255, 17)])
def test_constant_flate_bombs_decompress_to_exactly_their_bytes(value, size):
    data = hostile.constant_flate(value, size)
    assert zlib.decompress(data) == bytes([value]) * size  # zlib checks the Adler-32 trailer too
    assert len(data) < size / 500 + 64


def test_a_killed_job_leaves_no_pdfium_worker_behind_even_mid_render(hostile_dir):
    """The worker notices its parent's death within a second, though it is busy in the render bomb (a closed
    stdin would only be seen between requests)."""
    code = (
        "import sys; from pathlib import Path; from pipelines.render.pdfium import PdfiumWorker\n"
        "w = PdfiumWorker(4 * 2**30); p = Path(sys.argv[1]); info = w.open(p, 60); print(w.pid, flush=True)\n"
        "w.render(p, 1, 1, (100, 100), info.sizes[0], 600)\n"
    )
    job = subprocess.Popen(
        [sys.executable, "-c", code, str(hostile_dir / "render_bomb.pdf")], stdout=subprocess.PIPE, text=True
    )
    worker = int(job.stdout.readline())
    time.sleep(0.5)  # the worker is inside the page now
    job.kill()
    job.wait()
    deadline = time.monotonic() + 10  # at 4 GiB the bomb's memory bound would take far longer than this
    while time.monotonic() < deadline and psutil.pid_exists(worker):
        time.sleep(0.1)
    alive = psutil.pid_exists(worker) and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive
