"""Shrink page vectors: hierarchical token pooling, then 1-bit binarization for Vespa."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipelines import schema
from pipelines.ids import affects_vectors
from pipelines.stages.base import Stage


def pool_vectors(pooler, vectors: np.ndarray, pool_factor: int) -> np.ndarray:
    """Pool one page's ``(n, d)`` vectors with colpali-engine's ``HierarchicalTokenPooler``.

    Returns unit-norm float32 vectors, about ``n // pool_factor`` of them. ``pool_factor=1`` and
    pages with fewer than two vectors (the pooler rejects those) are returned unchanged.
    """
    import torch

    if pool_factor == 1 or vectors.shape[0] < 2:
        return vectors.astype(np.float32)
    pooled = pooler.pool_embeddings([torch.from_numpy(vectors.astype(np.float32))], pool_factor=pool_factor)
    return pooled[0].numpy()


def binarize(vectors: np.ndarray) -> np.ndarray:
    """Pack each vector's sign bits (``v > 0`` → 1) into bytes, most significant bit first.

    A 128-d vector becomes 16 bytes. Bit order is numpy's default big-endian ``packbits``, which is
    what Vespa's ``unpack_bits`` (default ``big``) reads back.
    """
    return np.packbits(vectors > 0, axis=1)


def unpack_bits(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`binarize` as Vespa evaluates it: each bit becomes a 0.0/1.0 float."""
    return np.unpackbits(packed, axis=-1).astype(np.float32)


@dataclass
class PoolStage(Stage):
    """Replace ``embedding`` with its pooled version and set ``n_vectors`` (``n_vectors_raw`` kept).

    ``pool_factor`` pools the candidate vectors (``embedding``, whose sign bits :class:`BinarizeStage`
    packs into ``binary``: small, memory-resident, HNSW in Vespa). ``rerank_pool_factor`` pools the
    float re-ranking vectors separately, from the same raw vectors, into ``rerank_embedding`` /
    ``n_rerank_vectors`` (fed to Vespa's paged ``embedding_float``); ``None`` or equal to
    ``pool_factor`` stores no second column (``embedding`` is then the re-ranking vectors).

    Runs on long-lived workers: the pooler (colpali-engine's, imported without its model families,
    see :mod:`pipelines.models.colpali`) is loaded once per worker in ``setup`` rather than per task.
    """

    name: ClassVar[str] = "pool"
    stateful: ClassVar[bool] = True
    pool_factor: int = field(default=1, metadata=affects_vectors())
    rerank_pool_factor: int | None = field(default=None, metadata=affects_vectors())

    def __post_init__(self) -> None:
        if self.pool_factor < 1:
            msg = f"pooling.pool_factor must be >= 1 (1 turns pooling off), got {self.pool_factor}"
            raise ValueError(msg)
        if self.rerank_pool_factor is not None and self.rerank_pool_factor < 1:
            msg = (
                "pooling.rerank_pool_factor must be >= 1 or null (null: the candidate vectors), "
                f"got {self.rerank_pool_factor}"
            )
            raise ValueError(msg)
        self._pooler = None

    @property
    def separate_rerank(self) -> bool:
        """Whether re-ranking vectors are stored apart from the candidate vectors."""
        return self.rerank_pool_factor is not None and self.rerank_pool_factor != self.pool_factor

    def setup(self) -> None:
        if max(self.pool_factor, self.rerank_pool_factor or 1) > 1 and self._pooler is None:
            from pipelines.models.colpali import token_pooler_class

            self._pooler = token_pooler_class()()

    def process_batch(self, batch: pa.Table) -> pa.Table:
        if self.pool_factor == 1 and not self.separate_rerank:
            return batch
        self.setup()
        pooler = self._pooler
        embeddings = batch.column("embedding").to_pylist()
        counts = batch.column("n_vectors").to_pylist()
        rerank = [None] * len(embeddings)
        rerank_counts = [None] * len(embeddings)
        for i, buffer in enumerate(embeddings):
            if buffer is None:
                continue
            raw = schema.decode_embedding(buffer)
            if self.separate_rerank:
                vectors = pool_vectors(pooler, raw, self.rerank_pool_factor)
                rerank[i] = buffer if self.rerank_pool_factor == 1 else vectors.astype("<f2").tobytes()
                rerank_counts[i] = int(vectors.shape[0])
            if self.pool_factor > 1:
                pooled = pool_vectors(pooler, raw, self.pool_factor)
                embeddings[i] = pooled.astype("<f2").tobytes()
                counts[i] = int(pooled.shape[0])
        batch = schema.with_column(batch, "embedding", embeddings)
        batch = schema.with_column(batch, "n_vectors", counts)
        if self.separate_rerank:
            batch = schema.with_column(batch, "rerank_embedding", rerank)
            batch = schema.with_column(batch, "n_rerank_vectors", rerank_counts)
        return batch


@dataclass
class BinarizeStage(Stage):
    """Add ``binary``: the packed sign bits of every (pooled) vector in ``embedding``."""

    name: ClassVar[str] = "binarize"
    #: How vectors become bits (part of the config hash): one sign bit per dimension, packed big-endian.
    encoding: ClassVar[str] = "sign-bits-big-endian"

    def process_batch(self, batch: pa.Table) -> pa.Table:
        packed = [
            None if buffer is None else binarize(schema.decode_embedding(buffer)).tobytes()
            for buffer in batch.column("embedding").to_pylist()
        ]
        return schema.with_column(batch, "binary", packed)
