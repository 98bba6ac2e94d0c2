"""One vector per page: MUVERA fixed dimensional encodings and the mean page vector.

**MUVERA** (Dhulipala et al., "MUVERA: Multi-Vector Retrieval via Fixed Dimensional Encodings", arXiv 2405.19504)
maps a set of vectors to one vector whose dot product with a query's encoding approximates MaxSim (Chamfer
similarity), so a single-vector nearest-neighbour index can find MaxSim candidates. Per repetition ``r`` (of
``repetitions``):

1. **SimHash partitions.** ``simhash_bits`` random hyperplanes split the space into ``2**simhash_bits`` cells; a
   vector's cell is its sign pattern against them.
2. **Inner projection.** Each vector is projected to ``projection_dim`` dimensions by a random ±1 matrix scaled by
   ``1/sqrt(projection_dim)`` (``None``: no projection, the model's own dimension).
3. **Aggregation.** A query's block for a cell is the **sum** of its projected tokens in that cell; a document's is
   the **average** of its projected vectors in the cell. A document cell no vector falls in is **filled** with the
   projected vector whose sign pattern is nearest (hamming) to the cell's, so every query token meets some
   document vector, as it does in MaxSim.

The encoding is the concatenation over repetitions and cells: ``repetitions * 2**simhash_bits * projection_dim``
values. An optional **final projection** (``final_dim``) shrinks it with a Count-Sketch (each coordinate added,
with a random sign, to one of ``final_dim`` buckets), which keeps dot products unbiased. Query and document
encodings are linear in the projected vectors, so ``query(q) . document(d)`` sums, over query tokens, the
similarity to the document's (averaged) vectors in the token's cell: MaxSim's max replaced by "the vectors that
hash alike".

The random matrices come from SHAKE-256 of the seed, not from numpy's generators: an index written today and a
query encoded after a numpy upgrade must use the same hyperplanes (numpy does not promise stable ``Generator``
streams across versions).

**Mean page vector** (:func:`mean_vector`): the L2-normalised mean of a page's vectors, a cheap single-vector
embedding for a first stage and for "pages like this page". A model that supplies its own page embedding fills the
``page_embedding`` column itself; the pool stage computes the mean only where it is still empty.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Largest ``simhash_bits``: 2**10 cells per repetition is already far more than a page has vectors.
MAX_SIMHASH_BITS = 10


@dataclass
class MuveraSettings:
    """How the fixed dimensional encodings are built (Hydra node ``pooling.muvera``; ``null`` turns them off).

    The defaults are the paper's (20 repetitions of 32 cells, 16-d projections: 10,240 values, 20 KiB per page in
    bfloat16, a third of the memory the per-token HNSW of pool-3 binary vectors needs); among the settings the
    fidelity benchmark compared they found the most of the exact top-10 on the test model's real-page set.
    """

    repetitions: int = 20
    simhash_bits: int = 5
    projection_dim: int | None = 16
    final_dim: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.repetitions < 1:
            msg = f"pooling.muvera.repetitions must be >= 1, got {self.repetitions}"
            raise ValueError(msg)
        if not 0 <= self.simhash_bits <= MAX_SIMHASH_BITS:
            msg = f"pooling.muvera.simhash_bits must be in 0..{MAX_SIMHASH_BITS}, got {self.simhash_bits}"
            raise ValueError(msg)
        if self.projection_dim is not None and self.projection_dim < 1:
            msg = f"pooling.muvera.projection_dim must be >= 1 or null (no projection), got {self.projection_dim}"
            raise ValueError(msg)
        if self.final_dim is not None and self.final_dim < 1:
            msg = f"pooling.muvera.final_dim must be >= 1 or null (no final projection), got {self.final_dim}"
            raise ValueError(msg)

    def block_dim(self, input_dim: int) -> int:
        """Values per repetition and cell: ``projection_dim``, or the input dimension without projection."""
        return self.projection_dim or input_dim

    def dim(self, input_dim: int) -> int:
        """Dimension of the encoding of ``input_dim``-dimensional vectors."""
        return self.final_dim or self.repetitions * (1 << self.simhash_bits) * self.block_dim(input_dim)

    def encoder(self, input_dim: int) -> FixedDimensionalEncoder:
        """The encoder for ``input_dim``-dimensional vectors (built once per settings and dimension)."""
        return _encoder(tuple(dataclasses.astuple(self)), int(input_dim))


@functools.lru_cache(maxsize=8)
def _encoder(values: tuple, input_dim: int) -> FixedDimensionalEncoder:
    return FixedDimensionalEncoder(MuveraSettings(*values), input_dim)


def _random_signs(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """±1 float32 array of ``shape`` from SHAKE-256 of ``(seed, name)``: the same on every machine and version."""
    n = int(np.prod(shape))
    digest = hashlib.shake_256(f"muvera/{seed}/{name}".encode()).digest((n + 7) // 8)
    bits = np.unpackbits(np.frombuffer(digest, dtype=np.uint8))[:n]
    return (bits.astype(np.float32) * 2 - 1).reshape(shape)


def _random_ints(seed: int, name: str, n: int, high: int) -> np.ndarray:
    """``n`` integers in ``[0, high)`` from SHAKE-256 (64-bit draws: the modulo bias is negligible)."""
    digest = hashlib.shake_256(f"muvera/{seed}/{name}".encode()).digest(8 * n)
    return (np.frombuffer(digest, dtype="<u8") % np.uint64(high)).astype(np.int64)


class FixedDimensionalEncoder:
    """Encodes queries and documents of ``input_dim``-dimensional vectors with fixed :class:`MuveraSettings`."""

    def __init__(self, settings: MuveraSettings, input_dim: int):
        self.settings = settings
        self.input_dim = int(input_dim)
        reps, bits = settings.repetitions, settings.simhash_bits
        self.cells = 1 << bits
        self.block = settings.block_dim(self.input_dim)
        self.raw_dim = reps * self.cells * self.block
        self.dim = settings.dim(self.input_dim)
        seed = settings.seed
        # Hyperplanes of every repetition side by side: one matrix product gives all sign patterns.
        self._planes = _random_signs(seed, "simhash", (self.input_dim, reps * bits))
        # Bit weights as float32: a BLAS product (numpy's integer matmul is an order of magnitude slower).
        self._weights = (1 << np.arange(bits)).astype(np.float32)
        self._projection = None
        if settings.projection_dim is not None:
            signs = _random_signs(seed, "projection", (self.input_dim, reps * self.block))
            self._projection = signs / np.float32(np.sqrt(self.block))
        self._sketch = None
        if settings.final_dim is not None:
            buckets = _random_ints(seed, "final-bucket", self.raw_dim, settings.final_dim)
            self._sketch = (buckets, _random_signs(seed, "final-sign", (self.raw_dim,)))
        # Hamming distance between every pair of cells (their sign patterns are the cells' bits).
        cells = np.arange(self.cells)
        self._cell_distance = np.bitwise_count(cells[:, None] ^ cells[None, :]).astype(np.int64)

    def _partition(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(cell (n, reps), projected (n, reps, block))`` of ``(n, input_dim)`` vectors."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.input_dim:
            msg = f"expected (n, {self.input_dim}) vectors, got shape {vectors.shape}"
            raise ValueError(msg)
        reps, bits = self.settings.repetitions, self.settings.simhash_bits
        positive = (vectors @ self._planes > 0).reshape(len(vectors), reps, bits)
        cell = (positive.astype(np.float32) @ self._weights).astype(np.int64)
        if self._projection is None:
            projected = np.broadcast_to(vectors[:, None, :], (len(vectors), reps, self.block))
        else:
            projected = (vectors @ self._projection).reshape(len(vectors), reps, self.block)
        return cell, projected

    def _blocks(self, cell: np.ndarray, projected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per (repetition, cell) sums of the projected vectors ``(reps * cells, block)`` and their counts."""
        reps = self.settings.repetitions
        flat = (cell + np.arange(reps) * self.cells).reshape(-1)
        rows = projected.reshape(-1, self.block)
        # Sorted by (repetition, cell), each cell's rows are contiguous: one reduceat sums them all (np.add.at is
        # an order of magnitude slower on a page's thousands of rows).
        order = np.argsort(flat, kind="stable")
        occupied, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
        sums = np.zeros((reps * self.cells, self.block), dtype=np.float64)
        if len(order):
            sums[occupied] = np.add.reduceat(rows[order].astype(np.float64), starts, axis=0)
        full_counts = np.zeros(reps * self.cells, dtype=np.int64)
        full_counts[occupied] = counts
        return sums, full_counts

    def _finish(self, blocks: np.ndarray) -> np.ndarray:
        flat = blocks.reshape(-1)
        if self._sketch is None:
            return flat.astype(np.float32)
        buckets, signs = self._sketch
        return np.bincount(buckets, weights=flat * signs, minlength=self.dim).astype(np.float32)

    def query(self, vectors: np.ndarray) -> np.ndarray:
        """Encoding ``(dim,)`` of one query's token vectors: per-cell sums, no filling."""
        sums, _ = self._blocks(*self._partition(vectors))
        return self._finish(sums)

    def document(self, vectors: np.ndarray) -> np.ndarray:
        """Encoding ``(dim,)`` of one document's (page's) vectors: per-cell averages, empty cells filled."""
        cell, projected = self._partition(vectors)
        if len(cell) == 0:
            return np.zeros(self.dim, dtype=np.float32)
        sums, counts = self._blocks(cell, projected)
        blocks = sums / np.maximum(counts, 1)[:, None]
        reps = self.settings.repetitions
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            rep, empty_cell = np.divmod(empty, self.cells)
            # For each empty (repetition, cell): the vector whose cell in that repetition is nearest in hamming
            # distance (ties: the first vector), as the paper's fill_empty_partitions.
            distance = self._cell_distance[cell[:, rep], empty_cell]  # (n, empties)
            nearest = np.argmin(distance, axis=0)
            blocks[empty] = projected[nearest, rep]
        return self._finish(blocks.reshape(reps * self.cells, self.block))

    def documents(self, pages: Sequence[np.ndarray]) -> np.ndarray:
        """Encodings ``(len(pages), dim)`` of several pages."""
        out = np.empty((len(pages), self.dim), dtype=np.float32)
        for i, vectors in enumerate(pages):
            out[i] = self.document(vectors)
        return out


def mean_vector(vectors: np.ndarray) -> np.ndarray:
    """The L2-normalised mean ``(dim,)`` of ``(n, dim)`` vectors (all zeros when the mean is zero)."""
    mean = np.asarray(vectors, dtype=np.float64).mean(axis=0)
    norm = np.linalg.norm(mean)
    return (mean / norm if norm > 0 else mean).astype(np.float32)


def query_vector(profile: str, query: np.ndarray, muvera: MuveraSettings | None = None) -> np.ndarray:
    """The one vector a single-vector profile scores pages with, for ``(tokens, dim)`` query vectors: their
    :func:`mean_vector` (``page_vector``) or their MUVERA query encoding under ``muvera`` (``muvera``; default
    settings when None). Local search and the Vespa query body both use it, so they score the same vector."""
    if profile == "page_vector":
        return mean_vector(query)
    if profile == "muvera":
        return (muvera or MuveraSettings()).encoder(query.shape[1]).query(query)
    msg = f"{profile!r} is not a single-vector profile (muvera, page_vector)"
    raise ValueError(msg)
