"""Synthetic page and query multi-vectors with the structure pooling and binarization depend on.

:class:`ClusteredVectors` is deterministic for a seed and used by the index-size, fidelity and pooling
benchmarks; :func:`vector_statistics` summarises any set of page vectors so synthetic and model-made sets can be
compared side by side in the report. These are not ColPali outputs (see :data:`CLUSTERED_RECIPE`).
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import QWEN_PROMPT_VECTORS, REFERENCE_DIM, unit_rows

#: How :class:`ClusteredVectors` builds pages; recorded in results so the report can state it.
CLUSTERED_RECIPE = (
    "Hierarchy of directions in 128-d, every vector L2-normalised, all noise anisotropic (Gaussian in a random "
    "orthonormal basis, per-axis scale i^-0.5, i = 1..128): a corpus-wide common direction (weight 0.5, added to "
    "every vector: an assumed shared component, which the tiny model's vectors also show); per document of 5 pages, 8"
    " topic directions; per page, 6 local centroids (a topic of its document + noise 0.5). A page's patches are a "
    "fraction U(0.3, 0.7) of 'background' (one corpus-wide blank-area direction + noise 0.1: near-duplicates, like a "
    "page's white space) and otherwise 'content' (a local centroid + noise 0.35), plus 11 prompt-token vectors (fixed"
    " directions + noise 0.1, as the ColQwen prompt adds). A query has 10 content tokens (local centroids of one "
    "target page + noise 0.35) and 10 augmentation tokens (one shared direction + noise 0.2, like ColQwen's 10 pad "
    "tokens). The weights are assumptions chosen to give the structure pooling relies on, not fitted to ColPali."
)


class ClusteredVectors:
    """Synthetic page and query multi-vectors with clustered, anisotropic statistics (see :data:`CLUSTERED_RECIPE`).

    Deterministic for a seed. Not ColPali outputs: a stand-in with the structure that matters for pooling and
    binarization (a shared component, near-duplicate background patches, local clusters of content patches, topics
    shared by the pages of a document, anisotropic noise).
    """

    dim = REFERENCE_DIM
    pages_per_document = 5

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(self.rng.standard_normal((self.dim, self.dim)))
        scales = np.arange(1, self.dim + 1) ** -0.5
        # Maps isotropic N(0, I) rows to anisotropic noise of unit expected norm.
        self._mix = (basis * (scales / np.sqrt((scales**2).sum()))).T
        self.common = unit_rows(self.rng.standard_normal((1, self.dim)))[0]
        self.background = unit_rows(self.rng.standard_normal((1, self.dim)))[0]
        self.prompt = unit_rows(self.rng.standard_normal((QWEN_PROMPT_VECTORS, self.dim)))
        self.augmentation = unit_rows(self.rng.standard_normal((1, self.dim)))[0]
        self._topics: dict[int, np.ndarray] = {}
        self.centroids: dict[int, np.ndarray] = {}

    def noise(self, n: int, scale: float) -> np.ndarray:
        """``n`` anisotropic noise rows of expected L2 norm ``scale``."""
        return scale * (self.rng.standard_normal((n, self.dim)) @ self._mix)

    def _document_topics(self, doc: int) -> np.ndarray:
        if doc not in self._topics:
            self._topics[doc] = unit_rows(self.noise(8, 1.0))
        return self._topics[doc]

    def page(self, index: int, n_vectors: int) -> np.ndarray:
        """Unit vectors ``(n_vectors, dim)`` of page ``index`` (prompt tokens included)."""
        n_patches = max(1, n_vectors - QWEN_PROMPT_VECTORS)
        topics = self._document_topics(index // self.pages_per_document)
        centroids = unit_rows(topics[self.rng.integers(0, len(topics), 6)] + self.noise(6, 0.5))
        self.centroids[index] = centroids
        is_background = self.rng.random(n_patches) < self.rng.uniform(0.3, 0.7)
        content = unit_rows(centroids[self.rng.integers(0, len(centroids), n_patches)] + self.noise(n_patches, 0.35))
        background = unit_rows(self.background + self.noise(n_patches, 0.1))
        patches = np.where(is_background[:, None], background, content)
        prompt = unit_rows(self.prompt + self.noise(QWEN_PROMPT_VECTORS, 0.1))
        vectors = np.concatenate([prompt[:4], patches, prompt[4:]])[:n_vectors]
        return unit_rows(0.5 * self.common + vectors)

    def pages(self, n_pages: int, n_vectors: int | tuple[int, int]) -> list[np.ndarray]:
        """``n_pages`` pages; ``n_vectors`` fixed or drawn uniformly from an inclusive ``(low, high)`` range."""
        low, high = (n_vectors, n_vectors) if isinstance(n_vectors, int) else n_vectors
        counts = self.rng.integers(low, high + 1, size=n_pages)
        return [self.page(i, int(n)) for i, n in enumerate(counts)]

    def query(self, target: int, n_content: int = 10, n_augmentation: int = 10) -> np.ndarray:
        """Query vectors aimed at page ``target`` (already generated): its local centroids plus augmentation tokens."""
        centroids = self.centroids[target]
        content = unit_rows(centroids[self.rng.integers(0, len(centroids), n_content)] + self.noise(n_content, 0.35))
        augmentation = unit_rows(self.augmentation + self.noise(n_augmentation, 0.2))
        return unit_rows(0.5 * self.common + np.concatenate([content, augmentation]))


def vector_statistics(pages: list[np.ndarray], seed: int = 0, pairs: int = 20000) -> dict:
    """Summary statistics of a set of page vectors, to compare synthetic and model-made sets."""
    rng = np.random.default_rng(seed)
    lengths = np.array([len(p) for p in pages])
    flat = np.concatenate(pages).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    a, b = rng.integers(0, len(flat), pairs), rng.integers(0, len(flat), pairs)
    page_of = np.searchsorted(offsets, np.arange(len(flat)), side="right") - 1
    # Same-page pairs: two random rows of one random page.
    which = rng.integers(0, len(pages), pairs)
    i = offsets[which] + (rng.random(pairs) * lengths[which]).astype(int)
    j = offsets[which] + (rng.random(pairs) * lengths[which]).astype(int)
    cross = page_of[a] != page_of[b]
    sample = flat[rng.integers(0, len(flat), min(len(flat), 50000))]
    eigen = np.clip(np.linalg.eigvalsh(np.cov(sample.T)), 0, None)
    return {
        "pages": len(pages),
        "vectors_per_page_mean": float(lengths.mean()),
        "mean_cosine_other_pages": float(np.einsum("ij,ij->i", flat[a], flat[b])[cross].mean()),
        "mean_cosine_same_page": float(np.einsum("ij,ij->i", flat[i], flat[j]).mean()),
        "participation_ratio": float(eigen.sum() ** 2 / (eigen**2).sum()),
        "positive_bit_fraction": float((flat > 0).mean()),
    }
