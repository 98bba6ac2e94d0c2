"""Per-document isolation in the stage contract (``Stage.__call__``) and rendered sizes every later step accepts.

Any exception a stage raises while processing one document's data becomes error rows for that document (fan-out
stages: the pages not yielded yet) or that page (row-for-row stages), which the ledger's commit counts as the
document complete; failures of the run (out of memory or disk, a lost cluster, our own inconsistencies) raise.
"""

from __future__ import annotations

import errno
import io as bytes_io
import sys

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch
from PIL import Image
from ray.exceptions import RaySystemError

from pipelines import ids, index, io, schema
from pipelines.backends.base import RayConfig, StagePlan, StageResources
from pipelines.backends.ray_data import RayDataBackend
from pipelines.index.writer import PartWriter
from pipelines.models.registry import ModelConfig
from pipelines.render import MAX_ASPECT_RATIO, MAX_IMAGE_SIDE, DocumentError, PageSize, fits, target_size
from pipelines.stages.base import PipelineFailure, Stage, fails_run
from pipelines.stages.compress import binarize
from pipelines.stages.preprocess import PreprocessStage
from pipelines.stages.rasterize import RasterizeStage
from pipelines.testing.hostile import absurd_box
from tests.fuzz_pdfs import page_pdf

PAGES = 5  # pages of every document of the fan-out test stage, yielded two at a time


class _Pages(Stage):
    """Fan-out: five pages per document, in windows of two; raises after the first window when the file says
    ``bad``, before any page when it says ``early``."""

    name = "pages"
    changes_row_count = True

    def process_stream(self, batch: pa.Table):
        for uri in batch.column("source_uri").to_pylist():
            data = io.read_bytes(uri)
            if b"early" in data:
                raise KeyError("no such thing")
            doc_id = ids.doc_id_from_bytes(data)
            for start in range(1, PAGES + 1, 2):
                if start > 1 and b"bad" in data:
                    _ = 1 / 0
                rows = [_page(uri, doc_id, n) for n in range(start, min(start + 2, PAGES + 1))]
                yield schema.rows_to_table(rows)


def _page(uri: str, doc_id: str, number: int) -> dict:
    vectors = np.random.default_rng(number).normal(size=(3, 128)).astype(np.float16)
    return {
        "page_id": ids.page_id(doc_id, number), "doc_id": doc_id, "source_uri": uri, "page_number": number,
        "page_count": PAGES, "title": uri.rsplit("/", 1)[1], "n_vectors_raw": 3, "n_vectors": 3,
        "embedding": vectors.tobytes(), "binary": binarize(vectors.astype(np.float32)).tobytes(), "image": b"pixels",
    }  # fmt: skip


class _Rows(Stage):
    """Row for row: sets ``text``; raises on a batch with a row titled ``bad.pdf`` (or ``failure`` on any batch)."""

    name = "rows"

    def __init__(self, failure: BaseException | None = None):
        self.failure = failure

    def process_batch(self, batch: pa.Table) -> pa.Table:
        if self.failure is not None:
            raise self.failure
        if "bad.pdf" in batch.column("title").to_pylist():
            raise ValueError("this page cannot be processed")
        return schema.with_column(batch, "text", ["done"] * batch.num_rows)


def _sources(tmp_path, contents: dict[str, bytes]) -> list[io.SourceFile]:
    for name, data in contents.items():
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
    files, _ = io.list_inputs(str(tmp_path / "src"))
    return files


def test_a_fan_out_stage_that_raises_leaves_error_rows_that_complete_the_document_in_the_ledger(tmp_path):
    files = _sources(tmp_path, {"good.pdf": b"good", "bad.pdf": b"bad", "early.pdf": b"early"})
    by_name = {f.uri.rsplit("/", 1)[1]: f for f in files}
    location = index.IndexLocation(str(tmp_path / "index"))
    book = location.ledger
    book.check_config("tiny", "cfg", {})
    plan = book.plan(files, "run1")
    sources = pa.table({"source_uri": [f.uri for f in plan.process]})
    # One batch of all three documents: each is isolated from the others.
    out = pa.concat_tables(_Pages()(sources)).to_pylist()
    for row in out:
        PartWriter(location, "tiny", "cfg", "run1").write(schema.rows_to_table([row]))

    bad = [r for r in out if r["source_uri"] == by_name["bad.pdf"].uri]
    assert [(r["page_number"], r["error_type"]) for r in bad] == [
        (1, None), (2, None), (3, "pages_failed"), (4, "pages_failed"), (5, "pages_failed")
    ]  # fmt: skip
    failed = bad[2]
    assert failed["doc_id"] == bad[0]["doc_id"] and failed["page_count"] == PAGES and failed["error_stage"] == "pages"
    assert failed["error_message"].startswith("ZeroDivisionError: division by zero (at test_isolation.py:")
    [early] = [r for r in out if r["source_uri"] == by_name["early.pdf"].uri]
    assert (
        early["page_number"] is None and early["error_type"] == "pages_failed" and "KeyError" in early["error_message"]
    )
    assert [r["page_number"] for r in out if r["source_uri"] == by_name["good.pdf"].uri] == [1, 2, 3, 4, 5]

    summary = book.commit("run1")
    assert summary["incomplete"] == []  # every document is complete: nothing is left for a rerun to redo
    state = book.state()
    assert (state[by_name["good.pdf"].uri]["status"], state[by_name["good.pdf"].uri]["page_errors"]) == ("indexed", 0)
    row = state[by_name["bad.pdf"].uri]
    assert (row["status"], row["pages"], row["page_errors"], row["error_type"]) == ("indexed", 2, 3, "pages_failed")
    row = state[by_name["early.pdf"].uri]
    assert (row["status"], row["error_type"], row["retry"]) == ("failed", "pages_failed", False)
    assert book.plan(files, "run2").process == []  # the rerun has nothing new to do


def test_a_row_for_row_stage_redoes_a_failing_batch_row_by_row():
    rows = [
        {"source_uri": "file:///a.pdf", "doc_id": "d", "page_number": n, "page_count": 3, "title": title,
         "image": b"pixels", "model_inputs": b"inputs"}
        for n, title in enumerate(["ok.pdf", "bad.pdf", "ok.pdf"], start=1)
    ]  # fmt: skip
    out = _Rows().apply(schema.rows_to_table(rows)).to_pylist()
    assert [(r["page_number"], r["text"], r["error_type"]) for r in out] == [
        (1, "done", None), (2, None, "rows_failed"), (3, "done", None)
    ]  # fmt: skip
    failed = out[1]
    assert (failed["doc_id"], failed["page_count"], failed["error_stage"]) == ("d", 3, "rows")
    assert failed["image"] is None and failed["model_inputs"] is None  # an error row carries no payload
    assert failed["error_message"].startswith("ValueError: this page cannot be processed (at test_isolation.py:")


class _ActorRows(_Rows):
    name = "rows"
    stateful = True


def test_on_ray_a_failing_document_and_page_become_error_rows_in_tasks_and_actors(tmp_path, ray_cluster):
    """The same guard on Ray Data: the fan-out stage as tasks, the row-for-row stage on an actor, the real sink."""
    files = _sources(tmp_path, {"good.pdf": b"good", "bad.pdf": b"bad", "early.pdf": b"early"})
    location = index.IndexLocation(str(tmp_path / "index"))
    location.ledger.check_config("tiny", "cfg", {})
    location.ledger.plan(files, "run1")
    stages = StagePlan(
        [_Pages(), _ActorRows()],
        {"pages": StageResources(num_cpus=0.5, batch_size=2), "rows": StageResources(num_cpus=0.5, batch_size=4)},
    )
    sources = pa.table({"source_uri": [f.uri for f in files], "source_size": [f.size for f in files]})
    # This module is not importable on Ray's workers (pytest imports it by path): its stages travel by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        totals = RayDataBackend(RayConfig(progress_bars=False)).execute(
            sources, stages, PartWriter(location, "tiny", "cfg", "run1")
        )
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert (totals["pages"], totals["error_rows"]) == (5, 6)
    assert location.ledger.commit("run1")["incomplete"] == []
    rows = [*location.read_pages(["source_uri", "page_number"]).to_pylist(), *location.read_errors().to_pylist()]
    outcome = sorted((r["source_uri"].rsplit("/", 1)[1], r["page_number"] or 0, r.get("error_type")) for r in rows)
    assert outcome == [
        ("bad.pdf", 1, "rows_failed"), ("bad.pdf", 2, "rows_failed"),  # the actor stage's rows; the rest kept
        ("bad.pdf", 3, "pages_failed"), ("bad.pdf", 4, "pages_failed"), ("bad.pdf", 5, "pages_failed"),
        ("early.pdf", 0, "pages_failed"), *[("good.pdf", n, None) for n in range(1, 6)],
    ]  # fmt: skip


@pytest.mark.parametrize(
    "failure",
    [
        MemoryError(),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        PipelineFailure("the model produced 96-d vectors; the registry says 128"),
        RaySystemError("the cluster is gone"),
        torch.OutOfMemoryError("CUDA out of memory"),
        KeyboardInterrupt(),
    ],
    ids=lambda exc: type(exc).__name__ + (f"-{errno.errorcode[exc.errno]}" if getattr(exc, "errno", None) else ""),
)
def test_failures_of_the_run_are_never_turned_into_error_rows(failure):
    assert fails_run(failure)
    batch = schema.rows_to_table([{"source_uri": "file:///a.pdf", "page_number": 1, "title": "ok.pdf"}])
    with pytest.raises(type(failure)):
        _Rows(failure).apply(batch)


def test_data_errors_are_not_failures_of_the_run():
    for exc in (
        ValueError("x"),
        OSError("broken data stream when writing image file"),
        ZeroDivisionError(),
        KeyError(),
    ):
        assert not fails_run(exc)
    assert not fails_run(OSError(errno.ENOENT, "No such file"))


@pytest.mark.parametrize(
    ("width_pt", "height_pt"),
    [(612, 792), (1, 200), (199.9, 1), (3, 600), (1, 1), (1e-6, 1e-6), (14400, 14400), (14400, 72), (0.5, 99.9)],
)
@pytest.mark.parametrize("max_pixels", [1_000, 50_176, 602_112, 4_000_000, 400_000_000])
def test_target_size_is_within_the_budget_the_encoders_and_the_processors(width_pt, height_pt, max_pixels):
    size = target_size(width_pt, height_pt, max_pixels, max_dpi=200)
    assert fits(size) and size[0] * size[1] <= max_pixels
    assert (size[0] >= size[1]) == (width_pt >= height_pt)


def test_target_size_clamps_the_long_side_to_the_jpeg_limit_and_rounds_a_short_side_up():
    assert max(target_size(13100, 100, 400_000_000, max_dpi=1000)) == MAX_IMAGE_SIDE  # not 99,999 px
    # 2.78 px at 200 dpi would floor to 2, 277:1 for a 200:1 page, which Qwen's processor refuses
    assert target_size(1, 200, 602_112, max_dpi=200) == (3, 555)


@pytest.mark.parametrize(
    ("width_pt", "height_pt", "reason"),
    [(3, 200_000, "aspect ratio"), (200.1, 1, "aspect ratio"), (0, 792, "no finite area"), (612, -1, "no finite area"),
     (float("inf"), 5, "no finite area"), (float("nan"), 5, "no finite area")],
)  # fmt: skip
def test_pages_no_image_can_show_are_invalid_page_size(width_pt, height_pt, reason):
    with pytest.raises(DocumentError, match=reason) as caught:
        target_size(width_pt, height_pt, 602_112, max_dpi=200)
    assert caught.value.error_type == "invalid_page_size"
    assert MAX_ASPECT_RATIO == 200


@pytest.mark.parametrize("renderer", ["auto", "poppler", "pdfium"])
def test_the_absurd_page_box_that_stopped_every_run_is_an_invalid_page_size_row(tmp_path, renderer):
    path = tmp_path / "absurd.pdf"
    path.write_bytes(absurd_box())
    stage = RasterizeStage(max_pixels=602_112, renderer=renderer)  # ColQwen's budget: a 1 x 2,000,000 px render
    try:
        first, second = stage.apply(pa.table({"source_uri": [path.as_uri()]})).to_pylist()
    finally:
        stage.close()
    assert (first["page_number"], first["error_type"], first["image_width"]) == (1, None, 682)
    assert (second["page_number"], second["page_count"], second["error_type"]) == (2, 2, "invalid_page_size")
    # poppler's pdfinfo prints this page as "3 x 2e+06 pts", once read as 3 x 2 pt and drawn squashed
    assert "3 x 2e+06 pt: aspect ratio" in second["error_message"]


@pytest.mark.parametrize("renderer", ["poppler", "pdfium"])
def test_a_page_just_within_the_aspect_limit_renders_within_it_and_the_processor_takes_it(
    tmp_path, renderer, tiny_model_dir
):
    path = tmp_path / "strip.pdf"
    path.write_bytes(page_pdf(b"/MediaBox [0 0 1 199.9]"))  # 2.78 x 555 px at 200 dpi: rounding decides
    stage = RasterizeStage(max_pixels=602_112, renderer=renderer, extract_text=False)
    try:
        pages = stage.apply(pa.table({"source_uri": [path.as_uri()]}))
    finally:
        stage.close()
    [row] = pages.to_pylist()
    assert row["error_type"] is None and row["renderer"] == renderer
    image = Image.open(bytes_io.BytesIO(row["image"]))
    assert image.size == (row["image_width"], row["image_height"]) and fits(image.size)
    [prepared] = PreprocessStage(model=ModelConfig(name="tiny")).apply(pages).to_pylist()
    assert prepared["error_type"] is None and prepared["n_tokens"] > 0


def test_an_image_the_encoder_refuses_is_an_encode_failed_page_not_an_exception():
    stage = RasterizeStage(max_pixels=602_112)
    base = {"source_uri": "file:///a.pdf", "doc_id": "d", "page_count": 1}
    too_long = Image.new("RGB", (MAX_IMAGE_SIDE + 1, 1))
    row = stage._page_row(base, 1, PageSize(1, 1), too_long.size, too_long, "pdfium")
    assert (row["page_number"], row["error_type"], row["error_stage"]) == (1, "encode_failed", "rasterize")
    assert row["error_message"].startswith("cannot encode the 65501x1 px page image: OSError: broken data stream")
