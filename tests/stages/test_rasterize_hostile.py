"""Rasterize against hostile files: false rejections indexed through the fallback with real content, bombs
and floods ending as error rows within their time limits, one reused pdfium worker, the renderer recorded."""

import io
import time

import numpy as np
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
    stage = RasterizeStage(max_pixels=BUDGET, renderer="pdfium", timeout_s=2, extract_text=False)
    try:
        for name in ["001-trivial_minimal-document.pdf", "004-pdflatex-4-pages_pdflatex-4-pages.pdf"]:
            rows = stage.rasterize_document((shared_corpus / name).as_uri())
            assert rows and all(r.get("error_type") is None and r["renderer"] == "pdfium" for r in rows)
        assert stage._pdfium.starts == 1
        pid = stage._pdfium.pid
        rows = stage.rasterize_document((hostile_dir / "render_bomb.pdf").as_uri())
        assert rows[0]["error_type"] == "timeout"
        rows = stage.rasterize_document((shared_corpus / "001-trivial_minimal-document.pdf").as_uri())
        assert rows[0].get("error_type") is None
        assert stage._pdfium.starts == 2 and stage._pdfium.pid != pid
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
    import pickle

    stage = RasterizeStage(max_pixels=BUDGET, renderer="pdfium")
    stage.rasterize_document((shared_corpus / "001-trivial_minimal-document.pdf").as_uri())
    copy = pickle.loads(pickle.dumps(stage))
    assert copy._pdfium is None and stage._pdfium is not None
    assert copy == stage
    stage.close()
