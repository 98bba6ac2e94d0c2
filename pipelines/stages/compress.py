"""Shrink page vectors: hierarchical token pooling, then 1-bit binarization for Vespa."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipelines import schema
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

    Runs on long-lived workers: importing colpali-engine (which imports every model family) costs
    seconds, so it is paid once per worker in ``setup`` rather than per task.
    """

    name: ClassVar[str] = "pool"
    stateful: ClassVar[bool] = True
    pool_factor: int = 1

    def __post_init__(self) -> None:
        if self.pool_factor < 1:
            msg = f"pooling.pool_factor must be >= 1 (1 turns pooling off), got {self.pool_factor}"
            raise ValueError(msg)
        self._pooler = None

    def setup(self) -> None:
        if self.pool_factor > 1 and self._pooler is None:
            from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

            self._pooler = HierarchicalTokenPooler()

    def process_batch(self, batch: pa.Table) -> pa.Table:
        if self.pool_factor == 1:
            return batch
        self.setup()
        pooler = self._pooler
        embeddings = batch.column("embedding").to_pylist()
        counts = batch.column("n_vectors").to_pylist()
        for i, buffer in enumerate(embeddings):
            if buffer is None:
                continue
            pooled = pool_vectors(pooler, schema.decode_embedding(buffer), self.pool_factor)
            embeddings[i] = pooled.astype("<f2").tobytes()
            counts[i] = int(pooled.shape[0])
        batch = schema.with_column(batch, "embedding", embeddings)
        return schema.with_column(batch, "n_vectors", counts)


@dataclass
class BinarizeStage(Stage):
    """Add ``binary``: the packed sign bits of every (pooled) vector in ``embedding``."""

    name: ClassVar[str] = "binarize"

    def process_batch(self, batch: pa.Table) -> pa.Table:
        packed = [
            None if buffer is None else binarize(schema.decode_embedding(buffer)).tobytes()
            for buffer in batch.column("embedding").to_pylist()
        ]
        return schema.with_column(batch, "binary", packed)
