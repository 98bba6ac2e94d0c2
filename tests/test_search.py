"""Local ranking equals an independent evaluation of the Vespa rank expressions."""

import numpy as np
import pytest

from pipelines import schema
from pipelines.search import LocalIndex
from pipelines.stages.compress import binarize


def unit(rng, n):
    v = rng.standard_normal((n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_index(pages):
    rows = [
        {
            "page_id": f"doc{i}-p1",
            "source_uri": f"file:///doc{i}.pdf",
            "page_number": 1,
            "n_vectors": len(p),
            "embedding": p.astype("<f2").tobytes(),
            "binary": binarize(p).tobytes(),
        }
        for i, p in enumerate(pages)
    ]
    table = schema.rows_to_table(rows).select(schema.INDEX_PAGE_COLUMNS)
    return LocalIndex(table)


def reference_hamming_maxsim(query, page):
    """sum_q max_d 1/(1+hamming(q,d)), written out literally."""
    qb, db = binarize(query), binarize(page)
    total = 0.0
    for q in qb:
        best = 0.0
        for d in db:
            distance = sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(q, d, strict=True))
            best = max(best, 1.0 / (1.0 + distance))
        total += best
    return total


def reference_unpacked_maxsim(query, page):
    bits = np.unpackbits(binarize(page), axis=1).astype(np.float64)
    return float((query.astype(np.float64) @ bits.T).max(axis=1).sum())


def reference_float_maxsim(query, page):
    return float((query.astype(np.float64) @ page.astype(np.float16).astype(np.float64).T).max(axis=1).sum())


@pytest.fixture
def corpus():
    rng = np.random.default_rng(7)
    pages = [unit(rng, n) for n in (5, 12, 1, 30, 7, 19)]
    return pages, make_index(pages), unit(rng, 6)


def test_first_phase_matches_literal_hamming_maxsim(corpus):
    pages, index, query = corpus
    expected = [reference_hamming_maxsim(query, p) for p in pages]
    np.testing.assert_allclose(index.hamming_maxsim(query), expected, rtol=1e-12)


def test_second_phase_and_float_profile_match_literal_maxsim(corpus):
    pages, index, query = corpus
    candidates = np.array([3, 0, 5])
    expected = [reference_unpacked_maxsim(query, pages[i]) for i in candidates]
    np.testing.assert_allclose(index.unpacked_maxsim(query, candidates), expected, rtol=1e-5)
    np.testing.assert_allclose(index.float_maxsim(query), [reference_float_maxsim(query, p) for p in pages], rtol=1e-5)


def test_two_phase_reranks_first_phase_candidates(corpus):
    pages, index, query = corpus
    first = index.hamming_maxsim(query)
    hits = index.search(query, top_k=2, rerank_count=3)
    top3 = set(np.argsort(-first)[:3])
    assert {h.page_index for h in hits} <= top3
    rescored = {i: reference_unpacked_maxsim(query, pages[i]) for i in top3}
    assert [h.page_index for h in hits] == sorted(rescored, key=lambda i: -rescored[i])[:2]


@pytest.mark.parametrize("profile", ["two_phase", "float", "binary"])
def test_a_pages_own_vectors_rank_it_first(corpus, profile):
    pages, index, _ = corpus
    for i, page in enumerate(pages):
        if len(page) < 5:
            continue  # a 1-vector page's query is too short to be distinctive
        assert index.search(page[:5], top_k=1, profile=profile)[0].page_index == i


def test_unknown_profile_fails_with_choices(corpus):
    _, index, query = corpus
    with pytest.raises(ValueError, match="two_phase"):
        index.search(query, profile="nope")


def test_chunked_threaded_scoring_of_a_multi_chunk_table_equals_the_literal_math(monkeypatch):
    import pyarrow as pa

    from pipelines import search

    # Chunks of a few pages, one page larger than a chunk, Arrow columns split across record batches.
    monkeypatch.setattr(search, "CHUNK_VECTORS", 40)
    monkeypatch.setattr(search, "FLOAT_CHUNK_VECTORS", 55)
    rng = np.random.default_rng(11)
    pages = [unit(rng, int(n)) for n in rng.integers(1, 25, size=20)] + [unit(rng, 90)]
    table = schema.rows_to_table(
        [
            {
                "page_id": f"doc{i}-p1",
                "source_uri": f"file:///doc{i}.pdf",
                "n_vectors": len(p),
                "embedding": p.astype("<f2").tobytes(),
                "binary": binarize(p).tobytes(),
            }
            for i, p in enumerate(pages)
        ]
    ).select(schema.INDEX_PAGE_COLUMNS)
    table = pa.Table.from_batches(table.to_batches(max_chunksize=6))
    assert table.column("binary").num_chunks > 1
    query = unit(rng, 5)
    query = np.concatenate([query, query[:2]])  # repeated tokens: same sign bits, scored once, counted twice
    expected_first = [reference_hamming_maxsim(query, p) for p in pages]
    expected_float = [reference_float_maxsim(query, p) for p in pages]
    for threads in (1, 3):
        index = LocalIndex(table, threads=threads)
        assert len(index._chunks) > 3
        np.testing.assert_allclose(index.hamming_maxsim(query), expected_first, rtol=1e-12)
        np.testing.assert_allclose(index.float_maxsim(query), expected_float, rtol=1e-5)


def test_vector_bytes_that_disagree_with_n_vectors_fail():
    table = schema.rows_to_table(
        [
            {
                "page_id": "a-p1",
                "source_uri": "file:///a.pdf",
                "n_vectors": 5,
                "binary": bytes(16 * 3),
                "embedding": bytes(256 * 3),
            }
        ]
    ).select(schema.INDEX_PAGE_COLUMNS)
    with pytest.raises(ValueError, match="n_vectors sums to 5"):
        LocalIndex(table)
