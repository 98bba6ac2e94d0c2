"""End to end: the Ray pipeline on the sample corpus with the tiny TEST model.

One Ray run (pooling off) is shared by the module; the in-process backend re-runs the same stages
to check ids are stable across runs and backends, and a pooled run is compared with colpali-engine's
pooler applied to the unpooled vectors.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from colpali_engine.compression.token_pooling import HierarchicalTokenPooler
from PIL import Image

from pipelines import index, schema
from pipelines.driver import run_index
from pipelines.errors import ConfigError
from pipelines.models.encoder import MultiVectorEncoder
from pipelines.models.tiny import TINY_MAX_PIXELS
from pipelines.search import LocalIndex
from pipelines.stages.compress import binarize
from pipelines.stages.rasterize import RasterizeStage
from pipelines.testing.corpus import EXPECTED_PAGE_COUNTS
from tests.helpers import index_config


def index_cfg(overrides: list[str]):
    return index_config(*overrides)


@pytest.fixture(scope="module")
def ray_index(ray_cluster, tiny_model_dir, sample_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray-index")
    cfg = index_cfg([f"source.location={sample_corpus}", f"output.location={out}", "pooling=none"])
    report = run_index(cfg)
    return out, report


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return MultiVectorEncoder("tiny")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_every_file_and_page_is_indexed_and_reported(ray_index, sample_corpus):
    out, report = ray_index
    pages = index.IndexLocation(str(out)).read_pages()
    assert report["files_listed"] == report["files_indexed"] == len(EXPECTED_PAGE_COUNTS)
    assert report["files_unaccounted"] == [] and report["error_rows"] == 0
    assert pages.num_rows == report["pages_indexed"] == sum(EXPECTED_PAGE_COUNTS.values())
    per_file = {}
    for uri in pages.column("source_uri").to_pylist():
        per_file[Path(uri).name] = per_file.get(Path(uri).name, 0) + 1
    assert per_file == dict(EXPECTED_PAGE_COUNTS)
    assert len(set(pages.column("page_id").to_pylist())) == pages.num_rows
    assert set(pages.column("model").to_pylist()) == {"tiny"}
    assert set(pages.column("config_hash").to_pylist()) == {report["config_hash"]}
    on_disk = json.loads((out / "run_report.json").read_text())
    assert on_disk["pages_indexed"] == pages.num_rows and on_disk["is_test_model"] is True
    assert "model:" in (out / "config.yaml").read_text()


def test_stored_vectors_equal_embedding_each_page_alone(ray_index, encoder):
    out, _ = ray_index
    pages = index.IndexLocation(str(out)).read_pages()
    stage = RasterizeStage(max_pixels=TINY_MAX_PIXELS)
    checked = 0
    for uri in sorted(set(pages.column("source_uri").to_pylist())):
        for row in stage.rasterize_document(uri):
            stored = index.page_vectors(pages, row["page_id"]).astype(np.float32)
            alone = encoder.embed_images([Image.open(io.BytesIO(row["image"]))])[0]
            assert stored.shape == alone.shape, row["page_id"]
            assert cosines(stored, alone).min() >= 0.999, row["page_id"]
            np.testing.assert_array_equal(index.page_vectors(pages, row["page_id"], "binary"), binarize(stored))
            checked += 1
    assert checked == pages.num_rows


def test_a_pages_own_vectors_rank_it_first(ray_index):
    out, _ = ray_index
    pages = index.IndexLocation(str(out)).read_pages()
    local = LocalIndex(pages)
    for i, page_id in enumerate(pages.column("page_id").to_pylist()):
        query = index.page_vectors(pages, page_id).astype(np.float32)
        for profile in ("two_phase", "float"):
            assert local.search(query, top_k=1, profile=profile)[0].page_index == i, (page_id, profile)


def test_ids_and_vectors_are_stable_across_runs_and_backends(ray_index, sample_corpus, tmp_path):
    out, report = ray_index
    cfg = index_cfg(
        [f"source.location={sample_corpus}", f"output.location={tmp_path}", "pooling=none", "backend=local"]
    )
    again = run_index(cfg)
    assert again["config_hash"] == report["config_hash"]
    first = index.IndexLocation(str(out)).read_pages().sort_by("page_id")
    second = index.IndexLocation(str(tmp_path)).read_pages().sort_by("page_id")
    assert first.column("page_id").to_pylist() == second.column("page_id").to_pylist()
    for a, b in zip(first.column("embedding").to_pylist(), second.column("embedding").to_pylist(), strict=True):
        dim = schema.table_dim(first)
        va, vb = schema.decode_embedding(a, dim), schema.decode_embedding(b, dim)
        assert va.shape == vb.shape and cosines(va, vb).min() >= 0.999


def test_pooled_index_equals_colpali_pooler_on_unpooled_vectors(ray_index, sample_corpus, tmp_path):
    out, _ = ray_index
    cfg = index_cfg(
        [f"source.location={sample_corpus}", f"output.location={tmp_path}", "pooling.pool_factor=3", "backend=local"]
    )
    report = run_index(cfg)
    assert report["vectors_stored"] < report["vectors_before_pooling"] / 2.5
    raw = index.IndexLocation(str(out)).read_pages()
    pooled = index.IndexLocation(str(tmp_path)).read_pages()
    pooler = HierarchicalTokenPooler()
    for page_id in pooled.column("page_id").to_pylist()[:5]:
        unpooled = torch.from_numpy(index.page_vectors(raw, page_id).astype(np.float32))
        expected = pooler.pool_embeddings([unpooled], pool_factor=3)[0].numpy()
        ours = index.page_vectors(pooled, page_id).astype(np.float32)
        assert ours.shape == expected.shape
        # Unpooled vectors agree to float noise between runs, so clusters can differ at the margin.
        assert np.median(cosines(ours, expected)) >= 0.99


def test_bad_files_are_error_rows_and_the_run_goes_on(sample_corpus, shared_corpus, tmp_path, tiny_model_dir):
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(sample_corpus / "water_main_notice.pdf", source / "good.pdf")
    shutil.copy(
        shared_corpus / "005-libreoffice-writer-password_libreoffice-writer-password.pdf", source / "locked.pdf"
    )
    (source / "empty.pdf").write_bytes(b"")
    (source / "fake.pdf").write_bytes(b"<html>not a pdf</html>")
    (source / "truncated.pdf").write_bytes((sample_corpus / "recipe_booklet.pdf").read_bytes()[:2000])
    (source / "notes.txt").write_text("not listed: wrong suffix")
    cfg = index_cfg([f"source.location={source}", f"output.location={tmp_path / 'out'}", "backend=local"])
    report = run_index(cfg)
    assert report["files_listed"] == 5 and report["files_unaccounted"] == []
    assert report["files_indexed"] == 1 and report["files_failed_entirely"] == 4
    reasons = {Path(e["source_uri"]).name: e["type"] for e in report["errors"]}
    assert reasons == {
        "locked.pdf": "encrypted",
        "empty.pdf": "empty_file",
        "fake.pdf": "not_pdf",
        "truncated.pdf": "corrupt",
    }
    errors = index.IndexLocation(str(tmp_path / "out")).read_errors()
    assert errors.num_rows == 4 and pc.all(pc.greater(pc.utf8_length(errors.column("error_message")), 10)).as_py()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "source.location"),
        (["source.location=/x", "model.name=colbert-xl"], "colqwen2.5-v0.2"),
        (["source.location=/x", "pooling.pool_factor=0"], "pool_factor"),
        (["source.location=/x", "rasterize.image_format=gif"], "image_format"),
        (["source.location=/x", "rasterize.max_pixels=9000000"], "hard_max_pixels"),
        (["source.location=/x", "model.micro_batch_size=0"], "micro_batch_size"),
        (["source.location=/x", "backend=spark"], "backend"),
        (["source.location=/x", "+ray.stages.ocr={}"], "unknown stages"),
    ],
)
def test_bad_config_fails_fast_saying_what_to_set(overrides, message, tmp_path):
    cfg = index_cfg([*overrides, f"output.location={tmp_path}"])
    with pytest.raises(ConfigError, match=message):
        run_index(cfg)
    assert not (tmp_path / "pages").exists()


def test_missing_input_location_fails_fast(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"source\.location"):
        run_index(index_cfg([f"source.location={tmp_path / 'nope'}", f"output.location={tmp_path / 'out'}"]))


def test_resource_plan_that_cannot_schedule_fails_instead_of_hanging(ray_cluster, sample_corpus, tmp_path):
    existing = tmp_path / "pages" / "part-previous.parquet"
    existing.parent.mkdir()
    existing.write_bytes(b"previous run")
    cfg = index_cfg(
        [f"source.location={sample_corpus}", f"output.location={tmp_path}", "ray.stages.embed.concurrency=2"]
    )
    with pytest.raises(ConfigError, match="actor pools reserve"):
        run_index(cfg)
    assert existing.read_bytes() == b"previous run"  # a rejected config leaves the old index alone


def test_config_hash_changes_with_anything_that_changes_vectors():
    from pipelines.config import load_index_config

    def config_hash(*overrides: str) -> str:
        return load_index_config(index_cfg(["source.location=/x", *overrides])).config_hash()

    base = config_hash()
    changes = [
        "pooling.pool_factor=2",
        "model.dtype=bfloat16",
        "rasterize.max_pixels=99999",
        "model.name=colsmol-256m",
        "rasterize.image_format=png",
        "rasterize.jpeg_quality=80",
        "rasterize.max_dpi=150",
    ]
    for override in changes:
        assert config_hash(override) != base, override
    assert config_hash("ray.stages.embed.batch_size=4") == base
    assert config_hash("rasterize.window_pages=4", "model.micro_batch_size=2") == base
    # JPEG quality only matters while pages travel as JPEG.
    assert config_hash("rasterize.image_format=png", "rasterize.jpeg_quality=80") == config_hash(
        "rasterize.image_format=png"
    )
