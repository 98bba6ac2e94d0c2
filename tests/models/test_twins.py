"""Every architecture family in the registry, through its tiny random-weight TEST twin, offline.

Each twin is built once per session into the session's model cache and loaded by the production code
(``<ModelClass>.from_pretrained`` on the directory, via the registry). Per family, the index job indexes a
three-page PDF in-process with the local backend and the index is searched; the 320-d ColQwen3 twin is also
ranked end to end and its Vespa package is checked against its vectors. ``tiny`` (ColQwen2) is covered by
``test_tiny.py`` and the session's ``sample_index``.
"""

from __future__ import annotations

import contextlib
import io
import json

import huggingface_hub.constants
import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines import schema
from pipelines.index import IndexLocation
from pipelines.models import registry, twins
from pipelines.search import LocalIndex
from tests.helpers import index_config

FAMILIES = ["tiny-colqwen2.5", "tiny-colqwen3", "tiny-colpali", "tiny-colsmol", "tiny-colmodernvbert"]
#: The colpali-engine class each twin must load as (the family the registry names).
CLASSES = {
    "tiny-colqwen2.5": "ColQwen2_5",
    "tiny-colqwen3": "ColQwen3",
    "tiny-colpali": "ColPali",
    "tiny-colsmol": "ColIdefics3",
    "tiny-colmodernvbert": "ColModernVBert",
}
PAGE_COLORS = [(200, 30, 30), (30, 30, 200), (30, 160, 60)]


@pytest.fixture(scope="session")
def twin_pdf(tmp_path_factory):
    """One US-Letter PDF of three visibly different pages."""
    out = tmp_path_factory.mktemp("twin-pdf")
    pages = []
    for i, color in enumerate(PAGE_COLORS):
        page = Image.new("RGB", (612, 792), "white")
        draw = ImageDraw.Draw(page)
        draw.rectangle([60 + 150 * i, 90, 260 + 150 * i, 420], fill=color)
        draw.text((72, 600), f"Page {i + 1}: quarterly revenue table", fill="black")
        pages.append(page)
    pages[0].save(out / "report.pdf", save_all=True, append_images=pages[1:], resolution=72)
    return out


@pytest.fixture(scope="session")
def twin_indexes(twin_pdf, model_cache, tmp_path_factory):
    """``{family: index path}``: the twin PDF indexed by the index job with each twin (local backend, offline)."""
    from jobs.index import run

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # the suite never reaches a hub
    out = {}
    for name in FAMILIES:
        path = tmp_path_factory.mktemp(f"index-{name}")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            overrides = [f"model={name}", f"source.location={twin_pdf}", f"output.location={path}", "backend=local"]
            status = run(index_config(*overrides))
        assert status == 0, printed.getvalue()
        out[name] = path
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_indexes_and_searches_offline_through_its_twin(name, twin_indexes, model_cache):
    spec = registry.get_spec(name)
    directory = model_cache / twins.TWINS[name].dirname
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == [CLASSES[name]]  # saved by, and loaded as, the family's class
    assert json.loads((directory / ".complete").read_text())["random_weights"] is True

    location = IndexLocation(str(twin_indexes[name]))
    pages = location.read_pages()
    assert location.read_errors().num_rows == 0
    assert pages.num_rows == len(PAGE_COLORS)
    assert set(pages.column("model").to_pylist()) == {name}
    assert set(pages.column("embedding_dim").to_pylist()) == {spec.dim}
    assert location.ledger.read_meta()["embedding_dim"] == spec.dim
    index = LocalIndex(pages)
    assert index.dim == spec.dim
    for row in pages.to_pylist():
        rerank = schema.decode_embedding(row["rerank_embedding"] or row["embedding"], spec.dim)
        assert rerank.shape == (row["n_vectors_raw"], spec.dim)  # unpooled re-ranking vectors, default pooling
        assert np.allclose(np.linalg.norm(rerank.astype(np.float32), axis=1), 1, atol=1e-2)
        assert schema.decode_binary(row["binary"], spec.dim).shape == (row["n_vectors"], spec.dim // 8)
    # A query made of one page's own stored vectors finds that page first (exact MaxSim of identical vectors).
    for i, row in enumerate(pages.to_pylist()):
        query = schema.decode_embedding(row["embedding"], spec.dim).astype(np.float32)
        assert index.search(query, top_k=1, profile="two_phase")[0].page_index == i


def test_twin_vector_counts_follow_their_processors(twin_indexes, model_cache):
    """Raw vectors per page equal what the family's processor makes of the rendered page (dynamic Qwen grids,
    PaliGemma's fixed grid, Idefics3 / ModernVBERT tiles with their markers)."""
    from benchmarks.common import QWEN_PROMPT_VECTORS
    from benchmarks.models import SPLIT_PROMPT_TOKENS, qwen_image_tokens, split_image_tokens

    for name in FAMILIES:
        spec = registry.get_spec(name)
        rows = IndexLocation(str(twin_indexes[name])).read_pages().to_pylist()
        # The PDF's pages are all letter-sized: one render size, one expected count per family.
        assert len({(r["image_width"], r["image_height"], r["n_vectors_raw"]) for r in rows}) == 1
        for row in rows[:1]:
            width, height = row["image_width"], row["image_height"]
            assert width * height <= spec.max_pixels
            if spec.family in ("qwen2_5", "qwen3"):
                expected = qwen_image_tokens(spec.family, width, height, spec.max_pixels) + QWEN_PROMPT_VECTORS
            elif spec.family == "paligemma":  # the squashed square grid, then <bos> twice and the prompt
                prompt = 2 + len(paligemma_tokenizer(model_cache).tokenize("Describe the image.\n"))
                expected = (twins.PALIGEMMA_IMAGE_SIZE // 14) ** 2 + prompt
            else:
                tiles = split_image_tokens(
                    width, height, twins.SPLIT_LONGEST_EDGE, twins.SPLIT_TILE, twins.SPLIT_TOKENS_PER_TILE
                )[0]
                expected = tiles + SPLIT_PROMPT_TOKENS[spec.family]
            assert row["n_vectors_raw"] == expected, name


def test_320_dim_twin_ranks_end_to_end_and_its_vespa_schema_follows(twin_indexes, tmp_path):
    from jobs.deploy_vespa import run as deploy
    from pipelines.search import QueryModel, Searcher
    from pipelines.vespa import documents
    from tests.helpers import compose_config
    from tests.vespa.schema_check import schema_fields, validator

    path = twin_indexes["tiny-colqwen3"]
    location = IndexLocation(str(path))
    pages = location.read_pages()
    searcher = Searcher(QueryModel("tiny-colqwen3"), local=LocalIndex(pages), index_model="tiny-colqwen3")
    [vectors] = searcher.encode(["quarterly revenue table"])
    assert vectors.shape[1] == 320 and np.isfinite(vectors).all()
    for profile in ("two_phase", "binary", "float", "two_phase_unpacked"):
        hits = searcher.search(["quarterly revenue table"], profile=profile, top_k=3)[0]
        assert sorted(h.page_number for h in hits) == [1, 2, 3]
    # Every page is found by its own vectors under every profile, through the searcher's path.
    own = [schema.decode_embedding(b, 320).astype(np.float32) for b in pages.column("embedding").to_pylist()]
    for profile in ("two_phase", "binary", "float", "two_phase_unpacked"):
        tops = [hits[0].page_index for hits in searcher.search_vectors(own, profile=profile, top_k=1)]
        assert tops == list(range(pages.num_rows)), profile

    # The deployed schema takes its tensor types from the index (40 int8 bytes, 320 floats) ...
    out = tmp_path / "vespa"
    assert deploy(compose_config("deploy_vespa", [f"output_dir={out}", f"index={path}"])) == 0
    fields = schema_fields_from(out / "app" / "schemas" / "pdf_page.sd")
    assert fields["embedding"] == "tensor<int8>(patch{}, v[40])"
    assert fields["embedding_float"] == "tensor<bfloat16>(patch{}, v[320])"
    text = (out / "app" / "schemas" / "pdf_page.sd").read_text()
    assert "query(qt) tensor<float>(querytoken{}, v[320])" in text and "query(rq0) tensor<int8>(v[40])" in text
    # ... and the index's documents are what that schema accepts (and not what a 128-d schema accepts).
    from pipelines.vespa.app import VespaAppSettings

    assert schema_fields(VespaAppSettings(embedding_dim=320)) == fields
    check_320, check_128 = validator(VespaAppSettings(embedding_dim=320)), validator(VespaAppSettings())
    docs = list(documents.iter_documents(pages, documents.DocumentSettings()))
    assert len(docs) == 3 and all(len(cells) == 80 for cells in docs[0]["fields"]["embedding"].values())
    vectors = [{k: d["fields"][k] for k in ("embedding", "embedding_float")} for d in docs]
    assert all(check_320("pdf_page", fields) == [] for fields in vectors)
    assert all(check_128("pdf_page", fields) for fields in vectors)


def paligemma_tokenizer(model_cache):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_cache / twins.TWINS["tiny-colpali"].dirname))


def schema_fields_from(path) -> dict[str, str]:
    import re

    return dict(re.findall(r"^\s*field (\w+) type (.+?) \{", path.read_text(), re.M))
