"""Benchmark 4, search: queries/s and memory of LocalIndex against colpali-engine's ``score_multi_vector``.

Both rank the same synthetic index (isotropic unit Gaussian vectors, float16 as stored). ``score_multi_vector`` is
measured with all queries in one call (``smv_batched``, the baseline) and one query per call (``smv_per_query``),
each method interleaved with the others per repeat. The float profile must return the same top-10. ``two_phase`` is
the deployed profile: hamming first phase over the retrieved pages (``retrieval``: every page, or the per-token
nearest neighbours with ``target_hits``), then exact float MaxSim on the top ``rerank_count``.

With ``rerank_vectors`` the index has the deployed layout (``pooling.rerank_pool_factor=1``): every page holds that
many float16 re-ranking vectors (the unpooled ones, which ``float`` and ``score_multi_vector`` score) and a third of
them as its binary candidate vectors (every third row: a stand-in for pool-3 vectors; speed does not depend on the
values).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa

from benchmarks.common import REFERENCE_DIM, TOP_K, binary_column, check, peak_memory, top_indexes, unit_rows
from pipelines import schema
from pipelines.stages.compress import binarize


def synthetic_index(
    n_pages: int, vectors: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(embedding float16 (V, dim), binary uint8 (V, dim / 8), offsets)`` of unit Gaussian page vectors (``dim``:
    the reference model's width), built in blocks.

    Isotropic Gaussian is enough for speed (the work does not depend on the values) and keeps 100k pages cheap.
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(vectors[0], vectors[1] + 1, size=n_pages)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    embedding = np.empty((total, REFERENCE_DIM), dtype="<f2")
    bits = np.empty((total, schema.binary_bytes(REFERENCE_DIM)), dtype=np.uint8)
    step = 1 << 19
    for start in range(0, total, step):
        stop = min(start + step, total)
        block = unit_rows(rng.standard_normal((stop - start, REFERENCE_DIM), dtype=np.float32))
        embedding[start:stop] = block
        bits[start:stop] = binarize(embedding[start:stop].astype(np.float32))
    return embedding, bits, offsets


def _smv_scores(score_multi_vector, queries, embedding, offsets, chunk_pages, cached=None) -> tuple[np.ndarray, float]:
    """colpali-engine's ``score_multi_vector`` over every page, ``chunk_pages`` pages per call (memory-bounded).

    Returns ``(scores (n_queries, n_pages), seconds spent inside score_multi_vector)``. Converting the stored float16
    rows to its float32 tensor input is not timed (a user of it would hold those tensors already).
    """
    import torch

    n_pages = len(offsets) - 1
    qs = [torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)) for q in queries]
    parts, seconds = [], 0.0
    for first in range(0, n_pages, chunk_pages):
        last = min(first + chunk_pages, n_pages)
        if cached is not None:
            ps = cached[first:last]
        else:
            ps = [
                torch.from_numpy(embedding[offsets[i] : offsets[i + 1]].astype(np.float32)) for i in range(first, last)
            ]
        started = time.perf_counter()
        parts.append(score_multi_vector(qs, ps, device="cpu").numpy())
        seconds += time.perf_counter() - started
        del ps
    return np.concatenate(parts, axis=1), seconds


def bench_search(
    sizes: tuple[int, ...] = (1000,),
    repeats: int = 3,
    vectors: tuple[int, int] = (200, 256),
    query_tokens: int = 20,
    rerank_count: int = 100,
    smv_chunk_pages: int = 10000,
    per_query_baseline_max_pages: int = 10000,
    n_queries: int | None = None,
    seed: int = 0,
    rerank_vectors: tuple[int, int] | None = None,
    retrieval: str = "all",
    target_hits: int = 20,
    smv_cache_max_bytes: int = 4 * 2**30,
) -> dict:
    """Queries/s and memory of LocalIndex (two_phase, float) vs colpali-engine's score_multi_vector, same data."""
    import torch
    from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor

    from pipelines.search import LocalIndex

    score_multi_vector = BaseVisualRetrieverProcessor.score_multi_vector
    runs = []
    for n_pages in sizes:
        started = time.perf_counter()
        embedding, bits, offsets = synthetic_index(n_pages, rerank_vectors or vectors, seed)
        generate_seconds = time.perf_counter() - started
        rng = np.random.default_rng(seed + 1)
        # Fewer queries as the index grows: 16 at 1k pages, 10 at 10k, 4 at 100k.
        count = n_queries or min(16, max(4, 100_000 // n_pages))
        queries = []
        for target in rng.integers(0, n_pages, count):
            page = embedding[offsets[target] : offsets[target + 1]].astype(np.float32)
            # Half the tokens are noisy copies of the target page's vectors, so rankings have a real top.
            near = page[rng.integers(0, len(page), query_tokens // 2)] + rng.normal(
                scale=0.8, size=(query_tokens // 2, REFERENCE_DIM)
            )
            far = rng.standard_normal((query_tokens - query_tokens // 2, REFERENCE_DIM))
            queries.append(unit_rows(np.concatenate([near, far])))
        if rerank_vectors is None:
            table = pa.table(
                {
                    "n_vectors": pa.array(np.diff(offsets).astype(np.int32)),
                    "embedding": binary_column(embedding, offsets),
                    "binary": binary_column(bits, offsets),
                }
            )
        else:
            # Candidates: every third row of each page; re-ranking vectors: all of them.
            counts = np.diff(offsets)
            local = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], counts)
            keep = local % 3 == 0
            candidate_counts = -(-counts // 3)
            table = pa.table(
                {
                    "n_vectors": pa.array(candidate_counts.astype(np.int32)),
                    "binary": binary_column(bits[keep], np.concatenate([[0], np.cumsum(candidate_counts)])),
                    "n_rerank_vectors": pa.array(counts.astype(np.int32)),
                    "rerank_embedding": binary_column(embedding, offsets),
                }
            )
        started = time.perf_counter()
        with peak_memory() as build_memory:
            index = LocalIndex(table)
        build_seconds = time.perf_counter() - started
        del table, embedding, bits
        # Hold score_multi_vector's float32 input in memory when it is small; else convert chunk by chunk.
        cached = None
        float_offsets = index.float_offsets
        float32_bytes = int(float_offsets[-1]) * index.dim * 4
        if float32_bytes <= smv_cache_max_bytes:
            cached = [
                torch.from_numpy(index.embedding[float_offsets[i] : float_offsets[i + 1]].astype(np.float32))
                for i in range(len(index))
            ]
        methods = ["two_phase", "float", "smv_batched"]
        if n_pages <= per_query_baseline_max_pages:
            methods.append("smv_per_query")
        seconds: dict[str, list[float]] = {m: [] for m in methods}
        peaks: dict[str, int | None] = {m: None for m in methods}
        tops: dict[str, list] = {}
        smv_scores = None
        # Above 10k pages a single repeat (each takes minutes); the run records how many it made.
        size_repeats = repeats if n_pages <= 10_000 else 1
        for repeat in range(size_repeats):
            order = methods[repeat % len(methods) :] + methods[: repeat % len(methods)]
            for method in order:
                with peak_memory() as memory:
                    if method in ("two_phase", "float"):
                        started = time.perf_counter()
                        options = {"retrieval": retrieval, "target_hits": target_hits} if method == "two_phase" else {}
                        hits = [index.search(q, TOP_K, method, rerank_count, **options) for q in queries]
                        elapsed = time.perf_counter() - started
                        tops[method] = [[h.page_index for h in hit] for hit in hits]
                    elif method == "smv_batched":
                        scores, elapsed = _smv_scores(
                            score_multi_vector, queries, index.embedding, float_offsets, smv_chunk_pages, cached
                        )
                        tops[method] = [top_indexes(row, TOP_K).tolist() for row in scores]
                        smv_scores = scores
                    else:
                        elapsed = sum(
                            _smv_scores(
                                score_multi_vector, [q], index.embedding, float_offsets, smv_chunk_pages, cached
                            )[1]
                            for q in queries
                        )
                seconds[method].append(elapsed)
                peaks[method] = max(peaks[method] or 0, memory["peak_bytes"] or 0)
        float_scores = np.stack([index.float_maxsim(q) for q in queries])
        equal = sum(a == b for a, b in zip(tops["float"], tops["smv_batched"], strict=True))
        resident = {
            # packed bits plus their word-column copy, and the float16 vectors the second phase re-ranks
            "two_phase": 2 * index.binary.nbytes + index.embedding.nbytes,
            "float": index.embedding.nbytes,
            "smv_batched": float32_bytes,
            "smv_per_query": float32_bytes,
        }
        method_rows = {}
        for method in methods:
            best = min(seconds[method])
            method_rows[method] = {
                "seconds_per_query": best / count,
                "queries_per_second": count / best,
                "seconds_per_repeat": seconds[method],
                "resident_bytes": resident[method],
                "transient_peak_bytes": peaks[method],
            }
        baseline = min(seconds["smv_batched"])
        for method in methods:
            method_rows[method]["speedup_vs_smv_batched"] = baseline / min(seconds[method])
            if "smv_per_query" in methods:
                method_rows[method]["speedup_vs_smv_per_query"] = min(seconds["smv_per_query"]) / min(seconds[method])
        runs.append(
            {
                "pages": n_pages,
                "vectors": int(index.offsets[-1]),
                "rerank_vectors": int(float_offsets[-1]),
                "queries": count,
                "repeats": size_repeats,
                "generate_seconds": generate_seconds,
                "build_seconds": build_seconds,
                "build_peak_bytes": build_memory["peak_bytes"],
                "smv_input": "held as float32 tensors"
                if cached is not None
                else f"converted {smv_chunk_pages} pages at a time",
                "methods": method_rows,
                "float_top10_equal_smv": equal,
                "float_max_abs_score_diff_vs_smv": float(np.abs(float_scores - smv_scores).max()),
                "two_phase_top10_overlap_with_float": float(
                    np.mean(
                        [len(set(a) & set(b)) / TOP_K for a, b in zip(tops["two_phase"], tops["float"], strict=True)]
                    )
                ),
            }
        )
        del index, cached, tops
    at_10k = next((r for r in runs if r["pages"] == 10_000), None)
    note = "" if at_10k else "not run at 10,000 pages"
    speedups = at_10k["methods"]["two_phase"] if at_10k else {}
    checks = [
        check(
            "search_speed_10k_per_query",
            "at 10k pages, LocalIndex two_phase >= 3x the queries/s of score_multi_vector, both one query per call",
            speedups.get("speedup_vs_smv_per_query"),
            3.0,
            note,
        ),
        check(
            "search_speed_10k_batched",
            "at 10k pages, LocalIndex two_phase (one query per call) >= 3x the queries/s of score_multi_vector "
            "given all queries in one call",
            speedups.get("speedup_vs_smv_batched"),
            3.0,
            note,
        ),
    ]
    for run in runs:
        checks.append(
            check(
                f"search_float_equals_smv_{run['pages']}",
                f"at {run['pages']:,} pages the float profile returns the same top-10 as score_multi_vector "
                "(share of queries)",
                run["float_top10_equal_smv"] / run["queries"],
                1.0,
            )
        )
    return {
        "params": {
            "sizes": list(sizes),
            "repeats": repeats,
            "vectors_per_page": list(vectors),
            "vector_shape": (
                f"{vectors[0]}-{vectors[1]} x {REFERENCE_DIM} per page (ColQwen2.5 pages, 731-779 vectors, pooled 3x)"
            ),
            "query_tokens": query_tokens,
            "dim": REFERENCE_DIM,
            "rerank_count": rerank_count,
            "rerank_vectors_per_page": list(rerank_vectors) if rerank_vectors else None,
            "retrieval": retrieval,
            "target_hits": target_hits if retrieval == "nearest_neighbor" else None,
            "top_k": TOP_K,
            "smv_chunk_pages": smv_chunk_pages,
            "torch_threads": torch.get_num_threads(),
            "first_phase_threads": len(os.sched_getaffinity(0)),
            "data": (
                "isotropic unit Gaussian vectors (float16 as stored); queries: half noisy copies of a target page's "
                "vectors, half random"
            ),
        },
        "results": {"runs": runs},
        "checks": checks,
    }


def bench_hybrid(model: str = "tiny", top_k: int = 10, rerank_count: int = 200, target_hits: int = 20) -> dict:
    """Whether the text layer helps: the sample corpus's queries (one answering page each, ``queries.jsonl``) over an
    index of the sample corpus built with ``model`` (the deployed defaults), ranked by ``two_phase``, ``hybrid``
    (Vespa's weights: exact MaxSim + 2 x BM25 of title and text), ``hybrid`` with reciprocal rank fusion, BM25 alone
    (:class:`pipelines.text_search.TextIndex`) and the one-vector profiles. Metrics: ir-measures over the qrels
    (nDCG@5/10, Recall@1/5/10, MRR), as ``jobs.evaluate``.
    """
    import tempfile
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from benchmarks.common import REPO
    from pipelines.driver import run_index
    from pipelines.evaluation import compute_metrics, load_dataset, page_corpus_id
    from pipelines.index import IndexLocation
    from pipelines.search import LocalIndex, QueryModel, Searcher
    from pipelines.testing.corpus import generate_sample_corpus

    with tempfile.TemporaryDirectory(prefix="bench-hybrid-") as tmp:
        corpus, out = Path(tmp) / "corpus", Path(tmp) / "index"
        generate_sample_corpus(corpus)
        overrides = [f"source.location={corpus}", f"output.location={out}", f"model={model}", "backend=local"]
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            run_index(compose("index", overrides=overrides))
        dataset = load_dataset(str(corpus), tmp)
        pages = IndexLocation(str(out)).read_pages()
        corpus_ids = [
            page_corpus_id(corpus, uri, number)
            for uri, number in zip(
                pages.column("source_uri").to_pylist(), pages.column("page_number").to_pylist(), strict=True
            )
        ]
    index = LocalIndex(pages)
    ids = dataset.evaluated_queries
    texts = [dataset.queries[q] for q in ids]
    options = {"top_k": top_k, "rerank_count": rerank_count, "retrieval": "nearest_neighbor"}
    options |= {"target_hits": target_hits, "page_target_hits": rerank_count}
    searcher = Searcher(QueryModel(model), local=index, **options)
    vectors = searcher.encode(texts)
    runs: dict[str, dict[str, list[str]]] = {}
    for name, profile, fusion in (
        ("two_phase", "two_phase", "linear"),
        ("hybrid (linear, Vespa's weights)", "hybrid", "linear"),
        ("hybrid (reciprocal rank fusion)", "hybrid", "rrf"),
        ("muvera", "muvera", "linear"),
        ("page_vector", "page_vector", "linear"),
    ):
        searcher.fusion = fusion
        hits = searcher.search_vectors(vectors, texts, profile=profile)
        runs[name] = {q: [corpus_ids[h.page_index] for h in found] for q, found in zip(ids, hits, strict=True)}

    def bm25_alone(text: str) -> list[str]:
        scores = index.text_index.scores(text)
        return [corpus_ids[i] for i in top_indexes(scores, top_k) if scores[i] > 0]

    runs["BM25 alone (title + text)"] = {q: bm25_alone(t) for q, t in zip(ids, texts, strict=True)}
    metrics = {name: compute_metrics(dataset.qrels, ranked)[0] for name, ranked in runs.items()}
    page_texts = dict(zip(corpus_ids, pages.column("text").to_pylist(), strict=True))
    no_text = [q for q in ids if not any(page_texts[c] for c in dataset.qrels[q])]
    return {
        "params": {"model": model, "top_k": top_k, "rerank_count": rerank_count, "target_hits": target_hits},
        "results": {
            "pages": len(index),
            "queries": len(ids),
            "queries_answered_by_a_page_without_text": len(no_text),
            "metrics": metrics,
        },
        "checks": [],
    }
