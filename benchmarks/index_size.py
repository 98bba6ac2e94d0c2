"""Benchmark 2, index_size: bytes per page of float16, binary and pooled binary vectors, per model patch count.

The byte figures are arithmetic over each model's vectors per page (:func:`patch_counts`, derived from the
processors' resize rules); the Parquet figures are measured on synthetic clustered pages written with the index's
settings (zstd).
"""

from __future__ import annotations

import io

from benchmarks.common import REFERENCE_DIM, REFERENCE_MODEL, pages_table
from benchmarks.vectors import CLUSTERED_RECIPE, ClusteredVectors
from pipelines import schema

#: The models the index-size table shows (one per family and vector count), and the pages it shows them on.
SIZE_MODELS = ("colpali-v1.3", "colqwen2-v1.0", "colqwen2.5-v0.2", "tiny", "colsmol-256m")


def patch_counts() -> list[dict]:
    """Vectors per page of :data:`SIZE_MODELS` on US Letter and A4 portrait pages, with where each count comes
    from (:func:`benchmarks.models.vectors_per_page`: the registry budget and the family's own patch rules)."""
    from benchmarks.models import A4, LETTER, vectors_per_page
    from pipelines.models import registry

    rows = []
    for name in SIZE_MODELS:
        spec = registry.get_spec(name)
        for page, page_pt in (("US Letter portrait", LETTER), ("A4 portrait", A4)):
            count = vectors_per_page(spec, page_pt)
            source = f"render {count['render']} px (registry budget {spec.max_pixels:,} px): {count['source']}"
            rows.append({"model": name, "dim": spec.dim, "page": page, "vectors": count["vectors"], "source": source})
    return rows


def parquet_bytes_per_page(n_pages: int, n_vectors: int, seed: int = 0) -> dict:
    """Measured zstd Parquet bytes per page of the ``embedding`` and ``binary`` columns (the index's settings)."""
    import pyarrow.parquet as pq

    vectors = ClusteredVectors(seed).pages(n_pages, n_vectors)
    table = pages_table(vectors).select(["n_vectors", "embedding", "binary"])
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    metadata = pq.ParquetFile(io.BytesIO(buffer.getvalue())).metadata
    sizes = {"embedding": 0, "binary": 0}
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            if column.path_in_schema in sizes:
                sizes[column.path_in_schema] += column.total_compressed_size
    return {
        "pages": n_pages,
        "vectors_per_page": n_vectors,
        "embedding_bytes_per_page": sizes["embedding"] / n_pages,
        "binary_bytes_per_page": sizes["binary"] / n_pages,
        "embedding_raw_bytes_per_page": n_vectors * REFERENCE_DIM * 2,
        "binary_raw_bytes_per_page": n_vectors * schema.binary_bytes(REFERENCE_DIM),
    }


#: Vespa HNSW level-0 links per candidate vector (max-links-per-node 32; level 0 keeps 2x), 4 bytes each: an estimate.
HNSW_LINK_BYTES = 2 * 32 * 4


def deployed_bytes(n: int, pool_factor: int = 3, rerank_pool_factor: int = 1, dim: int = REFERENCE_DIM) -> dict:
    """Bytes per page of each part of the deployed layout (``pooling.pool_factor`` candidates, ``rerank_pool_factor``
    re-ranking vectors): in Vespa memory (binary attribute + HNSW estimate), on Vespa disk (paged bfloat16), and in
    the Parquet index before compression (pooled float16 + binary + float16 re-ranking vectors). The one-vector-per-
    page fields (mean page vector, MUVERA encoding with the default ``pooling.muvera``) are in-memory HNSW fields too:
    bfloat16 values plus one vector's links; the index stores them as float16."""
    from pipelines.muvera import MuveraSettings

    candidates = max(n // pool_factor, 1)
    rerank = max(n // rerank_pool_factor, 1)
    separate = rerank_pool_factor != pool_factor
    muvera = MuveraSettings().dim(dim)
    return {
        "pool_factor": pool_factor,
        "rerank_pool_factor": rerank_pool_factor,
        "memory_binary": candidates * schema.binary_bytes(dim),
        "memory_hnsw_estimate": candidates * HNSW_LINK_BYTES,
        "memory_page_vector": dim * 2 + HNSW_LINK_BYTES,
        "memory_muvera": muvera * 2 + HNSW_LINK_BYTES,
        "disk_rerank_bfloat16": rerank * dim * 2,
        "index_raw": candidates * (dim * 2 + schema.binary_bytes(dim))
        + (rerank * dim * 2 if separate else 0)
        + (dim + muvera) * 2,
    }


def bench_index_size(size: int = 200, pool_factors: tuple[int, ...] = (2, 3, 4)) -> dict:
    """Bytes per page of float16, binary, and binary after pooling, per model patch count; measured Parquet bytes.

    Pooled counts are the pooler's cluster count ``max(n // pool_factor, 1)`` (fewer only when Ward merge distances
    tie, e.g. duplicate vectors). The byte figures are arithmetic; the Parquet ones are measured.
    """
    rows = []
    for entry in patch_counts():
        n, dim = entry["vectors"], entry["dim"]
        bits = schema.binary_bytes(dim)
        formats = {"float16": n * dim * 2, "binary": n * bits}
        for factor in pool_factors:
            formats[f"binary_pool{factor}"] = max(n // factor, 1) * bits
        formats["index_pool3_float16_plus_binary"] = max(n // 3, 1) * (dim * 2 + bits)
        rows.append({**entry, "bytes_per_page": formats, "deployed": deployed_bytes(n, dim=dim)})
    measured = []
    reference = next(r["vectors"] for r in rows if r["model"] == REFERENCE_MODEL)
    for n in sorted({reference, reference // 3}):
        measured.append(parquet_bytes_per_page(size, n))
    return {
        "params": {"parquet_pages": size, "pool_factors": list(pool_factors), "compression": "zstd"},
        "results": {
            "models": rows,
            "parquet": measured,
            "parquet_vectors": "synthetic clustered set",
            "recipe": CLUSTERED_RECIPE,
        },
        "checks": [],
    }
