"""Local search over an index, with the same two-phase MaxSim ranking the Vespa profile runs.

First phase (every page): hamming MaxSim over binary vectors. For query token ``q`` and page patch
``d`` the similarity is ``1 / (1 + hamming(bits(q), bits(d)))``; a page scores the sum over query
tokens of the max over its patches. Second phase (top ``rerank_count`` pages): float query ×
``unpack_bits(d)`` (0/1 per bit) MaxSim. The ``float`` profile is exact MaxSim over the stored
float16 vectors, for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines import schema
from pipelines.stages.compress import binarize, unpack_bits

PROFILES = ("two_phase", "float", "binary")


@dataclass
class Hit:
    page_index: int
    score: float


class LocalIndex:
    """All pages of an index in memory as flat vector arrays with per-page offsets.

    ``binary`` is ``(V, 16)`` uint8, ``embedding`` ``(V, 128)`` float16 (loaded only when needed),
    and ``offsets[i]:offsets[i+1]`` are page ``i``'s rows.
    """

    def __init__(self, pages: pa.Table, load_float: bool = True):
        self.pages = pages.drop_columns([c for c in ("embedding", "binary") if c in pages.column_names])
        counts = np.asarray(pages.column("n_vectors").to_numpy(zero_copy_only=False), dtype=np.int64)
        if (counts < 1).any():
            msg = "every indexed page must have at least one vector"
            raise ValueError(msg)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.binary = np.frombuffer(b"".join(pages.column("binary").to_pylist()), dtype=np.uint8).reshape(
            -1, schema.BINARY_BYTES
        )
        # Two 64-bit words per vector make hamming distance two XORs and two popcounts.
        self._binary_words = np.ascontiguousarray(self.binary).view(np.uint64)
        self.embedding = None
        if load_float:
            self.embedding = np.frombuffer(b"".join(pages.column("embedding").to_pylist()), dtype="<f2").reshape(
                -1, schema.EMBEDDING_DIM
            )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def hamming_maxsim(self, query: np.ndarray) -> np.ndarray:
        """First-phase score of every page for float query vectors ``(q, 128)``."""
        query_words = np.ascontiguousarray(binarize(query)).view(np.uint64)
        scores = np.zeros(len(self), dtype=np.float64)
        starts = self.offsets[:-1]
        for token in query_words:
            distance = np.bitwise_count(self._binary_words ^ token).sum(axis=1, dtype=np.uint8)
            # 1/(1+d) falls as d grows, so the max similarity over a page is at its min distance.
            nearest = np.minimum.reduceat(distance, starts)
            scores += 1.0 / (1.0 + nearest.astype(np.float64))
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
        return self._maxsim(query, self.embedding.astype(np.float32), self.offsets)

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
