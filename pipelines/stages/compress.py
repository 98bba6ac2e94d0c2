"""Shrink page vectors: hierarchical token pooling, then 1-bit binarization for Vespa."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipelines import schema
from pipelines.ids import affects_vectors
from pipelines.muvera import MuveraSettings, mean_vector
from pipelines.stages.base import Stage


def pool_vectors(pooler, vectors: np.ndarray, pool_factor: int) -> np.ndarray:
    """Pool one page's ``(n, d)`` vectors with colpali-engine's ``HierarchicalTokenPooler``.

    Returns unit-norm float32 vectors, about ``n // pool_factor`` of them. ``pool_factor=1`` and
    pages with fewer than two vectors (the pooler rejects those) are returned unchanged.
    """
    return pool_vectors_with_groups(pooler, vectors, pool_factor)[0]


def pool_vectors_with_groups(pooler, vectors: np.ndarray, pool_factor: int) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`pool_vectors` and, per input vector, the row of the pooled output it went into (int32 ``(n,)``;
    ``None`` when nothing was pooled). The pooler's own cluster assignment (``return_dict=True``): similarity
    maps spread a pooled vector's score over the patches of its cluster."""
    import torch

    if pool_factor == 1 or vectors.shape[0] < 2:
        return vectors.astype(np.float32), None
    output = pooler.pool_embeddings(
        [torch.from_numpy(vectors.astype(np.float32))], pool_factor=pool_factor, return_dict=True
    )
    groups = np.full(vectors.shape[0], -1, dtype=np.int32)
    row = 0
    # The pooler emits one vector per non-empty cluster, in cluster-id order.
    for cluster_id in sorted(output.cluster_id_to_indices[0]):
        members = output.cluster_id_to_indices[0][cluster_id][0].numpy()
        if members.size:
            groups[members] = row
            row += 1
    return output.pooled_embeddings[0].numpy(), groups


def row_dims(batch: pa.Table) -> list[int]:
    """Each row's vector width (:func:`pipelines.schema.row_dim`: ``embedding_dim``, else from the bytes).

    Only rows without ``embedding_dim`` (written before the column existed) have their vector bytes read.
    """
    has_dim = "embedding_dim" in batch.column_names
    dims = batch.column("embedding_dim").to_pylist() if has_dim else [None] * batch.num_rows
    missing = [i for i, dim in enumerate(dims) if not dim]
    if missing:
        columns = [c for c in ("embedding_dim", "n_vectors", "embedding") if c in batch.column_names]
        for i, row in zip(missing, batch.select(columns).take(missing).to_pylist(), strict=True):
            dims[i] = schema.row_dim(row)
    return [int(dim) for dim in dims]


def binarize(vectors: np.ndarray) -> np.ndarray:
    """Pack each vector's sign bits (``v > 0`` → 1) into bytes, most significant bit first.

    A ``d``-wide vector becomes ``d / 8`` bytes (128-d: 16, 320-d: 40). Bit order is numpy's default
    big-endian ``packbits``, which is what Vespa's ``unpack_bits`` (default ``big``) reads back.
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

    Before pooling it adds one vector per page from the raw vectors (:mod:`pipelines.muvera`): ``page_embedding``,
    their normalised mean, where no earlier stage set it (the hook for a model's own page embedding, which the
    embed stage does not fill yet), when ``page_vector`` is on; and ``muvera_embedding``, their MUVERA fixed
    dimensional encoding, unless ``muvera`` is null. Both come from the unpooled vectors, so the encoding
    approximates MaxSim over the model's own vectors whatever the pool factors.

    Runs on long-lived workers: the pooler (colpali-engine's, imported without its model families,
    see :mod:`pipelines.models.colpali`) is loaded once per worker in ``setup`` rather than per task.
    A page whose vectors the pooler or the page-vector encodings fail on is a ``pool_failed`` error row
    (:meth:`Stage.__call__ <pipelines.stages.base.Stage.__call__>` redoes the batch page by page).
    """

    name: ClassVar[str] = "pool"
    stateful: ClassVar[bool] = True
    pool_factor: int = field(default=1, metadata=affects_vectors())
    rerank_pool_factor: int | None = field(default=None, metadata=affects_vectors())
    page_vector: bool = field(default=True, metadata=affects_vectors())
    muvera: MuveraSettings | None = field(default_factory=MuveraSettings, metadata=affects_vectors())

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
        batch = self._page_vectors(batch)
        if self.pool_factor == 1 and not self.separate_rerank:
            return batch
        return self._pool(batch)

    def _page_vectors(self, batch: pa.Table) -> pa.Table:
        """``page_embedding`` (where still empty) and ``muvera_embedding`` of every row with raw vectors."""
        if not self.page_vector and self.muvera is None:
            return batch
        embeddings = batch.column("embedding").to_pylist()
        supplied = batch.column("page_embedding").to_pylist() if "page_embedding" in batch.column_names else None
        pages = list(supplied) if supplied is not None else [None] * len(embeddings)
        encodings = [None] * len(embeddings)
        for i, (buffer, dim) in enumerate(zip(embeddings, row_dims(batch), strict=True)):
            if buffer is None:
                continue
            raw = schema.decode_embedding(buffer, dim)
            if self.page_vector and pages[i] is None:
                pages[i] = mean_vector(raw).astype("<f2").tobytes()
            if self.muvera is not None:
                encodings[i] = self.muvera.encoder(dim).document(raw).astype("<f2").tobytes()
        batch = schema.with_column(batch, "page_embedding", pages)
        return schema.with_column(batch, "muvera_embedding", encodings)

    def _pool(self, batch: pa.Table) -> pa.Table:
        self.setup()
        pooler = self._pooler
        embeddings = batch.column("embedding").to_pylist()
        counts = batch.column("n_vectors").to_pylist()
        rerank = [None] * len(embeddings)
        rerank_counts = [None] * len(embeddings)
        groups = [None] * len(embeddings)
        rerank_groups = [None] * len(embeddings)
        dims = row_dims(batch)
        for i, buffer in enumerate(embeddings):
            if buffer is None:
                continue
            raw = schema.decode_embedding(buffer, dims[i])
            if self.separate_rerank:
                vectors, members = pool_vectors_with_groups(pooler, raw, self.rerank_pool_factor)
                rerank[i] = buffer if self.rerank_pool_factor == 1 else vectors.astype("<f2").tobytes()
                rerank_counts[i] = int(vectors.shape[0])
                rerank_groups[i] = None if members is None else members.astype("<i4").tobytes()
            if self.pool_factor > 1:
                pooled, members = pool_vectors_with_groups(pooler, raw, self.pool_factor)
                embeddings[i] = pooled.astype("<f2").tobytes()
                counts[i] = int(pooled.shape[0])
                groups[i] = None if members is None else members.astype("<i4").tobytes()
        batch = schema.with_column(batch, "embedding", embeddings)
        batch = schema.with_column(batch, "n_vectors", counts)
        batch = schema.with_column(batch, "pool_groups", groups)
        if self.separate_rerank:
            batch = schema.with_column(batch, "rerank_embedding", rerank)
            batch = schema.with_column(batch, "n_rerank_vectors", rerank_counts)
            batch = schema.with_column(batch, "rerank_pool_groups", rerank_groups)
        return batch


@dataclass
class BinarizeStage(Stage):
    """Add ``binary``: the packed sign bits of every (pooled) vector in ``embedding`` (a page it fails on is a
    ``binarize_failed`` error row, see :mod:`pipelines.stages.base`)."""

    name: ClassVar[str] = "binarize"
    #: How vectors become bits (part of the config hash): one sign bit per dimension, packed big-endian.
    encoding: ClassVar[str] = "sign-bits-big-endian"

    def process_batch(self, batch: pa.Table) -> pa.Table:
        packed = [
            None if buffer is None else binarize(schema.decode_embedding(buffer, dim)).tobytes()
            for buffer, dim in zip(batch.column("embedding").to_pylist(), row_dims(batch), strict=True)
        ]
        return schema.with_column(batch, "binary", packed)
