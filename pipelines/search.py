"""Local search over an index, with the same two-phase MaxSim ranking the Vespa profile runs.

First phase (every page): hamming MaxSim over binary vectors. For query token ``q`` and page patch
``d`` the similarity is ``1 / (1 + hamming(bits(q), bits(d)))``; a page scores the sum over query
tokens of the max over its patches. Second phase (top ``rerank_count`` pages): float query ×
``unpack_bits(d)`` (0/1 per bit) MaxSim. The ``float`` profile is exact MaxSim over the stored
float16 vectors, for evaluation.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines import schema
from pipelines.stages.compress import binarize, unpack_bits

PROFILES = ("two_phase", "float", "binary")
#: Vectors per first-phase chunk: its (tokens, n) uint64 temporary then stays within L2 cache.
CHUNK_VECTORS = 8192
#: Vectors per float-profile chunk: bounds the float32 copy of float16 rows to 32 MiB.
FLOAT_CHUNK_VECTORS = 65536


@dataclass
class Hit:
    page_index: int
    score: float


class LocalIndex:
    """All pages of an index in memory as flat vector arrays with per-page offsets.

    ``binary`` is ``(V, 16)`` uint8, ``embedding`` ``(V, 128)`` float16 (loaded only when needed),
    and ``offsets[i]:offsets[i+1]`` are page ``i``'s rows. ``threads`` bounds the worker threads of
    the first phase (numpy releases the GIL inside its loops, so chunks of pages score in parallel).

    Scoring works on page-aligned chunks of vectors so that temporaries stay small (cache-sized for
    the first phase, bounded for the float profile) whatever the index size; chunking changes
    neither the math nor the order of the float64 sums.
    """

    def __init__(self, pages: pa.Table, load_float: bool = True, threads: int | None = None):
        self.pages = pages.drop_columns([c for c in ("embedding", "binary") if c in pages.column_names])
        counts = np.asarray(pages.column("n_vectors").to_numpy(zero_copy_only=False), dtype=np.int64)
        if (counts < 1).any():
            msg = "every indexed page must have at least one vector"
            raise ValueError(msg)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.binary = _column_bytes(pages.column("binary")).reshape(-1, schema.BINARY_BYTES)
        _check_rows(self.binary, self.offsets, "binary")
        # The two 64-bit words of every vector as two contiguous rows: hamming distance is then two
        # XORs and two popcounts over contiguous memory for all query tokens at once.
        self._words = np.ascontiguousarray(self.binary.view(np.uint64).T)
        self.embedding = None
        if load_float:
            self.embedding = _column_bytes(pages.column("embedding")).view("<f2").reshape(-1, schema.EMBEDDING_DIM)
            _check_rows(self.embedding, self.offsets, "embedding")
        self.threads = max(1, threads or len(os.sched_getaffinity(0)))
        self._chunks = _page_chunks(self.offsets, CHUNK_VECTORS)
        self._float_chunks = _page_chunks(self.offsets, FLOAT_CHUNK_VECTORS)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def hamming_maxsim(self, query: np.ndarray) -> np.ndarray:
        """First-phase score of every page for float query vectors ``(q, 128)``."""
        # Tokens with identical sign bits have identical distances: score each distinct code once.
        query_words = np.ascontiguousarray(binarize(query)).view(np.uint64)  # (q, 2)
        codes, token_code = np.unique(query_words, axis=0, return_inverse=True)
        first_word, second_word = codes[:, :1].copy(), codes[:, 1:].copy()
        # nearest[c, p]: the smallest hamming distance between code c and any patch of page p.
        nearest = np.empty((len(codes), len(self)), dtype=np.uint8)

        def score_chunk(chunk: tuple[int, int]) -> None:
            first, last = chunk
            start, stop = self.offsets[first], self.offsets[last]
            xor = np.bitwise_xor(self._words[0, start:stop], first_word)  # (codes, n): every code at once
            distance = np.bitwise_count(xor)  # uint8: at most 128
            np.bitwise_xor(self._words[1, start:stop], second_word, out=xor)
            distance += np.bitwise_count(xor)
            # 1/(1+d) falls as d grows, so the max similarity over a page is at its min distance.
            nearest[:, first:last] = np.minimum.reduceat(distance, self.offsets[first:last] - start, axis=1)

        if self.threads > 1 and len(self._chunks) > 1:
            with ThreadPoolExecutor(min(self.threads, len(self._chunks))) as pool:
                list(pool.map(score_chunk, self._chunks))
        else:
            for chunk in self._chunks:
                score_chunk(chunk)
        scores = np.zeros(len(self), dtype=np.float64)
        for code in token_code.reshape(-1):  # token by token, the summation order of the rank expression
            scores += 1.0 / (1.0 + nearest[code].astype(np.float64))
        return scores

    def _maxsim(self, query: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        similarity = query.astype(np.float32) @ vectors.T  # (q, V)
        return np.maximum.reduceat(similarity, offsets[:-1], axis=1).sum(axis=0, dtype=np.float64)

    def unpacked_maxsim(self, query: np.ndarray, page_indexes: np.ndarray) -> np.ndarray:
        """Second-phase score (float query × unpacked bits) of the given pages."""
        rows = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in page_indexes]
        counts = np.array([len(r) for r in rows])
        vectors = unpack_bits(self.binary[np.concatenate(rows)])
        return self._maxsim(query, vectors, np.concatenate([[0], np.cumsum(counts)]))

    def float_maxsim(self, query: np.ndarray) -> np.ndarray:
        """Exact MaxSim of every page over its stored float16 vectors."""
        if self.embedding is None:
            msg = "index was loaded without float vectors (load_float=False)"
            raise ValueError(msg)
        scores = np.empty(len(self), dtype=np.float64)
        # One chunk of float16 rows converted at a time: a float32 copy of the whole index would
        # double its memory.
        for first, last in self._float_chunks:
            start, stop = self.offsets[first], self.offsets[last]
            vectors = self.embedding[start:stop].astype(np.float32)
            scores[first:last] = self._maxsim(query, vectors, self.offsets[first : last + 1] - start)
        return scores

    def search(self, query: np.ndarray, top_k: int = 10, profile: str = "two_phase", rerank_count: int = 100):
        """Top ``top_k`` pages for one query's vectors, best first, as :class:`Hit` list."""
        if profile not in PROFILES:
            msg = f"profile must be one of {PROFILES}, got {profile!r}"
            raise ValueError(msg)
        if len(self) == 0:
            return []
        if profile == "float":
            return _top(self.float_maxsim(query), np.arange(len(self)), top_k)
        first = self.hamming_maxsim(query)
        if profile == "binary":
            return _top(first, np.arange(len(self)), top_k)
        candidates = _top_indexes(first, max(rerank_count, top_k))
        return _top(self.unpacked_maxsim(query, candidates), candidates, top_k)


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
