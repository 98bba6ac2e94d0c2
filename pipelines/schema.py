"""The page-record schema: the one contract between pipeline stages.

A *page record* is one row per PDF page (or one row per failed document/page). Stages read the
columns they need and add their own; every stage passes through the columns it does not own, so a
batch can be written at any point. Error rows travel the same stream: a row whose ``error_type`` is
not null carries no vectors, downstream stages pass it through untouched, and the index writer sends
it to the ``errors`` table.

Vectors are stored as raw little-endian bytes instead of nested Arrow lists: ``embedding`` holds a
row-major ``(n_vectors, dim)`` float16 matrix, ``binary`` a ``(n_vectors, dim // 8)`` uint8 matrix of
packed sign bits (big-endian within each byte, the order Vespa's ``unpack_bits`` reads). That keeps
blocks compact, avoids Arrow's nested-list copies in Ray, and is the exact byte layout the Vespa feed
sends as hex.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

EMBEDDING_DIM = 128
BINARY_BYTES = EMBEDDING_DIM // 8

#: Columns of a source row, produced by listing the input location.
SOURCE_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_size", pa.int64()),
    ]
)

#: The full page record. Stages fill columns left to right; unfilled columns are null.
PAGE_SCHEMA = pa.schema(
    [
        # identity (rasterize)
        pa.field("page_id", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("page_number", pa.int32()),  # 1-based; null for document-level errors
        pa.field("page_count", pa.int32()),
        pa.field("title", pa.string()),  # the PDF's Title metadata, else the file name without suffix
        pa.field("width_pt", pa.float32()),
        pa.field("height_pt", pa.float32()),
        # rasterize
        pa.field("image", pa.binary()),  # PNG or JPEG bytes
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        pa.field("thumbnail", pa.binary()),  # small JPEG for result lists; null when disabled
        pa.field("text", pa.large_string()),  # the page's text layer, "" when it has none
        # embed (raw vectors) then pool (pooled vectors replace them)
        pa.field("n_vectors_raw", pa.int32()),
        pa.field("n_vectors", pa.int32()),
        pa.field("embedding", pa.binary()),  # float16 (n_vectors, 128)
        # binarize
        pa.field("binary", pa.binary()),  # uint8 (n_vectors, 16)
        # provenance
        pa.field("model", pa.string()),
        pa.field("config_hash", pa.string()),
        # errors
        pa.field("error_stage", pa.string()),
        pa.field("error_type", pa.string()),
        pa.field("error_message", pa.large_string()),
        # pool (pooling.rerank_pool_factor): the float re-ranking vectors when they are pooled differently from
        # ``embedding`` (null otherwise: ``embedding`` is then the re-ranking vectors too)
        pa.field("n_rerank_vectors", pa.int32()),
        pa.field("rerank_embedding", pa.binary()),  # float16 (n_rerank_vectors, 128)
        # rasterize: the renderer that produced the page image (poppler | pdfium); null on error rows
        pa.field("renderer", pa.string()),
    ]
)

#: Columns written to the index's ``pages`` table.
INDEX_PAGE_COLUMNS = [
    "page_id",
    "doc_id",
    "source_uri",
    "page_number",
    "page_count",
    "title",
    "width_pt",
    "height_pt",
    "image_width",
    "image_height",
    "thumbnail",
    "text",
    "n_vectors_raw",
    "n_vectors",
    "embedding",
    "binary",
    "model",
    "config_hash",
    "n_rerank_vectors",
    "rerank_embedding",
    "renderer",
]

#: Columns written to the index's ``errors`` table.
INDEX_ERROR_COLUMNS = [
    "source_uri",
    "doc_id",
    "page_number",
    "page_count",  # known once the document opened; lets the ledger see that every page is accounted for
    "error_stage",
    "error_type",
    "error_message",
    "model",
    "config_hash",
]

PAGES_TABLE_SCHEMA = pa.schema([PAGE_SCHEMA.field(name) for name in INDEX_PAGE_COLUMNS])
ERRORS_TABLE_SCHEMA = pa.schema([PAGE_SCHEMA.field(name) for name in INDEX_ERROR_COLUMNS])


def empty_rows(n: int) -> dict[str, list]:
    """Column dict of ``n`` all-null page records, to be filled in by the caller."""
    return {field.name: [None] * n for field in PAGE_SCHEMA}


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Build a page-record table from dicts; missing keys become null. Raises on unknown keys."""
    unknown = {key for row in rows for key in row} - set(PAGE_SCHEMA.names)
    if unknown:
        msg = f"not page-record columns: {sorted(unknown)}"
        raise KeyError(msg)
    columns = {name: [row.get(name) for row in rows] for name in PAGE_SCHEMA.names}
    return pa.table(columns, schema=PAGE_SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """Return ``table`` with exactly the page-record columns, in order, with their declared types.

    Ray may hand a stage a block whose all-null columns were inferred as ``null`` type, or drop
    nothing but reorder; this restores the contract. Missing columns are added as nulls.
    """
    arrays = []
    for field in PAGE_SCHEMA:
        if field.name in table.column_names:
            column = table.column(field.name)
            if column.type != field.type:
                column = column.cast(field.type)
            arrays.append(column)
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=PAGE_SCHEMA)


def ok_mask(table: pa.Table) -> np.ndarray:
    """Boolean mask of rows that are pages (not error rows)."""
    return table.column("error_type").is_null().to_numpy(zero_copy_only=False)


def decode_embedding(buffer: bytes, dim: int = EMBEDDING_DIM) -> np.ndarray:
    """float16 ``(n, dim)`` view of an ``embedding`` cell."""
    return np.frombuffer(buffer, dtype="<f2").reshape(-1, dim)


def decode_binary(buffer: bytes, n_bytes: int = BINARY_BYTES) -> np.ndarray:
    """uint8 ``(n, dim // 8)`` view of a ``binary`` cell."""
    return np.frombuffer(buffer, dtype=np.uint8).reshape(-1, n_bytes)


def with_column(table: pa.Table, name: str, values) -> pa.Table:
    """Replace column ``name`` (keeping its position and declared type) with ``values``."""
    field = PAGE_SCHEMA.field(name)
    array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, type=field.type)
    index = table.schema.get_field_index(name)
    return table.set_column(index, field, array)
