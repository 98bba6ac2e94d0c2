"""Search an index: encode queries with the index's model, rank pages locally or in Vespa.

:class:`Searcher` is the one entry point for "encode the query, rank, return pages" (the search job
and the evaluation both use it). It is built from config (:meth:`Searcher.from_config`: an index
location, or a Vespa endpoint) or from parts, loads its query encoder once, and answers a list of
queries (or pre-encoded query vectors) with :class:`PageHit` lists, best first, the same fields from
either backend. Errors are raised, never turned into exits: :class:`~pipelines.errors.ConfigError`
for unusable settings, ``FileNotFoundError`` when there is no index, :class:`SearchError` when Vespa
cannot answer.

:class:`LocalIndex` is the local backend, with the same ranking the Vespa profiles run.

* Retrieval: ``all`` pages, or Vespa's ``nearest_neighbor``: for each of the first ``max_query_tokens``
  query tokens, the ``target_hits`` pages whose closest binary vector is nearest in hamming distance
  (exact here, HNSW in Vespa), and the union of those pages is what the phases rank.
* First phase (every retrieved page): hamming MaxSim over binary vectors. For query token ``q`` and
  page patch ``d`` the similarity is ``1 / (1 + hamming(bits(q), bits(d)))``; a page scores the sum over
  query tokens of the max over its patches.
* Second phase (top ``rerank_count`` pages of the first phase): ``two_phase`` is exact MaxSim of the float
  query over the stored float re-ranking vectors (``rerank_embedding`` when the index has it, e.g.
  unpooled, else ``embedding``); ``two_phase_unpacked`` is float query × ``unpack_bits(d)`` (0/1 per bit)
  MaxSim, for indexes fed without float vectors.
* ``float`` is exact MaxSim over the float re-ranking vectors of every page; ``binary`` the first phase only.
* ``hybrid``: ``two_phase`` whose retrieval adds the best BM25 matches of the query's words
  (:mod:`pipelines.text_search`, title and text layer) and whose second phase adds
  ``HYBRID_BM25_WEIGHT * (bm25(title) + bm25(text))``, the Vespa profile's weights; ``fusion="rrf"`` fuses the
  two by reciprocal rank instead.
* One vector per page (:mod:`pipelines.muvera`): ``muvera`` retrieves the ``page_target_hits`` pages whose MUVERA
  encoding has the largest dot product with the query's (brute force here, HNSW in Vespa), ranks them by it and
  re-ranks the top ``rerank_count`` by exact MaxSim; ``page_vector`` does the same with the cosine of the mean page
  vector and the query's mean vector. :meth:`LocalIndex.similar_pages` ranks pages by their page vectors' cosine
  to one page's ("pages like this page").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from pipelines import index, schema
from pipelines.errors import ConfigError, require_int
from pipelines.index.ledger import INDEX_META
from pipelines.muvera import MuveraSettings, query_vector
from pipelines.stages.compress import binarize, unpack_bits
from pipelines.text_search import HYBRID_BM25_WEIGHT, TEXT_TARGET_HITS, TextIndex, reciprocal_rank_fusion, top_matches

if TYPE_CHECKING:
    from pipelines.models.encoder import MultiVectorEncoder
    from pipelines.vespa.client import VespaEndpoint
    from pipelines.vespa.query import VespaQuerySettings

PROFILES = ("two_phase", "two_phase_unpacked", "float", "binary", "hybrid", "muvera", "page_vector")
#: Profiles whose ranking reads the float re-ranking vectors.
FLOAT_PROFILES = ("two_phase", "float", "hybrid", "muvera", "page_vector")
#: The one-vector-per-page profiles and the index column each retrieves with.
SINGLE_VECTOR_PROFILES = {"muvera": "muvera_embedding", "page_vector": "page_embedding"}
#: How ``hybrid`` combines exact MaxSim and BM25: Vespa's weighted sum, or reciprocal rank fusion.
FUSIONS = ("linear", "rrf")
#: How candidates are found: every page, or per-token nearest neighbours over the binary vectors (Vespa's way).
RETRIEVALS = ("all", "nearest_neighbor")
#: Vectors per first-phase chunk: its (tokens, n) uint64 temporary then stays within L2 cache.
CHUNK_VECTORS = 8192
#: Vectors per float-profile chunk: bounds the float32 copy of float16 rows to 32 MiB.
FLOAT_CHUNK_VECTORS = 65536
#: Most hits one query may ask for (``top_k``): Vespa's default ``maxHits``, beyond which it refuses the query, so
#: both backends accept the same values.
MAX_TOP_K = 400


@dataclass
class Hit:
    page_index: int
    score: float


class LocalIndex:
    """All pages of an index in memory as flat vector arrays with per-page offsets.

    ``dim`` is the index's vector width (:func:`pipelines.schema.table_dim`: the model's, e.g. 128 or 320);
    queries must have it. ``binary`` is ``(V, dim / 8)`` uint8 (the candidate vectors;
    ``offsets[i]:offsets[i+1]`` are page ``i``'s rows) and ``embedding`` the float16 ``(W, dim)`` re-ranking
    vectors (``float_offsets``; loaded only when needed): the ``rerank_embedding`` column when the index
    stores one (``pooling.rerank_pool_factor``), else ``embedding``, whose rows then share ``offsets``.
    ``threads`` bounds the worker threads of the first phase (numpy releases the GIL inside its loops, so
    chunks of pages score in parallel).

    ``page_vectors`` and ``muvera_vectors`` are the one-vector-per-page columns (``page_embedding``,
    ``muvera_embedding``) as float32 ``(pages, d)`` matrices, or None when the index lacks them (or some of its parts
    predate them); ``muvera`` are the settings the index's encodings were built with (its ``pooling.muvera``),
    which encode the queries the same way (default: :class:`~pipelines.muvera.MuveraSettings`).

    Scoring works on page-aligned chunks of vectors so that temporaries stay small (cache-sized for
    the first phase, bounded for the float profile) whatever the index size; chunking changes
    neither the math nor the order of the float64 sums.
    """

    def __init__(
        self,
        pages: pa.Table,
        load_float: bool = True,
        threads: int | None = None,
        muvera: MuveraSettings | None = None,
    ):
        vector_columns = ("embedding", "binary", "rerank_embedding", *SINGLE_VECTOR_PROFILES.values())
        self.pages = pages.drop_columns([c for c in vector_columns if c in pages.column_names])
        counts = np.asarray(pages.column("n_vectors").to_numpy(zero_copy_only=False), dtype=np.int64)
        if (counts < 1).any():
            msg = "every indexed page must have at least one vector"
            raise ValueError(msg)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.dim = schema.table_dim(pages)
        self.binary = _column_bytes(pages.column("binary")).reshape(-1, schema.binary_bytes(self.dim))
        _check_rows(self.binary, self.offsets, "binary")
        # The 64-bit words of every vector (ceil(dim / 64) of them, zero-padded) as contiguous rows: hamming
        # distance is then one XOR and one popcount per word over contiguous memory for all query tokens at once.
        self._words = np.ascontiguousarray(_words(self.binary).T)
        # Separate re-ranking vectors: an index written with pooling.rerank_pool_factor (older parts read as nulls).
        self.separate_rerank = "rerank_embedding" in pages.column_names and pages.column(
            "rerank_embedding"
        ).null_count < len(pages)
        self.float_offsets = self.offsets
        if self.separate_rerank:
            float_counts = np.asarray(pages.column("n_rerank_vectors").to_numpy(zero_copy_only=False), dtype=np.int64)
            self.float_offsets = np.concatenate([[0], np.cumsum(float_counts)])
        self.embedding = None
        if load_float:
            column = "rerank_embedding" if self.separate_rerank else "embedding"
            self.embedding = _column_bytes(pages.column(column)).view("<f2").reshape(-1, self.dim)
            _check_rows(self.embedding, self.float_offsets, column)
        # Kept as columns until a profile needs them (a MUVERA encoding is 40 KiB per page in float32).
        self._single_columns = {c: pages.column(c) for c in SINGLE_VECTOR_PROFILES.values() if c in pages.column_names}
        self._single: dict[str, np.ndarray | None] = {}
        self.muvera = muvera or MuveraSettings()
        self._text: TextIndex | None = None
        self.threads = max(1, threads or len(os.sched_getaffinity(0)))
        self._chunks = _page_chunks(self.offsets, CHUNK_VECTORS)
        self._float_chunks = _page_chunks(self.float_offsets, FLOAT_CHUNK_VECTORS)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def nearest_distances(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(nearest, token_code)``: ``nearest[c, p]`` is the smallest hamming distance between the
        sign bits of distinct query code ``c`` and any binary vector of page ``p``; query token ``t``
        has code ``token_code[t]``."""
        self.check_query(query)
        # Tokens with identical sign bits have identical distances: score each distinct code once.
        query_words = _words(binarize(query))  # (q, words)
        codes, token_code = np.unique(query_words, axis=0, return_inverse=True)
        code_words = [codes[:, w : w + 1].copy() for w in range(codes.shape[1])]
        # Distances reach dim: uint8 holds them up to 255 (128-d), wider models need uint16.
        distance_type = np.uint8 if self.dim <= np.iinfo(np.uint8).max else np.uint16
        nearest = np.empty((len(codes), len(self)), dtype=distance_type)

        def score_chunk(chunk: tuple[int, int]) -> None:
            first, last = chunk
            start, stop = self.offsets[first], self.offsets[last]
            xor = np.bitwise_xor(self._words[0, start:stop], code_words[0])  # (codes, n): every code at once
            distance = np.bitwise_count(xor).astype(distance_type, copy=False)
            for w in range(1, len(code_words)):
                np.bitwise_xor(self._words[w, start:stop], code_words[w], out=xor)
                distance += np.bitwise_count(xor)
            nearest[:, first:last] = np.minimum.reduceat(distance, self.offsets[first:last] - start, axis=1)

        if self.threads > 1 and len(self._chunks) > 1:
            with ThreadPoolExecutor(min(self.threads, len(self._chunks))) as pool:
                list(pool.map(score_chunk, self._chunks))
        else:
            for chunk in self._chunks:
                score_chunk(chunk)
        return nearest, token_code.reshape(-1)

    def check_query(self, query: np.ndarray) -> None:
        """Raise :class:`ConfigError` (a ``ValueError``) unless ``query`` is ``(q, dim)``: queries must come from the
        index's model (a ``model.name_or_path`` pointing at another checkpoint gives other widths)."""
        if query.ndim != 2 or query.shape[1] != self.dim:
            msg = (
                f"query vectors of shape {query.shape} against an index of {self.dim}-d vectors: encode the "
                "queries with the model the index was built with (check model.name_or_path)"
            )
            raise ConfigError(msg)

    def hamming_maxsim(self, query: np.ndarray) -> np.ndarray:
        """First-phase score of every page for float query vectors ``(q, dim)``."""
        return _hamming_scores(*self.nearest_distances(query))

    def nearest_neighbor_candidates(
        self, query: np.ndarray, target_hits: int = 100, max_query_tokens: int = 64, nearest=None
    ) -> np.ndarray:
        """Pages Vespa's retrieval matches: the union over the first ``max_query_tokens`` query tokens of
        the ``target_hits`` pages nearest to the token (smallest hamming distance to any of their binary
        vectors; ties by page order), sorted. Exact, where Vespa's HNSW is approximate."""
        nearest, token_code = nearest if nearest is not None else self.nearest_distances(query)
        codes = np.unique(token_code[:max_query_tokens])
        k = min(target_hits, len(self))
        found = []
        for code in codes:
            distance = nearest[code]
            if k >= len(self):
                found.append(np.arange(len(self)))
                continue
            # The k-th smallest distance may be shared by more pages than fit: keep the lowest page indexes.
            kth = np.partition(distance, k - 1)[k - 1]
            below = np.flatnonzero(distance < kth)
            found += [below, np.flatnonzero(distance == kth)[: k - len(below)]]
        return np.unique(np.concatenate(found)) if found else np.arange(0)

    def _maxsim(self, query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        self.check_query(query)
        similarity = query.astype(np.float32) @ vectors.T  # (q, V)
        return np.maximum.reduceat(similarity, offsets[:-1], axis=1).sum(axis=0, dtype=np.float64)

    def _maxsim_of_pages(self, query: np.ndarray, page_indexes: np.ndarray, unpacked: bool) -> np.ndarray:
        """MaxSim of the given pages, over their float vectors or their unpacked bits, in bounded chunks."""
        offsets = self.offsets if unpacked else self.float_offsets
        if not unpacked and self.embedding is None:
            msg = "index was loaded without float vectors (load_float=False)"
            raise ValueError(msg)
        page_indexes = np.asarray(page_indexes, dtype=np.int64)
        counts = offsets[page_indexes + 1] - offsets[page_indexes]
        scores = np.empty(len(page_indexes), dtype=np.float64)
        first = 0
        while first < len(page_indexes):
            # Whole pages up to about FLOAT_CHUNK_VECTORS rows (at least one page).
            total = np.cumsum(counts[first:])
            last = first + max(1, int(np.searchsorted(total, FLOAT_CHUNK_VECTORS, side="right")))
            rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in page_indexes[first:last]])
            vectors = unpack_bits(self.binary[rows]) if unpacked else self.embedding[rows].astype(np.float32)
            chunk_offsets = np.concatenate([[0], np.cumsum(counts[first:last])])
            scores[first:last] = self._maxsim(query, vectors, chunk_offsets)
            first = last
        return scores

    def unpacked_maxsim(self, query: np.ndarray, page_indexes: np.ndarray) -> np.ndarray:
        """``two_phase_unpacked`` second phase (float query × unpacked bits) of the given pages."""
        return self._maxsim_of_pages(query, page_indexes, unpacked=True)

    def float_maxsim_of(self, query: np.ndarray, page_indexes: np.ndarray) -> np.ndarray:
        """``two_phase`` second phase: exact MaxSim of the given pages over their float re-ranking vectors."""
        return self._maxsim_of_pages(query, page_indexes, unpacked=False)

    def float_maxsim(self, query: np.ndarray) -> np.ndarray:
        """Exact MaxSim of every page over its stored float16 re-ranking vectors."""
        if self.embedding is None:
            msg = "index was loaded without float vectors (load_float=False)"
            raise ValueError(msg)
        scores = np.empty(len(self), dtype=np.float64)
        # One chunk of float16 rows converted at a time: a float32 copy of the whole index would
        # double its memory.
        offsets = self.float_offsets
        for first, last in self._float_chunks:
            start, stop = offsets[first], offsets[last]
            vectors = self.embedding[start:stop].astype(np.float32)
            scores[first:last] = self._maxsim(query, vectors, offsets[first : last + 1] - start)
        return scores

    @property
    def page_vectors(self) -> np.ndarray | None:
        """``page_embedding`` as float32 ``(pages, dim)`` (converted on first use), None when the index lacks it."""
        return self._single_vectors("page_embedding")

    @property
    def muvera_vectors(self) -> np.ndarray | None:
        """``muvera_embedding`` as float32 ``(pages, muvera dim)``, None when the index lacks it."""
        return self._single_vectors("muvera_embedding")

    def _single_vectors(self, column: str) -> np.ndarray | None:
        # float32 once: a brute-force dot product per query then runs in BLAS (float16 matmul does not).
        if column not in self._single:
            self._single[column] = _single_vectors(self._single_columns.get(column), len(self))
        return self._single[column]

    def single_vector_scores(self, query: np.ndarray, profile: str) -> np.ndarray:
        """First-phase score of every page for a one-vector profile: ``muvera``, the dot product of the query's
        and the page's MUVERA encodings; ``page_vector``, the cosine of the query's and the page's mean vectors."""
        self.check_query(query)
        column = SINGLE_VECTOR_PROFILES[profile]
        vectors = self.muvera_vectors if profile == "muvera" else self.page_vectors
        if vectors is None:
            msg = (
                f"the {profile} profile needs the index's {column} column, which this index (or some of its parts) "
                "lacks: rebuild it with pooling.page_vector=true and pooling.muvera set (the defaults)"
            )
            raise ValueError(msg)
        if profile == "muvera" and self.muvera.dim(self.dim) != vectors.shape[1]:
            msg = (
                f"the index's muvera_embedding has {vectors.shape[1]} values per page but {self.muvera} gives "
                f"{self.muvera.dim(self.dim)}: search with the index's own pooling.muvera settings"
            )
            raise ValueError(msg)
        return (vectors @ query_vector(profile, query, self.muvera)).astype(np.float64)

    def similar_pages(self, page_index: int, top_k: int = 10) -> list[Hit]:
        """The ``top_k`` other pages whose page vectors have the highest cosine to page ``page_index``'s."""
        if self.page_vectors is None:
            msg = "similar pages need the index's page_embedding column: rebuild it with pooling.page_vector=true"
            raise ValueError(msg)
        scores = (self.page_vectors @ self.page_vectors[page_index]).astype(np.float64)
        others = np.flatnonzero(np.arange(len(self)) != page_index)
        return _top(scores[others], others, top_k)

    @property
    def text_index(self) -> TextIndex:
        """BM25 over the pages' ``title`` and ``text`` (built on first use)."""
        if self._text is None:
            columns = self.pages.column_names
            titles = self.pages.column("title").to_pylist() if "title" in columns else [None] * len(self)
            texts = self.pages.column("text").to_pylist() if "text" in columns else [None] * len(self)
            self._text = TextIndex(titles, texts)
        return self._text

    def search(
        self,
        query: np.ndarray,
        top_k: int = 10,
        profile: str = "two_phase",
        rerank_count: int = 100,
        retrieval: str = "all",
        target_hits: int = 100,
        max_query_tokens: int = 64,
        *,
        text: str | None = None,
        page_target_hits: int = 200,
        fusion: str = "linear",
        text_target_hits: int = TEXT_TARGET_HITS,
    ) -> list[Hit]:
        """Top ``top_k`` pages for one query's vectors, best first, as :class:`Hit` list.

        ``retrieval`` picks the pages the phases rank (``all``, or ``nearest_neighbor`` with
        ``target_hits`` per query token, as Vespa's query does; for ``muvera`` and ``page_vector`` the
        ``page_target_hits`` nearest pages by their one vector); the ``float`` profile ranks the
        retrieved pages by exact MaxSim alone. ``hybrid`` also retrieves the ``text_target_hits`` best BM25
        matches of ``text`` (the query's words) and adds their BM25 in the second phase (``fusion``).
        """
        if profile not in PROFILES:
            msg = f"profile must be one of {PROFILES}, got {profile!r}"
            raise ValueError(msg)
        if retrieval not in RETRIEVALS:
            msg = f"retrieval must be one of {RETRIEVALS}, got {retrieval!r}"
            raise ValueError(msg)
        if fusion not in FUSIONS:
            msg = f"fusion must be one of {FUSIONS}, got {fusion!r}"
            raise ValueError(msg)
        if len(self) == 0:
            return []
        if profile in SINGLE_VECTOR_PROFILES:
            scores = self.single_vector_scores(query, profile)
            matched = np.arange(len(self)) if retrieval == "all" else np.sort(_top_indexes(scores, page_target_hits))
            candidates = matched[_top_indexes(scores[matched], max(rerank_count, top_k))]
            return _top(self.float_maxsim_of(query, candidates), candidates, top_k)
        if profile == "float" and retrieval == "all":
            return _top(self.float_maxsim(query), np.arange(len(self)), top_k)
        nearest = self.nearest_distances(query)
        if retrieval == "all":
            matched = np.arange(len(self))
        else:
            matched = self.nearest_neighbor_candidates(query, target_hits, max_query_tokens, nearest)
        bm25 = self.text_index.scores(text) if profile == "hybrid" and text else None
        if bm25 is not None:
            matched = np.union1d(matched, top_matches(bm25, text_target_hits))
        if profile == "float":
            return _top(self.float_maxsim_of(query, matched), matched, top_k)
        first = _hamming_scores(*nearest)[matched]
        if profile == "binary":
            return _top(first, matched, top_k)
        candidates = matched[_top_indexes(first, max(rerank_count, top_k))]
        if profile == "two_phase_unpacked":
            return _top(self.unpacked_maxsim(query, candidates), candidates, top_k)
        exact = self.float_maxsim_of(query, candidates)
        if bm25 is not None:
            text_scores = bm25[candidates]
            fused = (
                exact + HYBRID_BM25_WEIGHT * text_scores
                if fusion == "linear"
                else reciprocal_rank_fusion(exact, text_scores)
            )
            return _top(fused, candidates, top_k)
        return _top(exact, candidates, top_k)


def _single_vectors(column: pa.ChunkedArray | None, n_pages: int) -> np.ndarray | None:
    """A one-vector-per-page column as float32 ``(pages, d)``; None when absent or not set on every page."""
    if column is None or column.null_count or n_pages == 0:
        return None
    flat = _column_bytes(column).view("<f2")
    if len(flat) % n_pages:
        msg = f"a one-vector column holds {len(flat)} values, not the same number for each of {n_pages} pages"
        raise ValueError(msg)
    return flat.reshape(n_pages, -1).astype(np.float32)


def _words(packed: np.ndarray) -> np.ndarray:
    """Packed bits ``(n, bytes)`` as ``(n, ceil(bytes / 8))`` uint64 words; the last word zero-padded (zero bits
    XOR to zero, so padding never adds distance)."""
    n, n_bytes = packed.shape
    width = -(-n_bytes // 8) * 8
    if width != n_bytes:
        padded = np.zeros((n, width), dtype=np.uint8)
        padded[:, :n_bytes] = packed
        packed = padded
    return np.ascontiguousarray(packed).view(np.uint64)


def _hamming_scores(nearest: np.ndarray, token_code: np.ndarray) -> np.ndarray:
    """sum over query tokens of ``1 / (1 + nearest distance)``: the first phase of every page."""
    scores = np.zeros(nearest.shape[1], dtype=np.float64)
    for code in token_code:  # token by token, the summation order of the rank expression
        scores += 1.0 / (1.0 + nearest[code].astype(np.float64))
    return scores


def _top_indexes(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    # Ties broken by page order so results are deterministic.
    return part[np.lexsort((part, -scores[part]))]


def _top(scores: np.ndarray, page_indexes: np.ndarray, k: int) -> list[Hit]:
    order = _top_indexes(scores, k)
    return [Hit(int(page_indexes[i]), float(scores[i])) for i in order]


def _column_bytes(column: pa.ChunkedArray) -> np.ndarray:
    """The concatenated cell bytes of a binary column as one uint8 array, without Python objects.

    Arrow stores a chunk's cells back to back, so a chunk's bytes are one slice of its data buffer
    (no copy); several chunks are concatenated once.
    """
    if column.null_count:
        msg = f"column {column.type} has {column.null_count} null cells; every indexed page needs vectors"
        raise ValueError(msg)
    parts = []
    for chunk in column.chunks:
        offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        _, offsets_buffer, data_buffer = chunk.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
        if len(chunk):
            parts.append(np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]])
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint8)


def _check_rows(vectors: np.ndarray, offsets: np.ndarray, name: str) -> None:
    if len(vectors) != offsets[-1]:
        msg = f"{name} holds {len(vectors)} vectors but n_vectors sums to {offsets[-1]}"
        raise ValueError(msg)


def _page_chunks(offsets: np.ndarray, target_vectors: int) -> list[tuple[int, int]]:
    """``(first_page, end_page)`` ranges of whole pages with about ``target_vectors`` vectors each."""
    n_pages = len(offsets) - 1
    chunks, first = [], 0
    while first < n_pages:
        # The first page whose start lies beyond the target ends the chunk; a chunk has at least one page.
        end = int(np.searchsorted(offsets, offsets[first] + target_vectors, side="right")) - 1
        end = min(max(end, first + 1), n_pages)
        chunks.append((first, end))
        first = end
    return chunks


# ---------------------------------------------------------------------------------------------------------------------
# Searcher: encode queries, rank locally or in Vespa
# ---------------------------------------------------------------------------------------------------------------------

#: The fields of every :class:`PageHit`: the local index's columns, and the summary fields Vespa returns.
HIT_FIELDS = ("page_id", "doc_id", "source_uri", "page_number", "title", "text", "model")


class SearchError(RuntimeError):
    """The search backend could not answer (Vespa returned an error or could not be reached)."""


@dataclass
class PageHit:
    """One ranked page: its score and summary fields, the same from the local index and from Vespa."""

    score: float
    page_id: str
    doc_id: str | None
    source_uri: str
    page_number: int
    title: str | None
    text: str | None
    model: str | None
    #: Row of the page in the local index (``None`` for Vespa hits).
    page_index: int | None = None


@dataclass
class QueryModel:
    """Which model encodes the queries and where it runs (the search config's ``model`` group).

    ``trust_remote_code`` lets a ``remote_code`` checkpoint's own code run: the user's setting, never an index's.
    """

    name: str
    name_or_path: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False

    def load(self) -> MultiVectorEncoder:
        from pipelines.models.encoder import MultiVectorEncoder

        return MultiVectorEncoder(
            self.name, self.name_or_path, self.cache_dir, self.device, self.dtype,
            trust_remote_code=self.trust_remote_code,
        )  # fmt: skip


class Searcher:
    """Ranks pages for queries over a :class:`LocalIndex` or in Vespa, with one query encoder.

    Give exactly one backend: ``local`` (an in-memory index; ``model_name`` is then the index's
    model, reported on every hit) or ``endpoint`` (a configured Vespa endpoint, with
    ``query_settings``). ``profile``, ``top_k`` and ``rerank_count`` are defaults that each call may
    override; ``retrieval``, ``target_hits``, ``max_query_tokens`` and ``page_target_hits`` choose the local
    candidates (Vespa takes them from ``query_settings``), ``fusion`` how the local ``hybrid`` combines MaxSim and
    BM25 (``linear``: Vespa's weights; ``rrf``: local only). ``muvera`` are the index's MUVERA settings (queries are
    encoded with them for the ``muvera`` profile; default: the index's, else the defaults). The encoder is
    ``encoder`` when given (to share one between searchers), else
    ``model.load()`` on first use, once. ``index_model`` is the model name local hits report
    (the index's own; default: the ``model`` column of the pages).
    """

    def __init__(
        self,
        model: QueryModel,
        *,
        local: LocalIndex | None = None,
        endpoint: VespaEndpoint | None = None,
        query_settings: VespaQuerySettings | None = None,
        profile: str = "two_phase",
        top_k: int = 10,
        rerank_count: int = 100,
        encoder: MultiVectorEncoder | None = None,
        index_model: str | None = None,
        retrieval: str = "all",
        target_hits: int = 100,
        max_query_tokens: int = 64,
        page_target_hits: int = 200,
        fusion: str = "linear",
        muvera: MuveraSettings | None = None,
    ):
        if (local is None) == (endpoint is None):
            msg = "a Searcher needs exactly one backend: a local index or a Vespa endpoint"
            raise ValueError(msg)
        self.model = model
        self.local = local
        self.endpoint = endpoint
        self.query_settings = query_settings
        self.top_k = require_int("top_k", top_k, maximum=MAX_TOP_K)
        self.rerank_count = require_int("rerank_count", rerank_count)
        if retrieval not in RETRIEVALS or int(target_hits) < 1 or int(max_query_tokens) < 1:
            msg = (
                f"retrieval must be one of {RETRIEVALS} (got {retrieval!r}); target_hits and max_query_tokens >= 1 "
                f"(got {target_hits}, {max_query_tokens})"
            )
            raise ConfigError(msg)
        self.retrieval = retrieval
        self.target_hits = int(target_hits)
        self.max_query_tokens = int(max_query_tokens)
        if int(page_target_hits) < 1 or fusion not in FUSIONS or (fusion != "linear" and local is None):
            msg = (
                f"page_target_hits must be >= 1 (got {page_target_hits}) and fusion one of {FUSIONS} (got "
                f"{fusion!r}); Vespa's hybrid profile fuses linearly, rrf is local only"
            )
            raise ConfigError(msg)
        self.page_target_hits = int(page_target_hits)
        self.fusion = fusion
        self.muvera = muvera or (local.muvera if local is not None else MuveraSettings())
        self._encoder = encoder
        self.index_model = index_model
        self.profile = self.check_profile(profile)

    @property
    def backend(self) -> str:
        return "local" if self.local is not None else "vespa"

    @property
    def profiles(self) -> tuple[str, ...]:
        """Rank profiles this backend knows."""
        from pipelines.vespa.query import PROFILES as VESPA_PROFILES

        return PROFILES if self.local is not None else VESPA_PROFILES

    def check_profile(self, profile: str) -> str:
        """``profile`` if this backend has it; else :class:`ConfigError` naming the choices."""
        if profile not in self.profiles:
            where = "a local index" if self.local is not None else "Vespa"
            msg = f"profile must be one of {self.profiles} for {where}, got {profile!r}"
            raise ConfigError(msg)
        return profile

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Searcher:
        """The searcher the search job's config (``conf/search.yaml``) describes.

        With ``vespa.endpoint.url`` set, ranks in Vespa, encoding with the index's model (``index``
        read only for its config), or ``model.name`` when there is no index; otherwise loads the index at ``index``.
        Raises :class:`ConfigError` on bad settings (``top_k`` outside 1..:data:`MAX_TOP_K`, a ``model.name`` other
        than the index's: :func:`check_index_model`) and ``FileNotFoundError`` when there is no index to search (or
        to read the model from).
        """
        from pipelines.vespa import config as vespa_config
        from pipelines.vespa import query as vespa_query

        endpoint = vespa_config.endpoint(cfg, required=False)
        query_settings = vespa_config.settings(cfg, "query")
        profiles = vespa_query.PROFILES if endpoint.configured else PROFILES
        if cfg.profile not in profiles:
            where = "Vespa" if endpoint.configured else "a local index"
            msg = f"profile must be one of {profiles} for {where}, got {cfg.profile!r}"
            raise ConfigError(msg)
        location = index.IndexLocation(str(cfg.index), OmegaConf.to_container(cfg.storage_options))
        index_cfg = read_index_config(location)
        check_index_model(cfg, location, index_cfg)
        options = {
            "profile": str(cfg.profile),
            "top_k": require_int("top_k", cfg.top_k, maximum=MAX_TOP_K),
            "rerank_count": require_int("rerank_count", cfg.rerank_count),
            "fusion": str(cfg.get("fusion") or "linear"),
            "muvera": _index_muvera(index_cfg),
        }
        local_options = {
            "retrieval": str(cfg.get("retrieval") or "all"),
            "target_hits": require_int("target_hits", cfg.get("target_hits", 100)),
            "max_query_tokens": int(query_settings.max_query_tokens),
            "page_target_hits": require_int("page_target_hits", cfg.get("page_target_hits", 200)),
        }
        if endpoint.configured:
            if not cfg.model.name and index_cfg is None:
                msg = (
                    f"no index at {cfg.index!r} to read the model from; "
                    "set model.name=<the model the index was built with>"
                )
                raise FileNotFoundError(msg)
            model = _query_model(cfg, index_cfg)
            return cls(model, endpoint=endpoint, query_settings=query_settings, **options)
        if index_cfg is None:
            msg = f"no index at {cfg.index!r} (expected {index.CONFIG_FILE}); run jobs.index first or set index=<path>"
            raise FileNotFoundError(msg)
        local = LocalIndex(location.read_pages(), load_float=cfg.profile in FLOAT_PROFILES, muvera=options["muvera"])
        # Local hits carry the index's own model name, whatever ``model.name`` says.
        model = _query_model(cfg, index_cfg)
        return cls(model, local=local, index_model=str(index_cfg.model.name), **options, **local_options)

    @property
    def encoder(self) -> MultiVectorEncoder:
        """The query encoder, loaded on first use."""
        if self._encoder is None:
            self._encoder = self.model.load()
        return self._encoder

    def encode(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Token vectors ``(q, dim)`` of each query (``dim``: the model's vector width)."""
        return self.encoder.embed_queries(list(queries))

    def search(self, queries: Sequence[str], **options: Any) -> list[list[PageHit]]:
        """Ranked hits for each query text, in order (see :meth:`search_vectors` for ``options``)."""
        return self.search_vectors(self.encode(queries), texts=list(queries), **options)

    def search_vectors(
        self,
        vectors: Sequence[np.ndarray],
        texts: Sequence[str | None] | None = None,
        profile: str | None = None,
        top_k: int | None = None,
        rerank_count: int | None = None,
    ) -> list[list[PageHit]]:
        """Ranked hits for each pre-encoded query, in order.

        ``texts`` are the queries' words (Vespa's ``hybrid`` profile adds BM25 over them);
        ``profile``, ``top_k`` and ``rerank_count`` override this searcher's defaults. Raises
        :class:`SearchError` when Vespa cannot answer.
        """
        profile = self.check_profile(profile or self.profile)
        top_k = self.top_k if top_k is None else require_int("top_k", top_k, maximum=MAX_TOP_K)
        rerank_count = self.rerank_count if rerank_count is None else require_int("rerank_count", rerank_count)
        texts = list(texts) if texts is not None else [None] * len(vectors)
        if self.local is not None:
            options = {"retrieval": self.retrieval, "target_hits": self.target_hits}
            options |= {"max_query_tokens": self.max_query_tokens, "page_target_hits": self.page_target_hits}
            return [
                self._local_hits(
                    self.local.search(v, top_k, profile, rerank_count, text=t, fusion=self.fusion, **options)
                )
                for v, t in zip(vectors, texts, strict=True)
            ]
        from pipelines.vespa import query as vespa_query

        settings = self.query_settings or vespa_query.VespaQuerySettings()
        try:
            answers = vespa_query.search(
                self.endpoint,
                list(zip(vectors, texts, strict=True)),
                profile,
                top_k,
                settings,
                rerank_count=rerank_count,
                muvera=self.muvera,
            )
        except vespa_query.VespaQueryError as exc:
            msg = f"Vespa at {self.endpoint.safe_url}: {exc}"
            raise SearchError(msg) from exc
        return [[PageHit(**{**hit, "model": hit.get("model") or self.model.name}) for hit in hits] for hits in answers]

    def similar_pages(self, page_id: str, top_k: int | None = None) -> list[PageHit]:
        """Pages like page ``page_id``: the ``top_k`` others whose page vectors are nearest (local index; with Vespa,
        :func:`pipelines.vespa.query.similar_pages` takes the page's vector). Raises ``KeyError`` for an unknown
        page."""
        if self.local is None:
            msg = "similar_pages reads the page's vector from a local index; with Vespa use vespa.query.similar_pages"
            raise ConfigError(msg)
        ids = self.local.pages.column("page_id").to_pylist()
        if page_id not in ids:
            raise KeyError(page_id)
        top_k = self.top_k if top_k is None else require_int("top_k", top_k, maximum=MAX_TOP_K)
        hits = self.local.similar_pages(ids.index(page_id), top_k)
        return self._local_hits(hits)

    def _local_hits(self, hits: list[Hit]) -> list[PageHit]:
        if not hits:
            return []
        pages = self.local.pages
        columns = [name for name in HIT_FIELDS if name in pages.column_names]
        rows = pages.take([hit.page_index for hit in hits]).select(columns).to_pylist()
        return [
            PageHit(
                **{**dict.fromkeys(HIT_FIELDS), **row, "model": self.index_model or row.get("model")},
                score=hit.score,
                page_index=hit.page_index,
            )
            for hit, row in zip(hits, rows, strict=True)
        ]


def read_index_config(location: index.IndexLocation) -> DictConfig | None:
    """The config the index was built with (``index.CONFIG_FILE``); None when the index has none."""
    try:
        return OmegaConf.create(location.read_text(index.CONFIG_FILE))
    except FileNotFoundError:
        return None


def check_index_model(cfg: DictConfig, location: index.IndexLocation, index_cfg: DictConfig | None) -> None:
    """Refuse a ``model.name`` other than the index's: queries must be encoded by the model that embedded the pages
    (another width fails, the same width ranks meaninglessly). The index's model is the one its ledger recorded when
    it was created (``ledger/index.json``), else its ``config.yaml``'s. Raises :class:`ConfigError`."""
    meta = location.ledger.read_meta()
    recorded = meta["model"] if meta else (index_cfg.model.name if index_cfg is not None else None)
    if cfg.model.name and recorded and str(cfg.model.name) != str(recorded):
        msg = (
            f"model.name={cfg.model.name!r} conflicts with the index at {cfg.index!r}, whose pages were embedded with "
            f"{recorded!r} ({INDEX_META}): queries are encoded with the index's own model, so drop model.name "
            "(model.name_or_path, model.device and model.dtype only say where and how that model runs)"
        )
        raise ConfigError(msg)


def _index_muvera(index_cfg: DictConfig | None) -> MuveraSettings | None:
    """The MUVERA settings the index was built with (its ``pooling.muvera``); None when it records none."""
    node = index_cfg.get("pooling", {}).get("muvera") if index_cfg is not None else None
    return MuveraSettings(**OmegaConf.to_container(node)) if node else None


def _query_model(cfg: DictConfig, index_cfg: DictConfig | None) -> QueryModel:
    """The index's own model (without an index: ``model.name``); paths from the config, else from the index.
    ``trust_remote_code`` only from the search config (the user's), never from the index's stored config."""
    if index_cfg is None:
        name, name_or_path, cache_dir = cfg.model.name, cfg.model.name_or_path, cfg.model.cache_dir
    else:
        name = index_cfg.model.name
        name_or_path = cfg.model.name_or_path or index_cfg.model.name_or_path
        cache_dir = cfg.model.cache_dir or index_cfg.model.cache_dir
    trust = bool(cfg.model.get("trust_remote_code", False))
    return QueryModel(str(name), name_or_path, cache_dir, str(cfg.model.device), str(cfg.model.dtype), trust)
