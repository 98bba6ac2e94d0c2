"""The Vespa rank expressions, evaluated independently on the wire JSON, agree with the local search."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines import schema
from pipelines.muvera import MuveraSettings, mean_vector
from pipelines.search import LocalIndex
from pipelines.stages.compress import binarize
from pipelines.vespa import documents, query
from tests.vespa import rank_eval


def synthetic_pages(rng: np.random.Generator, n_pages: int = 10) -> tuple[pa.Table, list[np.ndarray]]:
    """Pages of unit vectors around a few shared 'topics', so pages overlap but differ (like real pages)."""
    topics = rng.normal(size=(6, 128))
    rows, page_vectors = [], []
    for i in range(n_pages):
        n = int(rng.integers(8, 40))
        base = topics[rng.integers(0, len(topics), size=n)]
        vectors = base + rng.normal(scale=0.8, size=base.shape)
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
        page_vectors.append(vectors.astype(np.float32))
        rows.append(
            {
                "page_id": f"doc{i:02d}-p1",
                "doc_id": f"doc{i:02d}",
                "source_uri": f"/data/doc{i:02d}.pdf",
                "title": f"Document {i}",
                "page_number": 1,
                "page_count": 1,
                "text": f"page text {i}",
                "n_vectors_raw": n,
                "n_vectors": n,
                "embedding": vectors.astype("<f2").tobytes(),
                "binary": binarize(vectors.astype(np.float32)).tobytes(),
                "model": "tiny",
                "config_hash": "abc",
            }
        )
    table = pa.Table.from_pylist(rows, schema=pa.schema([schema.PAGES_TABLE_SCHEMA.field(k) for k in rows[0]]))
    return table, page_vectors


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    pages, vectors = synthetic_pages(rng)
    # A query made of noisy copies of some of page 3's vectors plus unrelated tokens.
    q = np.concatenate([vectors[3][:6] + rng.normal(scale=0.3, size=(6, 128)), rng.normal(size=(4, 128))])
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    docs = list(documents.iter_documents(pages, documents.DocumentSettings()))
    body = query.build_query_body(q, "two_phase", 5, query.VespaQuerySettings(), "pdf_page")
    return pages, q, docs, body


def wire_inputs(body):
    qt = {k: [float(x) for x in v] for k, v in body["input.query(qt)"].items()}
    qtb = {k: [int(x) for x in v] for k, v in body["input.query(qtb)"].items()}
    return qt, qtb


def test_first_phase_equals_local_hamming_maxsim(data):
    pages, q, docs, body = data
    local = LocalIndex(pages).hamming_maxsim(q)
    _, qtb = wire_inputs(body)
    vespa = [rank_eval.max_sim_binary(qtb, rank_eval.mapped_int8_tensor(d["fields"]["embedding"])) for d in docs]
    np.testing.assert_allclose(vespa, local, rtol=1e-12)
    assert len(set(np.round(local, 6))) > 5, "scores must vary for the comparison to mean anything"


def test_unpacked_second_phase_equals_local_unpacked_maxsim(data):
    pages, q, docs, body = data
    local = LocalIndex(pages).unpacked_maxsim(q, np.arange(len(docs)))
    qt, _ = wire_inputs(body)
    vespa = [rank_eval.max_sim_unpacked(qt, rank_eval.mapped_int8_tensor(d["fields"]["embedding"])) for d in docs]
    np.testing.assert_allclose(vespa, local, rtol=1e-5)


def test_two_phase_second_phase_equals_local_float_rerank_within_bfloat16_precision(data):
    pages, q, docs, body = data
    local = LocalIndex(pages).float_maxsim_of(q, np.arange(len(docs)))
    qt, _ = wire_inputs(body)
    vespa = [
        rank_eval.max_sim_float(qt, rank_eval.mapped_bfloat16_tensor(d["fields"]["embedding_float"])) for d in docs
    ]
    np.testing.assert_allclose(vespa, local, rtol=1e-2)


def with_rerank_vectors(pages: pa.Table, rng: np.random.Generator) -> tuple[pa.Table, list[np.ndarray]]:
    """``pages`` plus a ``rerank_embedding`` column: more (stand-in unpooled) float vectors per page."""
    rerank = []
    for cell in pages.column("embedding").to_pylist():
        pooled = schema.decode_embedding(cell, 128).astype(np.float32)
        extra = pooled[rng.integers(0, len(pooled), 2 * len(pooled))] + rng.normal(
            scale=0.2, size=(2 * len(pooled), 128)
        )
        vectors = np.concatenate([pooled, extra])
        rerank.append((vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16))
    pages = pages.append_column(
        schema.PAGE_SCHEMA.field("n_rerank_vectors"), pa.array([len(r) for r in rerank], pa.int32())
    )
    pages = pages.append_column(
        schema.PAGE_SCHEMA.field("rerank_embedding"),
        pa.array([r.astype("<f2").tobytes() for r in rerank], pa.binary()),
    )
    return pages, rerank


def test_separate_rerank_vectors_are_fed_as_embedding_float_and_rerank_like_the_local_index(data):
    pages, q, _, body = data
    pages, rerank = with_rerank_vectors(pages, np.random.default_rng(3))
    docs = list(documents.iter_documents(pages, documents.DocumentSettings()))
    for doc, vectors, binary in zip(docs, rerank, pages.column("binary").to_pylist(), strict=True):
        assert len(doc["fields"]["embedding_float"]) == len(vectors)
        assert len(doc["fields"]["embedding"]) == len(schema.decode_binary(binary, 128)) < len(vectors)
    local = LocalIndex(pages)
    qt, _ = wire_inputs(body)
    vespa = [
        rank_eval.max_sim_float(qt, rank_eval.mapped_bfloat16_tensor(d["fields"]["embedding_float"])) for d in docs
    ]
    np.testing.assert_allclose(vespa, local.float_maxsim(q), rtol=1e-2)
    stored = {f"id:pdf_page:pdf_page::{d['id']}": d["fields"] for d in docs}
    hits = query.parse_hits(rank_eval.search_handler(stored)(body))
    expected = local.search(q, top_k=5, profile="two_phase", retrieval="nearest_neighbor")
    assert [h["page_id"] for h in hits] == [pages.column("page_id")[h.page_index].as_py() for h in expected]


def test_float_profile_matches_local_float_maxsim_within_bfloat16_precision(data):
    pages, q, docs, body = data
    local = LocalIndex(pages).float_maxsim(q)
    qt, _ = wire_inputs(body)
    vespa = [
        rank_eval.max_sim_float(qt, rank_eval.mapped_bfloat16_tensor(d["fields"]["embedding_float"])) for d in docs
    ]
    np.testing.assert_allclose(vespa, local, rtol=1e-2)
    assert np.argmax(vespa) == np.argmax(local) == 3


@pytest.mark.parametrize(("profile", "rtol"), [("two_phase", 1e-2), ("two_phase_unpacked", 1e-5), ("binary", 1e-12)])
@pytest.mark.parametrize("target_hits", [2, 100])
def test_ranking_through_the_search_stand_in_equals_local(data, profile, rtol, target_hits):
    pages, q, docs, _ = data
    settings = query.VespaQuerySettings(target_hits=target_hits)
    body = query.build_query_body(q, profile, 5, settings, "pdf_page", rerank_count=5)
    stored = {f"id:pdf_page:pdf_page::{d['id']}": d["fields"] for d in docs}
    answer = rank_eval.search_handler(stored)(body)
    hits = query.parse_hits(answer)
    local = LocalIndex(pages)
    expected = local.search(q, 5, profile, 5, retrieval="nearest_neighbor", target_hits=target_hits)
    assert [h["page_id"] for h in hits] == [pages.column("page_id")[h.page_index].as_py() for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], rtol=rtol)
    # Vespa's retrieval (exact here) matches the pages the local nearest-neighbour retrieval ranks.
    matched = local.nearest_neighbor_candidates(q, target_hits)
    assert answer["root"]["fields"]["totalCount"] == len(matched)


def test_hex_and_list_forms_carry_the_same_tensors(data):
    pages, _, hex_docs, _ = data
    list_docs = list(documents.iter_documents(pages, documents.DocumentSettings(form="list")))
    for hex_doc, list_doc in zip(hex_docs, list_docs, strict=True):
        h, li = hex_doc["fields"], list_doc["fields"]
        assert rank_eval.mapped_int8_tensor(h["embedding"]) == rank_eval.mapped_int8_tensor(li["embedding"])
        from_hex = rank_eval.mapped_bfloat16_tensor(h["embedding_float"])
        from_list = rank_eval.mapped_bfloat16_tensor(li["embedding_float"])
        for label in from_hex:
            # The list form sends float32 that Vespa rounds to bfloat16; the hex form is that rounding.
            np.testing.assert_allclose(from_hex[label], from_list[label], rtol=2**-8)


def test_hex_cells_are_the_stored_bytes_and_bfloat16_rounds_to_nearest():
    binary = np.array([[0x00, 0xFF, 0x80, 0x7F] * 4], dtype=np.uint8)
    assert documents.binary_tensor(binary) == {"0": "00ff807f" * 4}
    assert rank_eval.int8_cells_from_hex("00ff807f") == [0, -1, -128, 127]
    values = np.array([[1.0, -2.0, 1.00390625, 1.01171875] + [0.0] * 124], dtype=np.float32)
    hex_row = documents.float_tensor(values)["0"]
    # 1.0 = 0x3f80, -2.0 = 0xc000; 1+2^-8 is a tie -> even (0x3f80); 1+3*2^-8 is a tie -> even (0x3f82)
    assert hex_row[:16] == "3f80c0003f803f82"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 128)).astype(np.float32)
    back = documents.from_bfloat16_bits(documents.to_bfloat16_bits(x))
    assert np.all(np.abs(back - x) <= np.abs(x) * 2**-8)


def test_query_body_has_one_nearest_neighbor_per_token_up_to_the_limit():
    q = np.random.default_rng(1).normal(size=(70, 128)).astype(np.float32)
    body = query.build_query_body(q, "two_phase", 3, query.VespaQuerySettings(target_hits=20), "pdf_page")
    assert body["yql"].count("nearestNeighbor(embedding,rq") == 64
    assert "({targetHits:20,hnsw.exploreAdditionalHits:300}nearestNeighbor(embedding,rq63))" in body["yql"]
    assert "input.query(rq64)" not in body and len(body["input.query(qt)"]) == 70
    assert body["input.query(rq5)"] == binarize(q[5:6]).view(np.int8)[0].tolist()
    assert body["ranking.profile"] == "two_phase" and body["hits"] == 3
    exhaustive = query.build_query_body(q, "float", 3, query.VespaQuerySettings(retrieval="all"), "pdf_page")
    assert exhaustive["yql"].endswith("where true") and "input.query(rq0)" not in exhaustive
    hybrid = query.build_query_body(q, "hybrid", 3, query.VespaQuerySettings(), "pdf_page", text="revenue")
    assert hybrid["yql"].endswith("OR userQuery()") and hybrid["query"] == "revenue"


# ---------------------------------------------------------------------------------------------------------------------
# One vector per page: muvera, page_vector, similar_pages
# ---------------------------------------------------------------------------------------------------------------------

#: Small encodings keep the literal evaluation quick; the query builder and the local index are given the same.
MUVERA = MuveraSettings(repetitions=3, simhash_bits=2, projection_dim=8)


def with_page_vectors(pages: pa.Table) -> pa.Table:
    """``pages`` plus ``page_embedding`` and ``muvera_embedding`` as the pool stage writes them."""
    means, encodings = [], []
    for cell in pages.column("embedding").to_pylist():
        vectors = schema.decode_embedding(cell, 128).astype(np.float32)
        means.append(mean_vector(vectors).astype("<f2").tobytes())
        encodings.append(MUVERA.encoder(128).document(vectors).astype("<f2").tobytes())
    for name, values in (("page_embedding", means), ("muvera_embedding", encodings)):
        pages = pages.append_column(schema.PAGE_SCHEMA.field(name), pa.array(values, pa.binary()))
    return pages


@pytest.fixture(scope="module")
def single(data):
    pages, q, _, _ = data
    pages = with_page_vectors(pages)
    docs = list(documents.iter_documents(pages, documents.DocumentSettings()))
    stored = {f"id:pdf_page:pdf_page::{d['id']}": d["fields"] for d in docs}
    return pages, q, docs, stored


def test_page_vectors_are_fed_as_dense_bfloat16_hex(single):
    pages, _, docs, _ = single
    for doc, mean, encoding in zip(
        docs, pages.column("page_embedding").to_pylist(), pages.column("muvera_embedding").to_pylist(), strict=True
    ):
        for field, cell in (("page_embedding", mean), ("muvera_embedding", encoding)):
            stored = np.frombuffer(cell, "<f2").astype(np.float32)
            fed = rank_eval.dense_bfloat16_tensor(doc["fields"][field])
            assert len(fed) == len(stored)
            np.testing.assert_allclose(fed, stored, rtol=2**-8, atol=1e-30)


@pytest.mark.parametrize("profile", ["muvera", "page_vector"])
@pytest.mark.parametrize("retrieval", ["nearest_neighbor", "all"])
def test_one_vector_profiles_through_the_search_stand_in_equal_local(single, profile, retrieval):
    pages, q, _, stored = single
    settings = query.VespaQuerySettings(page_target_hits=6, retrieval=retrieval)
    body = query.build_query_body(q, profile, 4, settings, "pdf_page", rerank_count=3, muvera=MUVERA)
    field, name = query.SINGLE_VECTOR_PROFILES[profile]
    expected_input = MUVERA.encoder(128).query(q) if profile == "muvera" else mean_vector(q)
    np.testing.assert_allclose(body[f"input.query({name})"], expected_input, rtol=1e-6)
    assert "input.query(qtb)" not in body and "input.query(rq0)" not in body
    if retrieval == "all":
        assert body["yql"].endswith("where true")
    else:
        assert body["yql"].endswith(
            f"where ({{targetHits:6,hnsw.exploreAdditionalHits:300}}nearestNeighbor({field},{name}))"
        )
    answer = rank_eval.search_handler(stored)(body)
    hits = query.parse_hits(answer)
    local = LocalIndex(pages, muvera=MUVERA)
    expected = local.search(q, 3, profile, 3, retrieval=retrieval, page_target_hits=6)
    # The top 3 re-ranked, then the 4th by the first phase, below them (the local search re-ranks at least top_k).
    assert [h["page_id"] for h in hits[:3]] == [pages.column("page_id")[h.page_index].as_py() for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits[:3]], [h.score for h in expected], rtol=1e-2)
    first = local.single_vector_scores(q, profile)
    matched = np.argsort(-first)[:6] if retrieval == "nearest_neighbor" else np.arange(len(pages))
    fourth = matched[np.argsort(-first[matched])][3]
    assert hits[3]["page_id"] == pages.column("page_id")[int(fourth)].as_py() and hits[3]["score"] < hits[2]["score"]
    assert answer["root"]["fields"]["totalCount"] == (6 if retrieval == "nearest_neighbor" else len(pages))


def test_similar_pages_body_ranks_other_pages_like_the_local_index(single):
    pages, _, _, stored = single
    own = np.frombuffer(pages.column("page_embedding")[2].as_py(), "<f2").astype(np.float32)
    page_id = pages.column("page_id")[2].as_py()
    body = query.build_similar_pages_body(own, 4, query.VespaQuerySettings(), "pdf_page", exclude_page_id=page_id)
    assert body["ranking.profile"] == "similar_pages" and f'!(page_id contains "{page_id}")' in body["yql"]
    hits = query.parse_hits(rank_eval.search_handler(stored)(body))
    expected = LocalIndex(pages).similar_pages(2, top_k=4)
    assert [h["page_id"] for h in hits] == [pages.column("page_id")[h.page_index].as_py() for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], rtol=1e-2)


def test_hybrid_body_adds_the_words_with_weak_and(data):
    q = data[1]
    body = query.build_query_body(q, "hybrid", 3, query.VespaQuerySettings(), "pdf_page", text="revenue by region")
    assert body["yql"].endswith(" OR userQuery()") and body["model.type"] == "weakAnd"
    assert body["query"] == "revenue by region"
