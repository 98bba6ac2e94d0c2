"""Pooling must be colpali-engine's own; binarization must round-trip through Vespa's unpack_bits."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

from pipelines import schema
from pipelines.stages.compress import BinarizeStage, PoolStage, binarize, pool_vectors, row_dims, unpack_bits


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def vespa_unpack_bits(packed: np.ndarray) -> np.ndarray:
    """Independent reading of Vespa's unpack_bits (default big endian): bit 7 of byte 0 is cell 0."""
    out = np.zeros((packed.shape[0], packed.shape[1] * 8), dtype=np.float32)
    for row in range(packed.shape[0]):
        for byte_index, byte in enumerate(packed[row]):
            value = int(byte) & 0xFF  # Vespa stores int8; the bit pattern is what matters
            for bit in range(8):
                out[row, byte_index * 8 + bit] = (value >> (7 - bit)) & 1
    return out


def test_binarize_packs_128_sign_bits_into_16_bytes_and_round_trips():
    vectors = unit_vectors(37)
    packed = binarize(vectors)
    assert packed.shape == (37, 16)
    assert packed.dtype == np.uint8
    expected = (vectors > 0).astype(np.float32)
    np.testing.assert_array_equal(vespa_unpack_bits(packed), expected)
    np.testing.assert_array_equal(unpack_bits(packed), expected)
    # The same bytes read as int8 (Vespa's cell type) carry the same bits.
    np.testing.assert_array_equal(vespa_unpack_bits(packed.view(np.int8)), expected)


def test_binarize_known_pattern():
    vector = -np.ones((1, 128), dtype=np.float32)
    vector[0, 0] = 1.0  # first cell → most significant bit of the first byte
    vector[0, 15] = 1.0  # last bit of the second byte
    packed = binarize(vector)
    assert packed[0, 0] == 0b1000_0000
    assert packed[0, 1] == 0b0000_0001
    assert packed[0, 2:].sum() == 0


@pytest.mark.parametrize("pool_factor", [2, 3])
def test_pooling_equals_colpali_engine_hierarchical_pooler(pool_factor):
    vectors = unit_vectors(90, seed=pool_factor)
    ours = pool_vectors(HierarchicalTokenPooler(), vectors, pool_factor)
    direct = HierarchicalTokenPooler().pool_embeddings([torch.from_numpy(vectors)], pool_factor=pool_factor)[0]
    np.testing.assert_allclose(ours, direct.numpy(), rtol=0, atol=1e-6)
    assert ours.shape[0] <= 90 // pool_factor
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_pool_factor_one_and_single_vector_pages_are_unchanged():
    vectors = unit_vectors(5)
    np.testing.assert_array_equal(pool_vectors(HierarchicalTokenPooler(), vectors, 1), vectors)
    np.testing.assert_array_equal(pool_vectors(HierarchicalTokenPooler(), vectors[:1], 3), vectors[:1])


def page_batch(arrays):
    rows = [
        {"source_uri": f"file:///{i}.pdf", "embedding": a.astype("<f2").tobytes(), "n_vectors": len(a)}
        for i, a in enumerate(arrays)
    ]
    rows.append({"source_uri": "file:///bad.pdf", "error_type": "corrupt", "error_stage": "rasterize"})
    return schema.rows_to_table(rows)


def test_pool_and_binarize_stages_update_vectors_and_pass_error_rows_through():
    arrays = [unit_vectors(60, seed=1), unit_vectors(31, seed=2)]
    out = BinarizeStage().apply(PoolStage(pool_factor=3).apply(page_batch(arrays)))
    assert out.schema == schema.PAGE_SCHEMA
    rows = out.to_pylist()
    for row, raw in zip(rows[:2], arrays, strict=True):
        pooled = schema.decode_embedding(row["embedding"], 128)
        assert row["n_vectors"] == pooled.shape[0] <= len(raw) // 3
        np.testing.assert_array_equal(schema.decode_binary(row["binary"], 128), binarize(pooled))
    assert rows[2]["embedding"] is None and rows[2]["binary"] is None and rows[2]["error_type"] == "corrupt"


@pytest.mark.parametrize(("pool_factor", "rerank_pool_factor"), [(3, 1), (3, 2), (1, 2)])
def test_rerank_vectors_are_pooled_separately_from_the_raw_vectors(pool_factor, rerank_pool_factor):
    arrays = [unit_vectors(60, seed=1), unit_vectors(31, seed=2)]
    stage = PoolStage(pool_factor=pool_factor, rerank_pool_factor=rerank_pool_factor)
    out = BinarizeStage().apply(stage.apply(page_batch(arrays))).to_pylist()
    pooler = HierarchicalTokenPooler()
    for row, raw in zip(out[:2], arrays, strict=True):
        raw16 = raw.astype("<f2").astype(np.float32)  # the embed stage's stored vectors
        candidates = schema.decode_embedding(row["embedding"], 128)
        np.testing.assert_array_equal(candidates, pool_vectors(pooler, raw16, pool_factor).astype("<f2"))
        np.testing.assert_array_equal(schema.decode_binary(row["binary"], 128), binarize(candidates))
        rerank = schema.decode_embedding(row["rerank_embedding"], 128)
        np.testing.assert_array_equal(rerank, pool_vectors(pooler, raw16, rerank_pool_factor).astype("<f2"))
        assert row["n_rerank_vectors"] == len(rerank) and row["n_vectors"] == len(candidates)
    assert out[2]["rerank_embedding"] is None and out[2]["n_rerank_vectors"] is None


@pytest.mark.parametrize("rerank_pool_factor", [None, 3])
def test_no_rerank_column_when_rerank_vectors_are_the_candidates(rerank_pool_factor):
    out = PoolStage(pool_factor=3, rerank_pool_factor=rerank_pool_factor).apply(page_batch([unit_vectors(30)]))
    assert out.column("rerank_embedding").null_count == out.num_rows
    assert not PoolStage(pool_factor=3, rerank_pool_factor=rerank_pool_factor).separate_rerank


def test_pool_stage_rejects_bad_factor():
    with pytest.raises(ValueError, match="pool_factor"):
        PoolStage(pool_factor=0)
    with pytest.raises(ValueError, match="rerank_pool_factor"):
        PoolStage(pool_factor=3, rerank_pool_factor=0)


def test_conform_restores_types_of_all_null_columns():
    table = pa.table({"source_uri": ["a"], "embedding": pa.nulls(1)})
    assert schema.conform(table).schema == schema.PAGE_SCHEMA


def test_row_dims_take_the_recorded_width_else_derive_it_from_the_bytes():
    vectors = np.ones((3, 320), dtype="<f2").tobytes()  # 3 vectors of 320 values
    batch = pa.table(
        {
            "embedding_dim": pa.array([320, None, None], pa.int32()),
            "n_vectors": pa.array([3, 3, None], pa.int32()),
            "embedding": pa.array([vectors, vectors, None], pa.large_binary()),
        }
    )
    # Recorded; missing (an older row): 2 bytes per value of each vector; nothing to go by: the legacy width.
    assert row_dims(batch) == [320, 320, schema.LEGACY_EMBEDDING_DIM]
    assert row_dims(batch.drop_columns(["embedding_dim"])) == [320, 320, schema.LEGACY_EMBEDDING_DIM]
