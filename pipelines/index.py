"""The embedded index: a directory (any fsspec location) of Parquet tables plus a run report.

Layout::

    <location>/pages/part-*.parquet    one row per indexed page  (schema.PAGES_TABLE_SCHEMA)
    <location>/errors/part-*.parquet   one row per failed file/page (schema.ERRORS_TABLE_SCHEMA)
    <location>/ledger/                 what was done with each source, per run (pipelines.ledger)
    <location>/config.yaml             the fully resolved config of the last run
    <location>/run_report.json         counts, timings and accounting of the last run
    <location>/vespa/<target>/         feed log and report per Vespa target (pipelines.vespa.replay)

Writers produce uniquely named part files tagged with their run, so parallel writers never collide.
Readers see only rows the ledger made visible (:meth:`IndexLocation.iter_visible`); a run in
``overwrite`` mode clears the tables and the ledger before it starts.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import failpoints, io, ledger, schema

PAGES_DIR = "pages"
ERRORS_DIR = "errors"
REPORT_FILE = "run_report.json"
CONFIG_FILE = "config.yaml"

#: Schema of each table, and the columns deciding which of its rows are visible (pipelines.ledger).
TABLES = {
    PAGES_DIR: (schema.PAGES_TABLE_SCHEMA, ["doc_id", "page_id", "source_uri"]),
    ERRORS_DIR: (schema.ERRORS_TABLE_SCHEMA, ["doc_id", "source_uri", "page_number"]),
}


class IndexLocation:
    """Paths of one index on one filesystem."""

    def __init__(self, location: str, storage_options: Mapping[str, Any] | None = None):
        self.location = location
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = io.filesystem_for(location, self.storage_options)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def clear_tables(self) -> None:
        """Delete the pages and errors tables and the ledger (overwrite mode)."""
        for name in (PAGES_DIR, ERRORS_DIR, ledger.LEDGER_DIR):
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

    def write_block(
        self, block: pa.Table, model: str, config_hash: str, on_pages=None, run_id: str | None = None
    ) -> dict[str, int]:
        """Split a block of page records into pages and errors, write each as a new part file.

        Returns counts for the run report: pages written, error rows written, and vectors stored.
        ``run_id`` tags the part files (see :mod:`pipelines.ledger`: rows become visible when the run
        commits). ``on_pages(pages)``, if given, is called with the pages table once it is durably
        written, and the counts it returns are added (inline feeding uses this).
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
                self.write_part(name, table, tag=run_id)
        counts = {
            "pages": pages.num_rows,
            "error_rows": errors.num_rows,
            "vectors": int(pc.sum(pages.column("n_vectors")).as_py() or 0),
        }
        if on_pages is not None and pages.num_rows:
            counts.update(on_pages(pages))
        return counts

    def write_part(self, directory: str, table: pa.Table, tag: str | None = None) -> str:
        """Write ``table`` as a new Parquet part file under ``directory`` (relative to the index root).

        Names sort in write order and are unique, so parallel writers never collide; ``tag`` (a run
        id, no dashes) is embedded in the name. Returns the file's path.
        """
        self.fs.makedirs(self.path(directory), exist_ok=True)
        middle = f"-{tag}" if tag else ""
        path = self.path(directory, f"part-{time.time_ns():020d}{middle}-{uuid.uuid4().hex[:12]}.parquet")
        with self.fs.open(path, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
        return path

    def part_files(self, directory: str) -> list[str]:
        path = self.path(directory)
        return sorted(self.fs.glob(posixpath.join(path, "*.parquet"))) if self.fs.exists(path) else []

    def iter_part_files(
        self, directory: str, table_schema: pa.Schema, columns: list[str] | None = None, tags: set[str] | None = None
    ) -> Iterator[tuple[str, pa.Table]]:
        """``(path, table)`` of every part file under ``directory`` (only those tagged with one of ``tags``,
        if given), in name (= write) order."""
        for file in self.part_files(directory):
            if tags is not None and ledger.part_tag(file) not in tags:
                continue
            with self.fs.open(file, "rb") as handle:
                yield file, pq.read_table(handle, columns=columns, schema=table_schema)

    def iter_parts(
        self, directory: str, table_schema: pa.Schema, columns: list[str] | None = None
    ) -> Iterator[pa.Table]:
        """The part files under ``directory``, one table each, in name (= write) order (every row)."""
        for _, table in self.iter_part_files(directory, table_schema, columns):
            yield table

    def read_parts(self, directory: str, table_schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        """All part files under ``directory`` as one table (empty, with the schema, if there are none)."""
        return _concat(list(self.iter_parts(directory, table_schema, columns)), table_schema, columns)

    def iter_visible(self, name: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The ``pages`` or ``errors`` table one part file at a time, holding only the rows that belong
        to the index (committed documents, each page once; see :mod:`pipelines.ledger`)."""
        table_schema, keys = TABLES[name]
        visibility = ledger.Ledger(self).visibility()
        if visibility is None:
            yield from self.iter_parts(name, table_schema, columns)
            return
        read_columns = None if columns is None else list(dict.fromkeys([*columns, *keys]))
        seen: set = set()
        for path, table in self.iter_part_files(name, table_schema, read_columns):
            table = table.filter(ledger.visible_mask(table, ledger.part_tag(path), visibility, seen, name))
            if name == PAGES_DIR:
                table = ledger.with_canonical_uris(table, visibility)
            yield table.select(columns) if columns is not None else table

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Read ``pages`` or ``errors`` as one table of visible rows (empty table with the schema if absent)."""
        return _concat(list(self.iter_visible(name, columns)), TABLES[name][0], columns)

    def iter_page_parts(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The pages table one part file at a time (bounded memory for large indexes)."""
        return self.iter_visible(PAGES_DIR, columns)

    def read_pages(self, columns: list[str] | None = None) -> pa.Table:
        return self.read_table(PAGES_DIR, columns)

    def read_errors(self) -> pa.Table:
        return self.read_table(ERRORS_DIR)

    def compact(self, tags: set[str] | None = None) -> dict[str, int]:
        """Rewrite part files so they hold only visible rows (drop half-written documents of killed runs,
        superseded and removed documents, repeated writes). Crash-safe: the rewritten part keeps its run
        tag and is written before the old one is deleted, and readers drop the repeated rows meanwhile.

        ``tags`` limits the work to part files of those runs (a document's visible rows and their
        repeats all carry one tag, so nothing outside them can be a repeat); None looks at every part.
        """
        visibility = ledger.Ledger(self).visibility()
        counts = {"parts_rewritten": 0, "parts_deleted": 0, "rows_dropped": 0}
        if visibility is None:
            return counts
        for name, (table_schema, keys) in TABLES.items():
            seen: set = set()
            for path, table in self.iter_part_files(name, table_schema, keys, tags=tags):
                tag = ledger.part_tag(path)
                mask = ledger.visible_mask(table, tag, visibility, seen, name)
                kept = pc.sum(mask).as_py() or 0
                if kept == table.num_rows:
                    continue
                counts["rows_dropped"] += table.num_rows - kept
                if kept:
                    with self.fs.open(path, "rb") as handle:
                        full = pq.read_table(handle, schema=table_schema)
                    self.write_part(name, full.filter(mask), tag=tag)
                    failpoints.hit("compact_between_write_and_delete")
                    counts["parts_rewritten"] += 1
                else:
                    counts["parts_deleted"] += 1
                self.fs.rm(path)
                failpoints.hit("compact_part_done")
        return counts


def _concat(tables: list[pa.Table], table_schema: pa.Schema, columns: list[str] | None) -> pa.Table:
    if tables:
        return pa.concat_tables(tables)
    empty = table_schema.empty_table()
    return empty.select(columns) if columns else empty


def page_vectors(pages: pa.Table, page_id: str, column: str = "embedding") -> np.ndarray:
    """Decoded vectors (float16 embedding or uint8 binary) of one page of a pages table."""
    match = pages.filter(pc.equal(pages.column("page_id"), page_id))
    if match.num_rows != 1:
        msg = f"expected exactly one page {page_id!r}, found {match.num_rows}"
        raise KeyError(msg)
    buffer = match.column(column)[0].as_py()
    return schema.decode_embedding(buffer) if column == "embedding" else schema.decode_binary(buffer)


def summarize(location: IndexLocation, files: list[io.SourceFile], plan: ledger.Plan) -> dict[str, Any]:
    """Accounting of a committed run: every listed file is unchanged, indexed, a duplicate, failed (by
    reason) or unaccounted (which should never happen); plus totals of the whole index."""
    state = ledger.Ledger(location).state()
    processed = {f.uri for f in plan.process}
    duplicates = {f.uri for f, _ in plan.aliases}
    unchanged = set(plan.unchanged)
    this_run: Counter = Counter()
    failed_by_reason: Counter = Counter()
    file_errors = []
    unaccounted = []
    for file in files:
        row = state.get(file.uri)
        if (
            row is None
            or row["status"] not in ledger.LIVE
            or (row["run_id"] != plan.run_id and file.uri not in unchanged)
        ):
            unaccounted.append(file.uri)
            continue
        if file.uri in unchanged:
            this_run["unchanged"] += 1
        elif file.uri in duplicates:
            this_run["duplicate"] += 1
        elif file.uri in processed:
            this_run[row["status"]] += 1
        if row["status"] == ledger.FAILED:
            failed_by_reason[row["error_type"]] += 1
        if row["status"] == ledger.FAILED or row["page_errors"]:
            file_errors.append(
                {
                    "source_uri": file.uri,
                    "status": row["status"],
                    "type": row["error_type"],
                    "page_errors": row["page_errors"],
                    "message": row["error_message"] or "",
                }
            )
    statuses = Counter(state[f.uri]["status"] for f in files if f.uri in state)
    pages = location.read_pages(["doc_id", "n_vectors", "n_vectors_raw"])
    errors = location.read_table(ERRORS_DIR, ["error_type"])
    return {
        "files_listed": len(files),
        "files_this_run": {
            "unchanged": this_run["unchanged"],
            "indexed": this_run[ledger.INDEXED],
            "duplicate": this_run["duplicate"],
            "failed": this_run[ledger.FAILED],
            "unaccounted": len(unaccounted),
        },
        "files_indexed": statuses[ledger.INDEXED],
        "files_failed_entirely": statuses[ledger.FAILED],
        "files_with_errors": len(file_errors),
        "files_failed_by_reason": dict(sorted(failed_by_reason.items())),
        "files_unaccounted": sorted(unaccounted),
        "files_removed": len(plan.removes),
        "files_missing_from_source": len(plan.missing),
        "documents_in_index": len(set(pages.column("doc_id").to_pylist())),
        "pages_indexed": pages.num_rows,
        "vectors_stored": int(pc.sum(pages.column("n_vectors")).as_py() or 0),
        "vectors_before_pooling": int(pc.sum(pages.column("n_vectors_raw")).as_py() or 0),
        "error_rows": errors.num_rows,
        "errors_by_type": dict(sorted(Counter(errors.column("error_type").to_pylist()).items())),
        "errors": file_errors[:1000],
    }
