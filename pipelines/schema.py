"""The page-record schema: the one contract between pipeline stages.

A *page record* is one row per PDF page (or one row per failed document/page). Stages read the
columns they need and add their own; every stage passes through the columns it does not own, so a
batch can be written at any point. Error rows travel the same stream: a row whose ``error_type`` is
not null carries no vectors, downstream stages pass it through untouched, and the index writer sends
it to the ``errors`` table.

Vectors are stored as raw little-endian bytes instead of nested Arrow lists: ``embedding`` holds a
row-major ``(n_vectors, dim)`` float16 matrix, ``binary`` a ``(n_vectors, dim // 8)`` uint8 matrix of
packed sign bits, where ``dim`` is the model's vector width, recorded per row in ``embedding_dim`` (128 for
most models, 320 for ColQwen3) (big-endian within each byte, the order Vespa's ``unpack_bits`` reads). That keeps
blocks compact, avoids Arrow's nested-list copies in Ray, and is the exact byte layout the Vespa feed
sends as hex.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: The vector width of indexes written before the width was recorded (every registered model was 128-d then);
#: only used to read such indexes. New rows carry theirs in ``embedding_dim`` (the model's, see the registry).
LEGACY_EMBEDDING_DIM = 128

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
        # preprocess -> embed: the page's model inputs (pipelines.models.inputs: a safetensors blob of pixel
        # values, patch grid, token ids) and its token count; transient: embed clears it, never written
        pa.field("model_inputs", pa.large_binary()),
        pa.field("n_tokens", pa.int32()),
        # embed (raw vectors) then pool (pooled vectors replace them)
        pa.field("n_vectors_raw", pa.int32()),
        pa.field("n_vectors", pa.int32()),
        pa.field("embedding", pa.binary()),  # float16 (n_vectors, embedding_dim)
        # binarize
        pa.field("binary", pa.binary()),  # uint8 (n_vectors, embedding_dim // 8)
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
        pa.field("rerank_embedding", pa.binary()),  # float16 (n_rerank_vectors, embedding_dim)
        # rasterize: the renderer that produced the page image (poppler | pdfium); null on error rows
        pa.field("renderer", pa.string()),
        # embed: where each raw vector lies on the page (pipelines.similarity_maps.PatchLayout): a grid of
        # patch_rows x patch_cols cells over the whole page image, and per raw vector its cell (row-major) or -1
        # (prompt tokens, a split-image model's global tile); null when the model's layout is unknown
        pa.field("patch_rows", pa.int32()),
        pa.field("patch_cols", pa.int32()),
        pa.field("patch_cells", pa.binary()),  # int32 (n_vectors_raw,)
        # pool: per raw vector, the row of ``embedding`` (``pool_groups``) and of ``rerank_embedding``
        # (``rerank_pool_groups``) it was pooled into; null when those rows are the raw vectors themselves
        pa.field("pool_groups", pa.binary()),  # int32 (n_vectors_raw,)
        pa.field("rerank_pool_groups", pa.binary()),  # int32 (n_vectors_raw,)
        # embed: the width of every vector of the row (the model's; binary vectors are embedding_dim // 8 bytes)
        pa.field("embedding_dim", pa.int32()),
        # pool: one vector per page (pipelines.muvera). page_embedding: float16 (embedding_dim,), the normalised
        # mean of the page's raw vectors (kept if a stage already set it: the hook for a model's own single
        # vector, e.g. jina-v4's, which the embed stage does not fill yet); muvera_embedding: float16 (muvera
        # dim,), the MUVERA fixed dimensional encoding of the re-ranking vectors (pooling.muvera; its dimension
        # follows from those settings and the vector width)
        pa.field("page_embedding", pa.binary()),
        pa.field("muvera_embedding", pa.binary()),
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
    "patch_rows",
    "patch_cols",
    "patch_cells",
    "pool_groups",
    "rerank_pool_groups",
    "embedding_dim",
    "page_embedding",
    "muvera_embedding",
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


def binary_bytes(dim: int) -> int:
    """Bytes of one packed binary vector of width ``dim`` (one sign bit per dimension)."""
    if dim < 8 or dim % 8:
        msg = f"vector width must be a positive multiple of 8, got {dim}"
        raise ValueError(msg)
    return dim // 8


def decode_embedding(buffer: bytes, dim: int) -> np.ndarray:
    """float16 ``(n, dim)`` view of an ``embedding`` (or ``rerank_embedding``) cell."""
    return np.frombuffer(buffer, dtype="<f2").reshape(-1, dim)


def decode_binary(buffer: bytes, dim: int) -> np.ndarray:
    """uint8 ``(n, dim // 8)`` view of a ``binary`` cell of ``dim``-wide vectors."""
    return np.frombuffer(buffer, dtype=np.uint8).reshape(-1, binary_bytes(dim))


def row_dim(row) -> int:
    """The vector width of a page row (a dict): its ``embedding_dim``, else (rows written before the column
    existed) derived from its bytes: ``binary`` holds ``n_vectors * dim / 8`` bytes, ``embedding`` twice ``dim``
    bytes per vector."""
    dim = row.get("embedding_dim")
    if dim:
        return int(dim)
    n = row.get("n_vectors")
    if n and row.get("binary"):
        return 8 * len(row["binary"]) // n
    if n and row.get("embedding"):
        return len(row["embedding"]) // (2 * n)
    return LEGACY_EMBEDDING_DIM


def table_dim(pages: pa.Table) -> int:
    """The one vector width of a pages table: its ``embedding_dim`` values, else derived from the ``binary`` bytes
    per vector (indexes written before the column). Raises ``ValueError`` when pages of different widths
    (different models) are mixed, or the bytes do not divide into whole vectors."""
    if "embedding_dim" in pages.column_names:
        dims = {d for d in pages.column("embedding_dim").to_pylist() if d is not None}
        if len(dims) > 1:
            msg = f"pages of different vector widths {sorted(dims)} (different models) in one index"
            raise ValueError(msg)
        if dims and pages.column("embedding_dim").null_count == 0:
            return dims.pop()
    n_vectors = int(pc.sum(pages.column("n_vectors")).as_py() or 0)
    if n_vectors == 0:
        return LEGACY_EMBEDDING_DIM
    n_bytes = sum(len(b) for b in pages.column("binary").to_pylist() if b is not None)
    if (8 * n_bytes) % n_vectors:
        msg = f"binary column holds {n_bytes} bytes but n_vectors sums to {n_vectors}: not whole vectors"
        raise ValueError(msg)
    return 8 * n_bytes // n_vectors


def with_column(table: pa.Table, name: str, values) -> pa.Table:
    """Replace column ``name`` (keeping its position and declared type) with ``values``."""
    field = PAGE_SCHEMA.field(name)
    array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, type=field.type)
    index = table.schema.get_field_index(name)
    return table.set_column(index, field, array)
