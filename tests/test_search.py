"""Local ranking equals an independent evaluation of the Vespa rank expressions."""

import numpy as np
import pytest

from pipelines import schema
from pipelines.errors import ConfigError
from pipelines.muvera import MuveraSettings, mean_vector
from pipelines.search import LocalIndex, QueryModel, Searcher
from pipelines.stages.compress import binarize


def unit(rng, n):
    v = rng.standard_normal((n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_index(pages, rerank=None):
    """A LocalIndex of ``pages`` (candidate vectors); with ``rerank``, separate float re-ranking vectors per page."""
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
    for row, vectors in zip(rows, rerank or [], strict=False):
        row["rerank_embedding"] = vectors.astype("<f2").tobytes()
        row["n_rerank_vectors"] = len(vectors)
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


@pytest.mark.parametrize(
    ("profile", "reference"),
    [("two_phase", reference_float_maxsim), ("two_phase_unpacked", reference_unpacked_maxsim)],
)
def test_two_phase_reranks_first_phase_candidates(corpus, profile, reference):
    pages, index, query = corpus
    first = index.hamming_maxsim(query)
    hits = index.search(query, top_k=2, profile=profile, rerank_count=3)
    top3 = set(np.argsort(-first)[:3])
    assert {h.page_index for h in hits} <= top3
    rescored = {i: reference(query, pages[i]) for i in top3}
    assert [h.page_index for h in hits] == sorted(rescored, key=lambda i: -rescored[i])[:2]
    np.testing.assert_allclose([h.score for h in hits], [rescored[h.page_index] for h in hits], rtol=1e-5)


def test_separate_rerank_vectors_serve_the_float_phases_and_binary_the_first():
    rng = np.random.default_rng(3)
    rerank = [unit(rng, n) for n in (9, 4, 20, 13)]
    candidates = [r[: max(1, len(r) // 3)] for r in rerank]  # stand-ins for pooled vectors: fewer rows per page
    index = make_index(candidates, rerank)
    query = unit(rng, 5)
    assert index.separate_rerank and index.embedding.shape[0] == sum(len(r) for r in rerank)
    np.testing.assert_allclose(index.hamming_maxsim(query), [reference_hamming_maxsim(query, p) for p in candidates])
    expected = [reference_float_maxsim(query, r) for r in rerank]
    np.testing.assert_allclose(index.float_maxsim(query), expected, rtol=1e-5)
    np.testing.assert_allclose(index.float_maxsim_of(query, np.array([2, 0])), [expected[2], expected[0]], rtol=1e-5)
    hits = index.search(query, top_k=4, rerank_count=4)
    assert [h.page_index for h in hits] == list(np.argsort(-np.array(expected), kind="stable"))
    # Without the column (an index written before it, or with rerank_pool_factor unset) embedding re-ranks.
    plain = make_index(candidates)
    assert not plain.separate_rerank
    np.testing.assert_allclose(plain.float_maxsim(query), [reference_float_maxsim(query, p) for p in candidates])


def reference_nearest_neighbor(query, pages, target_hits):
    """Vespa's retrieval written out: per query token, the target_hits pages with the nearest patch (ties by order)."""
    matched = set()
    for q in binarize(query):
        distance = [
            min(sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(q, d, strict=True)) for d in binarize(p))
            for p in pages
        ]
        matched |= set(sorted(range(len(pages)), key=lambda i: (distance[i], i))[:target_hits])
    return sorted(matched)


@pytest.mark.parametrize("target_hits", [1, 2, 4, 100])
def test_nearest_neighbor_retrieval_is_the_union_of_each_tokens_nearest_pages(corpus, target_hits):
    pages, index, query = corpus
    expected = reference_nearest_neighbor(query, pages, target_hits)
    assert index.nearest_neighbor_candidates(query, target_hits).tolist() == expected
    assert index.nearest_neighbor_candidates(query, target_hits, max_query_tokens=1).tolist() == (
        reference_nearest_neighbor(query[:1], pages, target_hits)
    )
    # The phases rank only the retrieved pages, with the same scores as over every page.
    for profile in ("binary", "two_phase", "float"):
        hits = index.search(query, 10, profile, 2, retrieval="nearest_neighbor", target_hits=target_hits)
        assert {h.page_index for h in hits} <= set(expected)
        everything = {h.page_index: h.score for h in index.search(query, 10, profile, 100)}
        if profile != "two_phase":
            assert all(everything[h.page_index] == pytest.approx(h.score) for h in hits)


@pytest.mark.parametrize("retrieval", ["all", "nearest_neighbor"])
@pytest.mark.parametrize("profile", ["two_phase", "two_phase_unpacked", "float", "binary"])
def test_a_pages_own_vectors_rank_it_first(corpus, profile, retrieval):
    pages, index, _ = corpus
    for i, page in enumerate(pages):
        if len(page) < 5:
            continue  # a 1-vector page's query is too short to be distinctive
        hits = index.search(page[:5], top_k=1, profile=profile, retrieval=retrieval, target_hits=1)
        assert hits[0].page_index == i


def test_unknown_profile_fails_with_choices(corpus):
    _, index, query = corpus
    with pytest.raises(ValueError, match="two_phase"):
        index.search(query, profile="nope")
    with pytest.raises(ValueError, match="nearest_neighbor"):
        index.search(query, retrieval="hnsw")


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


class FakeEncoder:
    """Stands in for the model: each query text names the page whose vectors it returns."""

    def __init__(self, pages):
        self.pages = pages
        self.calls = 0

    def embed_queries(self, queries):
        self.calls += 1
        return [self.pages[int(q.removeprefix("page "))] for q in queries]


def test_searcher_ranks_like_the_local_index_and_returns_page_fields(corpus):
    pages, index, _ = corpus
    encoder = FakeEncoder(pages)
    searcher = Searcher(QueryModel("tiny"), local=index, top_k=3, encoder=encoder, index_model="tiny")
    hits = searcher.search(["page 1", "page 5"])
    assert encoder.calls == 1 and len(hits) == 2
    for target, query_hits in zip((1, 5), hits, strict=True):
        expected = index.search(pages[target], 3, "two_phase", 100)
        assert [(h.page_index, h.score) for h in query_hits] == [(e.page_index, e.score) for e in expected]
        first = query_hits[0]
        assert (first.page_id, first.source_uri, first.page_number) == (
            f"doc{target}-p1",
            f"file:///doc{target}.pdf",
            1,
        )
        assert first.model == "tiny" and first.text is None
    # Per-call overrides of the defaults, on pre-encoded vectors.
    [float_hits] = searcher.search_vectors([pages[3]], profile="float", top_k=1)
    assert [h.page_index for h in float_hits] == [3]


def test_searcher_refuses_unknown_profiles_and_a_missing_backend(corpus):
    _, index, _ = corpus
    searcher = Searcher(QueryModel("tiny"), local=index)
    with pytest.raises(ConfigError, match="profile must be one of"):
        searcher.search_vectors([np.zeros((1, 128), np.float32)], profile="bm25")
    with pytest.raises(ValueError, match="exactly one backend"):
        Searcher(QueryModel("tiny"))
    with pytest.raises(ConfigError, match="retrieval must be one of"):
        Searcher(QueryModel("tiny"), local=index, retrieval="hnsw")
    with pytest.raises(ConfigError, match="rrf is local only"):
        Searcher(QueryModel("tiny"), endpoint=object(), fusion="rrf")
    with pytest.raises(ValueError, match="page_embedding column"):
        index.search(np.zeros((1, 128), np.float32), profile="page_vector")


# ---------------------------------------------------------------------------------------------------------------------
# One vector per page (muvera, page_vector, similar pages) and the local hybrid
# ---------------------------------------------------------------------------------------------------------------------

SMALL_MUVERA = MuveraSettings(repetitions=4, simhash_bits=3, projection_dim=None)


def single_vector_index(pages, texts=None, titles=None):
    """A LocalIndex whose pages also carry page_embedding and muvera_embedding (as the pool stage writes them) and,
    optionally, titles and texts."""
    rows = []
    encoder = SMALL_MUVERA.encoder(128)
    for i, p in enumerate(pages):
        stored = p.astype("<f2").astype(np.float32)
        rows.append(
            {
                "page_id": f"doc{i}-p1",
                "source_uri": f"file:///doc{i}.pdf",
                "n_vectors": len(p),
                "embedding": p.astype("<f2").tobytes(),
                "binary": binarize(p).tobytes(),
                "page_embedding": mean_vector(stored).astype("<f2").tobytes(),
                "muvera_embedding": encoder.document(stored).astype("<f2").tobytes(),
                "title": (titles or {}).get(i),
                "text": (texts or {}).get(i),
            }
        )
    return LocalIndex(schema.rows_to_table(rows).select(schema.INDEX_PAGE_COLUMNS), muvera=SMALL_MUVERA)


@pytest.fixture(scope="module")
def topics():
    """30 pages of vectors around 6 shared topics (pages overlap but differ) and a query drawn from page 7."""
    rng = np.random.default_rng(21)
    centres = unit(rng, 6)
    pages = []
    for _ in range(30):
        n = int(rng.integers(10, 40))
        v = centres[rng.integers(0, 6, n)] + 0.6 * rng.standard_normal((n, 128)) / np.sqrt(128)
        pages.append((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32))
    query = pages[7][:6] + 0.3 * rng.standard_normal((6, 128)) / np.sqrt(128)
    return pages, query.astype(np.float32)


@pytest.mark.parametrize("profile", ["muvera", "page_vector"])
@pytest.mark.parametrize(("page_target_hits", "rerank_count"), [(8, 5), (30, 30)])
def test_one_vector_profiles_retrieve_by_their_vector_then_rerank_by_exact_maxsim(
    topics, profile, page_target_hits, rerank_count
):
    pages, query = topics
    index = single_vector_index(pages)
    stored = [p.astype("<f2").astype(np.float32) for p in pages]
    if profile == "muvera":
        encoder = SMALL_MUVERA.encoder(128)
        documents = np.stack([encoder.document(p).astype("<f2").astype(np.float64) for p in stored])
        first = documents @ encoder.query(query).astype(np.float64)
    else:
        documents = np.stack([mean_vector(p).astype("<f2").astype(np.float64) for p in stored])
        first = documents @ mean_vector(query).astype(np.float64)
    np.testing.assert_allclose(index.single_vector_scores(query, profile), first, rtol=1e-5)
    retrieved = sorted(range(len(pages)), key=lambda i: (-first[i], i))[:page_target_hits]
    reranked = sorted(retrieved, key=lambda i: (-first[i], i))[:rerank_count]
    exact = {i: reference_float_maxsim(query, pages[i]) for i in reranked}
    expected = sorted(exact, key=lambda i: -exact[i])[:5]
    options = {"retrieval": "nearest_neighbor", "page_target_hits": page_target_hits}
    hits = index.search(query, 5, profile, rerank_count, **options)
    assert [h.page_index for h in hits] == expected
    np.testing.assert_allclose([h.score for h in hits], [exact[i] for i in expected], rtol=1e-5)
    assert hits[0].page_index == 7


def test_similar_pages_rank_other_pages_by_page_vector_cosine(topics):
    pages, _ = topics
    index = single_vector_index(pages)
    vectors = np.stack([mean_vector(p.astype("<f2").astype(np.float32)).astype("<f2") for p in pages]).astype(float)
    cosine = vectors @ vectors[3]
    expected = [i for i in np.argsort(-cosine, kind="stable") if i != 3][:4]
    hits = index.similar_pages(3, top_k=4)
    assert [h.page_index for h in hits] == expected
    np.testing.assert_allclose([h.score for h in hits], cosine[expected], rtol=1e-5)
    searcher = Searcher(QueryModel("tiny"), local=index, top_k=4)
    assert [h.page_id for h in searcher.similar_pages("doc3-p1")] == [f"doc{i}-p1" for i in expected]


def test_local_hybrid_retrieves_text_matches_and_adds_bm25_with_vespas_weight(topics):
    from pipelines.text_search import HYBRID_BM25_WEIGHT, TextIndex, reciprocal_rank_fusion

    pages, query = topics
    texts = {i: f"page {i} about topic {i % 6}" for i in range(30)} | {21: "quarterly revenue by region"}
    index = single_vector_index(pages, texts=texts, titles={21: "Revenue"})
    words = "revenue by region"
    nearest = set(index.nearest_neighbor_candidates(query, target_hits=1).tolist())
    assert 21 not in nearest, "the text match must come from the text side of the retrieval"
    options = {"retrieval": "nearest_neighbor", "target_hits": 1}
    hits = index.search(query, 30, "hybrid", 30, text=words, **options)
    retrieved = sorted(nearest | {21})
    bm25 = TextIndex([None] * 21 + ["Revenue"] + [None] * 8, [texts[i] for i in range(30)]).scores(words)
    fused = {i: reference_float_maxsim(query, pages[i]) + HYBRID_BM25_WEIGHT * bm25[i] for i in retrieved}
    assert [h.page_index for h in hits] == sorted(fused, key=lambda i: -fused[i])
    np.testing.assert_allclose([h.score for h in hits], [fused[h.page_index] for h in hits], rtol=1e-5)
    assert hits[0].page_index == 21  # the only page with the words: BM25 outweighs the MaxSim differences
    # Without words hybrid is two_phase; rrf fuses the two rankings by rank instead.
    plain = index.search(query, 5, "hybrid", 30, **options)
    assert [(h.page_index, h.score) for h in plain] == [
        (h.page_index, h.score) for h in index.search(query, 5, "two_phase", 30, **options)
    ]
    rrf = index.search(query, 30, "hybrid", 30, text=words, fusion="rrf", **options)
    exact = np.array([reference_float_maxsim(query, pages[i]) for i in retrieved])
    expected = reciprocal_rank_fusion(exact, bm25[retrieved])
    assert [h.page_index for h in rrf] == [retrieved[i] for i in np.lexsort((retrieved, -expected))]
    searcher = Searcher(QueryModel("tiny"), local=index, profile="hybrid", top_k=1, encoder=FakeEncoder(pages))
    assert searcher.search_vectors([query], texts=[words])[0][0].page_id == "doc21-p1"


def test_the_pipelines_index_answers_every_profile_with_the_page_itself(sample_index):
    from pipelines.index import IndexLocation

    pages = IndexLocation(str(sample_index[0])).read_pages()
    index = LocalIndex(pages)
    assert index.page_vectors.shape == (len(index), index.dim)
    assert index.muvera_vectors.shape == (len(index), MuveraSettings().dim(index.dim))
    rerank = pages.column("rerank_embedding").to_pylist()
    # MUVERA's dot product is not MaxSim: on the test model's near-parallel vectors a page's own encoding is often not
    # its nearest (see reports/benchmarks.md), so its candidates here are every page and the exact rerank decides.
    candidates = {"muvera": len(index), "page_vector": 3, "hybrid": 5, "two_phase": 5}
    for i in range(0, len(index), 3):
        own = schema.decode_embedding(rerank[i], index.dim).astype(np.float32)
        for profile, hits in candidates.items():
            options = {"retrieval": "nearest_neighbor", "target_hits": hits, "page_target_hits": hits}
            found = index.search(own, 1, profile, 20, text="zzzqqq", **options)
            assert found[0].page_index == i, (profile, i)


def test_search_job_lists_the_pages_like_a_page(sample_index):
    from jobs.search import run_search
    from pipelines.index import IndexLocation
    from tests.helpers import compose_config

    pages = IndexLocation(str(sample_index[0])).read_pages()
    page_ids = pages.column("page_id").to_pylist()
    expected = [page_ids[h.page_index] for h in LocalIndex(pages).similar_pages(4, top_k=3)]
    rows = run_search(compose_config("search", [f"index={sample_index[0]}", f"similar_to={page_ids[4]}", "top_k=3"]))
    assert [r["page_id"] for r in rows] == expected and {r["query"] for r in rows} == {f"like {page_ids[4]}"}
    with pytest.raises(ConfigError, match="no page 'nope'"):
        run_search(compose_config("search", [f"index={sample_index[0]}", "similar_to=nope"]))
