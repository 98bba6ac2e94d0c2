"""MUVERA fixed dimensional encodings and the mean page vector: the paper's definition written out, the pool stage's
columns, and retrieval by the encodings."""

import numpy as np
import pytest

from pipelines import schema
from pipelines.muvera import MuveraSettings, _random_signs, mean_vector
from pipelines.stages.compress import PoolStage


def unit(rng, n, dim=32):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def literal_encoding(vectors, settings: MuveraSettings, query: bool) -> np.ndarray:
    """arXiv 2405.19504, section 2, loop by loop: per repetition, SimHash cells from the sign pattern against
    ``simhash_bits`` hyperplanes; a query sums its projected tokens per cell, a document averages its projected
    vectors per cell and fills an empty cell with the projected vector whose pattern is nearest in hamming
    distance (first such vector on ties); then the optional Count-Sketch final projection."""
    dim = vectors.shape[1]
    reps, bits = settings.repetitions, settings.simhash_bits
    block = settings.projection_dim or dim
    planes = _random_signs(settings.seed, "simhash", (dim, reps * bits))
    projection = None
    if settings.projection_dim:
        projection = _random_signs(settings.seed, "projection", (dim, reps * block)) / np.sqrt(block)
    out = []
    for r in range(reps):
        codes = []
        for v in vectors:
            codes.append(sum(int(float(v @ planes[:, r * bits + j]) > 0) << j for j in range(bits)))
        projected = [v if projection is None else v @ projection[:, r * block : (r + 1) * block] for v in vectors]
        for cell in range(2**bits):
            members = [i for i, code in enumerate(codes) if code == cell]
            if members:
                total = np.sum([projected[i] for i in members], axis=0)
                out.extend(total if query else total / len(members))
            elif query:
                out.extend(np.zeros(block))
            else:
                nearest = min(range(len(codes)), key=lambda i: (bin(codes[i] ^ cell).count("1"), i))
                out.extend(projected[nearest])
    out = np.array(out, dtype=np.float64)
    if settings.final_dim:
        import hashlib

        digest = hashlib.shake_256(f"muvera/{settings.seed}/final-bucket".encode()).digest(8 * len(out))
        buckets = np.frombuffer(digest, dtype="<u8") % np.uint64(settings.final_dim)
        signs = _random_signs(settings.seed, "final-sign", (len(out),))
        final = np.zeros(settings.final_dim)
        for value, bucket, sign in zip(out, buckets, signs, strict=True):
            final[int(bucket)] += sign * value
        out = final
    return out


@pytest.mark.parametrize(
    "settings",
    [
        MuveraSettings(repetitions=3, simhash_bits=3, projection_dim=4),
        MuveraSettings(repetitions=2, simhash_bits=4, projection_dim=None, seed=7),
        MuveraSettings(repetitions=2, simhash_bits=2, projection_dim=8, final_dim=10),
    ],
)
def test_encodings_follow_the_papers_definition(settings):
    rng = np.random.default_rng(1)
    document, query = unit(rng, 6), unit(rng, 5)  # 6 vectors, up to 16 cells: several cells stay empty
    encoder = settings.encoder(32)
    assert encoder.dim == settings.dim(32) == len(literal_encoding(query, settings, True))
    np.testing.assert_allclose(encoder.document(document), literal_encoding(document, settings, False), atol=1e-5)
    np.testing.assert_allclose(encoder.query(query), literal_encoding(query, settings, True), atol=1e-5)


def test_random_matrices_are_fixed_by_the_seed_not_by_numpy():
    # The documented derivation (SHAKE-256 of "muvera/<seed>/<name>", bits most significant first, 1 -> +1), which
    # the standard fixes: stored encodings and later query encodings must agree across numpy upgrades.
    import hashlib

    first_bytes = hashlib.shake_256(b"muvera/0/simhash").digest(2)
    expected = [1.0 if byte >> (7 - bit) & 1 else -1.0 for byte in first_bytes for bit in range(8)]
    assert _random_signs(0, "simhash", (16,)).tolist() == expected
    assert not np.array_equal(_random_signs(0, "simhash", (64,)), _random_signs(1, "simhash", (64,)))


def test_dimensions_and_bad_settings():
    assert MuveraSettings().dim(128) == 20 * 32 * 16
    assert MuveraSettings(projection_dim=None, simhash_bits=2).dim(320) == 20 * 4 * 320
    assert MuveraSettings(final_dim=1000).dim(128) == 1000
    for bad in ({"repetitions": 0}, {"simhash_bits": 11}, {"projection_dim": 0}, {"final_dim": 0}):
        with pytest.raises(ValueError, match=r"pooling\.muvera"):
            MuveraSettings(**bad)


def test_the_encodings_dot_product_retrieves_the_page_a_query_was_drawn_from():
    rng = np.random.default_rng(3)
    pages = [unit(rng, int(n), 64) for n in rng.integers(20, 60, size=40)]
    encoder = MuveraSettings(repetitions=8, simhash_bits=3, projection_dim=None).encoder(64)
    encoded = encoder.documents(pages)
    found = 0
    for target in range(0, 40, 4):
        picked = pages[target][rng.choice(len(pages[target]), 8, replace=False)]
        query = picked + 0.05 * rng.standard_normal(picked.shape)
        found += int(np.argmax(encoded @ encoder.query(query)) == target)
    assert found == 10


def test_mean_vector_is_the_normalised_mean():
    vectors = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(mean_vector(vectors), np.array([4.0, 2.0]) / np.sqrt(20.0), rtol=1e-6)
    assert mean_vector(np.array([[1.0, 0.0], [-1.0, 0.0]])).tolist() == [0.0, 0.0]


def test_pool_stage_adds_one_vector_per_page_from_the_raw_vectors():
    rng = np.random.default_rng(5)
    raw = [unit(rng, 9, 128), unit(rng, 4, 128)]
    supplied = unit(rng, 1, 128)[0]  # a model's own page embedding, set by the embed stage
    rows = [
        {"source_uri": f"file:///{i}.pdf", "n_vectors": len(r), "embedding": r.astype("<f2").tobytes()}
        for i, r in enumerate(raw)
    ]
    rows[1]["page_embedding"] = supplied.astype("<f2").tobytes()
    rows.append({"source_uri": "file:///bad.pdf", "error_type": "RenderError"})
    batch = schema.rows_to_table(rows)
    settings = MuveraSettings(repetitions=2, simhash_bits=2)
    out = PoolStage(pool_factor=1, muvera=settings).process_batch(batch)
    pages, encodings = out.column("page_embedding").to_pylist(), out.column("muvera_embedding").to_pylist()
    stored = [r.astype("<f2").astype(np.float32) for r in raw]
    np.testing.assert_array_equal(np.frombuffer(pages[0], "<f2"), mean_vector(stored[0]).astype("<f2"))
    assert pages[1] == supplied.astype("<f2").tobytes()
    for cell, vectors in zip(encodings, stored, strict=False):
        expected = settings.encoder(128).document(vectors).astype("<f2")
        np.testing.assert_array_equal(np.frombuffer(cell, "<f2"), expected)
    assert pages[2] is None and encodings[2] is None
    off = PoolStage(pool_factor=1, page_vector=False, muvera=None).process_batch(schema.rows_to_table(rows[:1]))
    assert off.column("page_embedding").null_count == 1 and off.column("muvera_embedding").null_count == 1
