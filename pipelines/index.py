"""The embedded index: a directory (any fsspec location) of Parquet tables plus a run report.

Layout::

    <location>/pages/part-*.parquet    one row per indexed page  (schema.PAGES_TABLE_SCHEMA)
    <location>/errors/part-*.parquet   one row per failed file/page (schema.ERRORS_TABLE_SCHEMA)
    <location>/config.yaml             the fully resolved config of the run that wrote it
    <location>/run_report.json         counts, timings and accounting of that run
    <location>/vespa/<target>/         feed log and report per Vespa target (pipelines.vespa.replay)

Writers produce uniquely named part files, so parallel writers never collide; a run in
``overwrite`` mode clears ``pages/`` and ``errors/`` before it starts.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import io, schema

PAGES_DIR = "pages"
ERRORS_DIR = "errors"
REPORT_FILE = "run_report.json"
CONFIG_FILE = "config.yaml"


class IndexLocation:
    """Paths of one index on one filesystem."""

    def __init__(self, location: str, storage_options: Mapping[str, Any] | None = None):
        self.location = location
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = io.filesystem_for(location, self.storage_options)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def clear_tables(self) -> None:
        """Delete the pages and errors tables (overwrite mode)."""
        for name in (PAGES_DIR, ERRORS_DIR):
            if self.fs.exists(self.path(name)):
                self.fs.rm(self.path(name), recursive=True)

    def write_text(self, name: str, text: str) -> None:
        self.fs.makedirs(posixpath.dirname(self.path(name)), exist_ok=True)
        with self.fs.open(self.path(name), "w") as handle:
            handle.write(text)

    def read_text(self, name: str) -> str:
        with self.fs.open(self.path(name), "r") as handle:
            return handle.read()

    def read_report(self) -> dict:
        return json.loads(self.read_text(REPORT_FILE))

    def write_block(self, block: pa.Table, model: str, config_hash: str, on_pages=None) -> dict[str, int]:
        """Split a block of page records into pages and errors, write each as a new part file.

        Returns counts for the run report: pages written, error rows written, and vectors stored.
        ``on_pages(pages)``, if given, is called with the pages table once it is durably written, and
        the counts it returns are added (inline feeding uses this).
        """
        block = schema.conform(block)
        n = block.num_rows
        block = schema.with_column(block, "model", pa.array([model] * n, pa.string()))
        block = schema.with_column(block, "config_hash", pa.array([config_hash] * n, pa.string()))
        ok = pa.array(schema.ok_mask(block))
        pages = block.filter(ok).select(schema.INDEX_PAGE_COLUMNS)
        errors = block.filter(pc.invert(ok)).select(schema.INDEX_ERROR_COLUMNS)
        for name, table in ((PAGES_DIR, pages), (ERRORS_DIR, errors)):
            if table.num_rows:
                self.write_part(name, table)
        counts = {
            "pages": pages.num_rows,
            "error_rows": errors.num_rows,
            "vectors": int(pc.sum(pages.column("n_vectors")).as_py() or 0),
        }
        if on_pages is not None and pages.num_rows:
            counts.update(on_pages(pages))
        return counts

    def write_part(self, directory: str, table: pa.Table) -> None:
        """Write ``table`` as a new Parquet part file under ``directory`` (relative to the index root).

        Names sort in write order and are unique, so parallel writers never collide.
        """
        self.fs.makedirs(self.path(directory), exist_ok=True)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        with self.fs.open(self.path(directory, name), "wb") as handle:
            pq.write_table(table, handle, compression="zstd")

    def iter_parts(
        self, directory: str, table_schema: pa.Schema, columns: list[str] | None = None
    ) -> Iterator[pa.Table]:
        """The part files under ``directory``, one table each, in name (= write) order."""
        path = self.path(directory)
        files = sorted(self.fs.glob(posixpath.join(path, "*.parquet"))) if self.fs.exists(path) else []
        for file in files:
            with self.fs.open(file, "rb") as handle:
                yield pq.read_table(handle, columns=columns, schema=table_schema)

    def read_parts(self, directory: str, table_schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        """All part files under ``directory`` as one table (empty, with the schema, if there are none)."""
        tables = list(self.iter_parts(directory, table_schema, columns))
        if tables:
            return pa.concat_tables(tables)
        empty = table_schema.empty_table()
        return empty.select(columns) if columns else empty

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Read ``pages`` or ``errors`` as one table (empty table with the schema if absent)."""
        table_schema = schema.PAGES_TABLE_SCHEMA if name == PAGES_DIR else schema.ERRORS_TABLE_SCHEMA
        return self.read_parts(name, table_schema, columns)

    def iter_page_parts(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The pages table one part file at a time (bounded memory for large indexes)."""
        return self.iter_parts(PAGES_DIR, schema.PAGES_TABLE_SCHEMA, columns)

    def read_pages(self, columns: list[str] | None = None) -> pa.Table:
        return self.read_table(PAGES_DIR, columns)

    def read_errors(self) -> pa.Table:
        return self.read_table(ERRORS_DIR)


def page_vectors(pages: pa.Table, page_id: str, column: str = "embedding") -> np.ndarray:
    """Decoded vectors (float16 embedding or uint8 binary) of one page of a pages table."""
    match = pages.filter(pc.equal(pages.column("page_id"), page_id))
    if match.num_rows != 1:
        msg = f"expected exactly one page {page_id!r}, found {match.num_rows}"
        raise KeyError(msg)
    buffer = match.column(column)[0].as_py()
    return schema.decode_embedding(buffer) if column == "embedding" else schema.decode_binary(buffer)


def summarize(location: IndexLocation, expected_uris: list[str]) -> dict[str, Any]:
    """Accounting of a finished run: every expected input must be in pages or errors."""
    pages = location.read_pages(["source_uri", "doc_id", "page_number", "n_vectors", "n_vectors_raw"])
    errors = location.read_errors()
    indexed = set(pages.column("source_uri").to_pylist())
    errored = set(errors.column("source_uri").to_pylist())
    expected = set(expected_uris)
    by_type: dict[str, int] = {}
    for error_type in errors.column("error_type").to_pylist():
        by_type[error_type] = by_type.get(error_type, 0) + 1
    file_errors = [
        {
            "source_uri": r["source_uri"],
            "stage": r["error_stage"],
            "type": r["error_type"],
            "message": r["error_message"],
        }
        for r in errors.to_pylist()
    ]
    return {
        "files_listed": len(expected),
        "files_indexed": len(indexed & expected),
        "files_with_errors": len(errored & expected),
        "files_failed_entirely": len((errored - indexed) & expected),
        "files_unaccounted": sorted(expected - indexed - errored),
        "pages_indexed": pages.num_rows,
        "vectors_stored": int(pc.sum(pages.column("n_vectors")).as_py() or 0),
        "vectors_before_pooling": int(pc.sum(pages.column("n_vectors_raw")).as_py() or 0),
        "error_rows": errors.num_rows,
        "errors_by_type": dict(sorted(by_type.items())),
        "errors": file_errors,
    }
