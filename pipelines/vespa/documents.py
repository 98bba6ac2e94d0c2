"""Index page rows -> Vespa feed documents for the ``pdf_page`` schema.

The compact form (what we send) writes each patch of a mapped tensor as one hex string, Vespa's
shortest documented JSON for mixed tensors with one mapped dimension:

* ``embedding`` (``tensor<int8>(patch{}, v[dim / 8])``, ``dim`` the row's ``embedding_dim``, e.g. 128):
  ``{"0": "<dim / 4 hex digits>", ...}``, the ``dim / 8`` packed sign-bit bytes of each patch, two hex digits
  per int8 cell (two's complement), exactly our stored bytes.
* ``embedding_float`` (``tensor<bfloat16>(patch{}, v[dim])``): ``{"0": "<4 * dim hex digits>", ...}``, four hex
  digits per cell: the bfloat16 bit pattern (the float32's top 16 bits, rounded to nearest even). These
  are the page's float re-ranking vectors: ``rerank_embedding`` when the index has it
  (``pooling.rerank_pool_factor``, e.g. unpooled), else ``embedding``.

* ``page_embedding`` / ``muvera_embedding`` (``tensor<bfloat16>(x[n])``, one vector per page, when the index
  has them): ``{"values": "<4 * n hex digits>"}``, the same bfloat16 bit patterns, dense.

The list form (pyvespa's usual ``{"0": [dim / 8 ints], ...}`` / ``{"0": [dim floats], ...}``) is kept for the
serialization benchmark and for debugging.

Document ids are the pages' deterministic ``page_id``, so feeding a page again overwrites it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines import io, schema
from pipelines.vespa.app import BINARY_FIELD, FLOAT_FIELD, MUVERA_FIELD, PAGE_VECTOR_FIELD

FORMS = ("hex", "list")

#: Index columns the feed reads (``thumbnail`` and ``title`` may be absent in older indexes).
FEED_COLUMNS = [
    "page_id",
    "doc_id",
    "source_uri",
    "title",
    "page_number",
    "page_count",
    "text",
    "thumbnail",
    "n_vectors",
    "embedding",
    "binary",
    "model",
    "config_hash",
    "rerank_embedding",
    "embedding_dim",
    "page_embedding",
    "muvera_embedding",
]
#: One-vector-per-page index columns and the Vespa fields they feed (the index's column names are the fields').
PAGE_VECTOR_COLUMNS = {"page_embedding": PAGE_VECTOR_FIELD, "muvera_embedding": MUVERA_FIELD}


@dataclass
class DocumentSettings:
    """What goes into each fed document. Hydra group ``vespa.documents``."""

    form: str = "hex"  # hex (compact) or list (pyvespa's default lists; larger and slower)
    float_vectors: bool = True  # feed embedding_float (needed by the two_phase, hybrid and float profiles)
    thumbnails: bool = True  # feed the page thumbnail when the index has one
    max_text_chars: int = 100_000  # longer text layers are cut (Vespa string fields are not meant for books)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            msg = f"vespa.documents.form must be one of {FORMS}, got {self.form!r}"
            raise ValueError(msg)


def to_bfloat16_bits(vectors: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns of finite float vectors, rounded to nearest even."""
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """float32 values of uint16 bfloat16 bit patterns."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def binary_tensor(binary: np.ndarray, form: str = "hex") -> dict[str, Any]:
    """``tensor<int8>(patch{}, v[dim / 8])`` JSON from packed bits ``(n, dim / 8)`` uint8."""
    if form == "hex":
        return {str(i): row.tobytes().hex() for i, row in enumerate(binary)}
    return {str(i): row.astype(np.int8).tolist() for i, row in enumerate(binary)}


def float_tensor(vectors: np.ndarray, form: str = "hex") -> dict[str, Any]:
    """``tensor<bfloat16>(patch{}, v[dim])`` JSON from float vectors ``(n, dim)``."""
    if form == "hex":
        big_endian = to_bfloat16_bits(vectors).astype(">u2")
        return {str(i): row.tobytes().hex() for i, row in enumerate(big_endian)}
    return {str(i): row.tolist() for i, row in enumerate(np.asarray(vectors, dtype=np.float32))}


def dense_tensor(vector: np.ndarray, form: str = "hex") -> dict[str, Any]:
    """``tensor<bfloat16>(x[n])`` JSON from a float vector ``(n,)``."""
    vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    if form == "hex":
        return {"values": to_bfloat16_bits(vector).astype(">u2").tobytes().hex()}
    return {"values": vector[0].tolist()}


def page_document(row: Mapping[str, Any], settings: DocumentSettings) -> dict[str, Any]:
    """One feed operation ``{"id": page_id, "fields": {...}}`` for an index page row."""
    dim = schema.row_dim(row)
    binary = schema.decode_binary(row["binary"], dim)
    text = row.get("text") or ""
    source_uri = row["source_uri"]
    fields: dict[str, Any] = {
        "page_id": row["page_id"],
        "doc_id": row["doc_id"],
        "source_uri": source_uri,
        "title": row.get("title") or io.file_stem(source_uri),  # indexes written before titles existed
        "text": text[: settings.max_text_chars],
        "page_number": int(row["page_number"]),
        "page_count": int(row["page_count"]),
        "model": row["model"],
        "config_hash": row["config_hash"],
        BINARY_FIELD: binary_tensor(binary, settings.form),
    }
    if settings.float_vectors:
        fields[FLOAT_FIELD] = float_tensor(schema.decode_embedding(rerank_vectors(row), dim), settings.form)
    for column, field_name in PAGE_VECTOR_COLUMNS.items():
        if row.get(column):
            fields[field_name] = dense_tensor(np.frombuffer(row[column], dtype="<f2"), settings.form)
    if settings.thumbnails and row.get("thumbnail"):
        fields["thumbnail"] = base64.b64encode(row["thumbnail"]).decode("ascii")
    return {"id": row["page_id"], "fields": fields}


def rerank_vectors(row: Mapping[str, Any]) -> bytes:
    """The float re-ranking vectors of an index page row (float16 bytes): ``rerank_embedding`` when stored."""
    return row.get("rerank_embedding") or row["embedding"]


def iter_documents(pages: pa.Table, settings: DocumentSettings) -> Iterator[dict[str, Any]]:
    """Feed operations for every row of an index ``pages`` table, in table order."""
    columns = [c for c in FEED_COLUMNS if c in pages.column_names]
    if not settings.float_vectors:
        columns = [c for c in columns if c not in ("embedding", "rerank_embedding")]
    for batch in pages.select(columns).to_batches(max_chunksize=256):
        for row in batch.to_pylist():
            yield page_document(row, settings)
