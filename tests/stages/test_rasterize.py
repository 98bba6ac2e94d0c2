"""Rasterize: budgeted renders that match poppler, text layers, and bad files as error rows."""

import io
import subprocess

import pytest
from pdf2image import convert_from_path
from PIL import Image

from pipelines import ids
from pipelines.stages.rasterize import RasterizeStage, target_size

BUDGET = 200_704


def ok_rows(rows):
    return [r for r in rows if r.get("error_type") is None]


def test_target_size_fills_the_budget_and_keeps_aspect():
    width, height = target_size(612, 792, BUDGET, max_dpi=1000)
    assert width * height <= BUDGET
    assert (width + 1) * (height + 1) > BUDGET
    assert abs(width / height - 612 / 792) < 0.01


def test_target_size_never_exceeds_the_dpi_cap():
    assert target_size(72, 36, BUDGET, max_dpi=144) == (144, 72)  # a 1x0.5 inch label


def test_pages_render_at_the_budget_with_text_and_stable_ids(shared_corpus):
    uri = (shared_corpus / "004-pdflatex-4-pages_pdflatex-4-pages.pdf").as_uri()
    rows = RasterizeStage(max_pixels=BUDGET).rasterize_document(uri)
    assert [r["page_number"] for r in rows] == [1, 2, 3, 4]
    data = (shared_corpus / "004-pdflatex-4-pages_pdflatex-4-pages.pdf").read_bytes()
    for row in rows:
        assert row["error_type"] is None if "error_type" in row else True
        image = Image.open(io.BytesIO(row["image"]))
        assert image.format == "JPEG"  # the default between stages (rasterize.image_format)
        assert image.size == (row["image_width"], row["image_height"])
        assert image.width * image.height <= BUDGET
        assert row["doc_id"] == ids.doc_id_from_bytes(data)
        assert row["page_id"] == ids.page_id(row["doc_id"], row["page_number"])
        assert row["page_count"] == 4
        assert (row["width_pt"], row["height_pt"]) == pytest.approx((595.276, 841.89))
    expected = subprocess.run(
        ["pdftotext", "-f", "1", "-l", "1", str(shared_corpus / "004-pdflatex-4-pages_pdflatex-4-pages.pdf"), "-"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()
    assert rows[0]["text"] == expected and "text" in expected


def test_windowing_does_not_change_the_output(shared_corpus):
    uri = (shared_corpus / "004-pdflatex-4-pages_pdflatex-4-pages.pdf").as_uri()
    whole = RasterizeStage(max_pixels=BUDGET, window_pages=16).rasterize_document(uri)
    windowed = RasterizeStage(max_pixels=BUDGET, window_pages=3).rasterize_document(uri)
    assert whole == windowed


def test_rotated_pages_render_landscape(shared_corpus):
    rows = ok_rows(
        RasterizeStage(max_pixels=BUDGET).rasterize_document(
            (shared_corpus / "015-arabic_habibi-rotated.pdf").as_uri()
        )
    )
    assert rows and all(r["image_width"] > r["image_height"] for r in rows[:1])
    for row in rows:  # pages turned by /Rotate 90/270 keep their aspect ratio (not stretched)
        assert Image.open(io.BytesIO(row["image"])).size == (row["image_width"], row["image_height"])
        aspect = row["image_width"] / row["image_height"]
        assert aspect == pytest.approx(row["width_pt"] / row["height_pt"], rel=0.01)


def test_png_pages_are_lossless_renders(shared_corpus):
    uri = (shared_corpus / "001-trivial_minimal-document.pdf").as_uri()
    png = RasterizeStage(max_pixels=BUDGET, image_format="png", renderer="poppler").rasterize_document(uri)[0]
    image = Image.open(io.BytesIO(png["image"]))
    assert image.format == "PNG"
    path = (shared_corpus / "001-trivial_minimal-document.pdf").as_posix()
    [direct] = convert_from_path(path, size=image.size, use_cropbox=True)
    assert image.convert("RGB").tobytes() == direct.convert("RGB").tobytes()  # exactly poppler's pixels


@pytest.mark.parametrize(
    ("make", "error_type", "reason"),
    [
        (
            lambda c: (c / "005-libreoffice-writer-password_libreoffice-writer-password.pdf").read_bytes(),
            "encrypted",
            "password",
        ),
        (lambda c: b"", "empty_file", "empty"),
        (lambda c: b"PK\x03\x04 this is a zip archive, not a PDF" * 10, "not_pdf", "%PDF-"),
        (lambda c: (c / "004-pdflatex-4-pages_pdflatex-4-pages.pdf").read_bytes()[:400], "corrupt", "poppler"),
        (lambda c: (c / "017-unreadable-meta-data_unreadablemetadata.pdf").read_bytes(), "corrupt", "poppler"),
    ],
)
def test_bad_files_become_one_error_row_with_a_reason(shared_corpus, tmp_path, make, error_type, reason):
    path = tmp_path / "input.pdf"
    path.write_bytes(make(shared_corpus))
    rows = RasterizeStage(max_pixels=BUDGET).rasterize_document(path.as_uri())
    assert len(rows) == 1
    assert rows[0]["error_type"] == error_type
    assert rows[0]["error_stage"] == "rasterize"
    assert reason in rows[0]["error_message"]
    assert rows[0]["source_uri"] == path.as_uri()


def test_oversized_files_are_refused_before_reading(shared_corpus):
    rows = RasterizeStage(max_pixels=BUDGET, max_file_bytes=100).rasterize_document(
        (shared_corpus / "001-trivial_minimal-document.pdf").as_uri()
    )
    assert rows[0]["error_type"] == "too_large"


def test_missing_file_is_a_read_error(tmp_path):
    rows = RasterizeStage(max_pixels=BUDGET).rasterize_document((tmp_path / "gone.pdf").as_uri())
    assert rows[0]["error_type"] == "read_failed"


def test_budget_above_hard_cap_is_a_config_error():
    with pytest.raises(ValueError, match="hard_max_pixels"):
        RasterizeStage(max_pixels=5_000_000, hard_max_pixels=4_000_000)


def test_title_comes_from_metadata_or_the_file_name_and_thumbnails_are_small_jpegs(shared_corpus):
    titled = RasterizeStage(max_pixels=BUDGET).rasterize_document(
        (shared_corpus / "011-google-doc-document_google-doc-document.pdf").as_uri()
    )
    assert {r["title"] for r in titled} == {"PDF Example Document"}
    untitled = RasterizeStage(max_pixels=BUDGET, thumbnail_px=96).rasterize_document(
        (shared_corpus / "004-pdflatex-4-pages_pdflatex-4-pages.pdf").as_uri()
    )
    assert untitled[0]["title"] == "004-pdflatex-4-pages_pdflatex-4-pages"
    thumbnail = Image.open(io.BytesIO(untitled[0]["thumbnail"]))
    page = Image.open(io.BytesIO(untitled[0]["image"]))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) == 96
    assert abs(thumbnail.width / thumbnail.height - page.width / page.height) < 0.03
    none = RasterizeStage(max_pixels=BUDGET, thumbnail_px=0).rasterize_document(
        (shared_corpus / "004-pdflatex-4-pages_pdflatex-4-pages.pdf").as_uri()
    )
    assert none[0].get("thumbnail") is None
