"""Any vector width, end to end: the index reads it off its pages, local ranking is exact at every width (packed
bits of dim / 8 bytes, hamming distances beyond 255), feed documents and the Vespa schema follow it."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import schema
from pipelines.errors import ConfigError
from pipelines.search import LocalIndex
from pipelines.stages.compress import BinarizeStage, binarize


def unit(rng, n, dim):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def pages_table(pages: list[np.ndarray], with_dim: bool = True):
    rows = []
    for i, vectors in enumerate(pages):
        row = {
            "page_id": f"p{i}",
            "doc_id": f"d{i}",
            "source_uri": f"file:///{i}.pdf",
            "page_number": 1,
            "page_count": 1,
            "model": "test",
            "config_hash": "h",
            "n_vectors": len(vectors),
            "embedding": vectors.astype("<f2").tobytes(),
        }
        if with_dim:
            row["embedding_dim"] = vectors.shape[1]
        rows.append(row)
    return BinarizeStage().process_batch(schema.rows_to_table(rows)).select(schema.INDEX_PAGE_COLUMNS)


def expected_scores(query: np.ndarray, pages: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Independent first phase (hamming MaxSim over unpacked sign bits) and float MaxSim over float16 vectors."""
    q_bits = query > 0
    first, exact = [], []
    for vectors in pages:
        v16 = vectors.astype("<f2").astype(np.float32)
        distance = (q_bits[:, None, :] != (v16 > 0)[None, :, :]).sum(axis=2)  # (q, n)
        first.append((1.0 / (1.0 + distance.min(axis=1))).sum())
        exact.append((query @ v16.T).max(axis=1).sum())
    return np.array(first), np.array(exact)


@pytest.mark.parametrize("dim", [96, 128, 320])
def test_local_ranking_is_exact_at_any_width(dim):
    rng = np.random.default_rng(dim)
    query = unit(rng, 6, dim)
    pages = [unit(rng, int(rng.integers(3, 9)), dim) for _ in range(12)]
    pages.append(-query[:1])  # every sign of query token 0 flipped: hamming distance dim (> 255 at 320-d)
    table = pages_table(pages)
    index = LocalIndex(table)
    assert index.dim == dim and index.binary.shape[1] == dim // 8
    first, exact = expected_scores(query, pages)
    np.testing.assert_allclose(index.hamming_maxsim(query), first, rtol=1e-12)
    np.testing.assert_allclose(index.float_maxsim(query), exact, rtol=1e-5)
    assert index.hamming_maxsim(query[:1])[-1] == pytest.approx(1 / (1 + dim))
    top = index.search(query, top_k=3, profile="two_phase", retrieval="nearest_neighbor", target_hits=4)
    assert [h.page_index for h in top] == list(np.argsort(-exact, kind="stable")[:3])
    with pytest.raises(ValueError, match=f"{dim}-d vectors"):
        index.hamming_maxsim(unit(rng, 2, dim + 8))


def test_the_width_comes_from_the_pages_and_widths_never_mix():
    rng = np.random.default_rng(0)
    wide, narrow = [unit(rng, 4, 320)], [unit(rng, 4, 128)]
    assert schema.table_dim(pages_table(wide)) == 320
    # Pages written before the width was recorded: derived from the bytes per vector.
    legacy = pages_table(wide, with_dim=False)
    assert legacy.column("embedding_dim").null_count == 1 and schema.table_dim(legacy) == 320
    assert LocalIndex(legacy).dim == 320
    import pyarrow as pa

    with pytest.raises(ValueError, match="different vector widths"):
        schema.table_dim(pa.concat_tables([pages_table(wide), pages_table(narrow)]))
    with pytest.raises(ValueError, match="multiple of 8"):
        schema.binary_bytes(100)


def test_feed_documents_carry_the_rows_width():
    from pipelines.vespa.app import VespaAppSettings
    from pipelines.vespa.documents import DocumentSettings, iter_documents, to_bfloat16_bits
    from tests.vespa.schema_check import validator

    rng = np.random.default_rng(1)
    vectors = unit(rng, 5, 320)
    for table in (pages_table([vectors]), pages_table([vectors], with_dim=False)):
        [doc] = iter_documents(table, DocumentSettings(thumbnails=False))
        fields = {k: doc["fields"][k] for k in ("embedding", "embedding_float")}
        assert fields["embedding"]["0"] == binarize(vectors.astype("<f2").astype(np.float32))[0].tobytes().hex()
        bits = to_bfloat16_bits(vectors.astype("<f2").astype(np.float32)[0]).astype(">u2")
        assert fields["embedding_float"]["0"] == bits.tobytes().hex()
        assert validator(VespaAppSettings(embedding_dim=320))("pdf_page", fields) == []


def test_the_vespa_schema_follows_the_model_and_conflicts_fail_fast(tmp_path):
    from pipelines.vespa.app import TensorTypes, VespaAppSettings, package_files
    from pipelines.vespa.deploy import with_model_dim

    settings = with_model_dim(VespaAppSettings(), model="colqwen3-4b")
    assert settings.tensors == TensorTypes(320)
    text = package_files(settings)["schemas/pdf_page.sd"]
    assert "field embedding type tensor<int8>(patch{}, v[40])" in text
    assert "field embedding_float type tensor<bfloat16>(patch{}, v[320])" in text
    assert "query(qtb) tensor<int8>(querytoken{}, v[40])" in text
    # The default package is the default model's (ColQwen2.5, 128-d): what infra/vespa holds.
    assert VespaAppSettings().tensors == TensorTypes(128)
    with pytest.raises(ConfigError, match="disagree"):
        with_model_dim(VespaAppSettings(embedding_dim=128), model="colqwen3-4b")
    with pytest.raises(ConfigError, match="unknown model"):
        with_model_dim(VespaAppSettings(), model="no-such-model")
    with pytest.raises(ConfigError, match="no index"):
        with_model_dim(VespaAppSettings(), index=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="multiple of 8"):
        VespaAppSettings(embedding_dim=100)
