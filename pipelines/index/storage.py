"""Part-file storage of one index: paths, small text files and append-only Parquet part files.

This is the bottom layer of :mod:`pipelines.index`; it knows nothing about runs, the ledger or which
rows are visible. Layout under the index root::

    pages/part-*.parquet     one row per page           (schema.PAGES_TABLE_SCHEMA)
    errors/part-*.parquet    one row per failed file/page (schema.ERRORS_TABLE_SCHEMA)
    config.yaml              the resolved config of the last run
    run_report.json          counts, timings and accounting of the last run

Part files are named ``part-<ns>-<tag>-<rand>.parquet``: names sort in write order, never collide
between parallel writers, and carry the run that wrote them (the tag).

Every write and delete of a :class:`PartStore` runs inside its :attr:`PartStore.fence` when it has one:
the driver sets the run's lease (:meth:`pipelines.index.lease.Lease.fenced`), so a run that lost the
index never writes to it again. The fence stays behind when a store is pickled: Ray write tasks add
part files that stay invisible until the (fenced) commit.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import io, schema

PAGES_DIR = "pages"
ERRORS_DIR = "errors"
REPORT_FILE = "run_report.json"
CONFIG_FILE = "config.yaml"

#: Schema of each table, and the columns that decide which of its rows are visible (pipelines.index.view).
TABLES = {
    PAGES_DIR: (schema.PAGES_TABLE_SCHEMA, ["doc_id", "page_id", "source_uri"]),
    ERRORS_DIR: (schema.ERRORS_TABLE_SCHEMA, ["doc_id", "source_uri", "page_number"]),
}


def part_tag(path: str) -> str | None:
    """The run tag in a part file name (``part-<ns>-<tag>-<rand>.parquet``), None for untagged parts."""
    pieces = posixpath.basename(path).split("-")
    return pieces[2] if len(pieces) == 4 else None


class Fence(Protocol):
    """What a writer must hold for each irreversible step (see the module docstring)."""

    def fenced(self) -> contextlib.AbstractContextManager[None]:
        """Run the block only while the writer may still write; raise (and do nothing) otherwise."""


class PartStore:
    """Paths, text files and Parquet part files of one index on one filesystem."""

    def __init__(self, location: str, storage_options: Mapping[str, Any] | None = None):
        self.location = location
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = io.filesystem_for(location, self.storage_options)
        #: Held around every write and delete (the driver sets its lease); None: unfenced (readers, tools).
        self.fence: Fence | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "fence": None}

    def fenced(self) -> contextlib.AbstractContextManager[None]:
        """The block under :attr:`fence` (nothing when there is none)."""
        return self.fence.fenced() if self.fence is not None else contextlib.nullcontext()

    def check_fence(self) -> None:
        """Raise unless the writer may still write (for irreversible steps outside the index: Vespa deletes)."""
        with self.fenced():
            pass

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def remove_dirs(self, *names: str) -> None:
        """Delete the named directories (relative to the root) and everything under them."""
        for name in names:
            if self.exists(name):
                with self.fenced():
                    self.fs.rm(self.path(name), recursive=True)

    def delete(self, paths: Iterable[str]) -> None:
        """Delete the files ``paths`` (full paths, as :meth:`part_files` lists them); missing ones are skipped
        (a run killed between two deletes left the rest)."""
        paths = list(paths)
        if not paths:
            return
        with self.fenced():
            try:
                self.fs.rm(paths)
            except FileNotFoundError:
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm(path)

    # Listings and existence checks ask the store every time (io.forget_listings): other processes (Ray write
    # tasks, other runs) write here, and an object-store filesystem's cached listing would never show it.

    def exists(self, name: str) -> bool:
        """Whether ``name`` (relative to the root) exists now."""
        path = self.path(name)
        io.forget_listings(self.fs, path)
        return self.fs.exists(path)

    def find(self, directory: str) -> list[str]:
        """The paths of every file under ``directory`` (relative to the root, recursive) now, sorted; [] when
        it does not exist."""
        path = self.path(directory).rstrip("/")
        io.forget_listings(self.fs, path)
        try:
            return sorted(io.find_all(self.fs, path))
        except FileNotFoundError:
            return []

    def write_text(self, name: str, text: str) -> None:
        """Write a small text file whole (see :meth:`write_bytes`)."""
        self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write the file ``name`` (relative to the root) whole (see :meth:`_write_whole`)."""
        self.fs.makedirs(posixpath.dirname(self.path(name)), exist_ok=True)
        self._write_whole(self.path(name), data)

    def _write_whole(self, path: str, data: bytes) -> None:
        """Write ``data`` so that readers see the whole file or no file, even if this process is killed.

        On object stores an upload becomes visible only once complete. On local and network
        filesystems a killed writer would leave a truncated file, so the bytes go to a hidden
        temporary name in the same directory first (``part_files`` never lists it) and are renamed,
        which is atomic there. The fence covers the step that makes the file visible.
        """
        if not io.is_local(self.fs):
            with self.fenced(), self.fs.open(path, "wb") as handle:
                handle.write(data)
            return
        directory, name = posixpath.split(path)
        temporary = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        with self.fs.open(temporary, "wb") as handle:
            handle.write(data)
        try:
            with self.fenced():
                self.fs.mv(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(temporary)  # refused by the fence: nothing of it stays
            raise

    def read_text(self, name: str) -> str:
        io.forget_listings(self.fs, self.path(name))  # another process may have written it since a listing
        with self.fs.open(self.path(name), "r") as handle:
            return handle.read()

    def read_report(self) -> dict:
        return json.loads(self.read_text(REPORT_FILE))

    def write_part(self, directory: str, table: pa.Table, tag: str | None = None, after: str | None = None) -> str:
        """Write ``table`` as a new Parquet part file under ``directory`` (relative to the index root).

        Names sort in write order and are unique, so parallel writers never collide; ``tag`` (a run
        id, no dashes) is embedded in the name. With ``after`` (a part file's path) the name sorts right
        after that file's instead of now: a merge of the parts up to ``after`` then sorts before parts
        other writers appended meanwhile, whose rows stay the later ones. Returns the file's path.
        """
        self.fs.makedirs(self.path(directory), exist_ok=True)
        middle = f"-{tag}" if tag else ""
        ns = int(posixpath.basename(after).split("-")[1]) + 1 if after else time.time_ns()
        path = self.path(directory, f"part-{ns:020d}{middle}-{uuid.uuid4().hex[:12]}.parquet")
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        self._write_whole(path, buffer.getvalue().to_pybytes())
        return path

    def read_part(self, path: str, table_schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(path, "rb") as handle:
            return io.read_parquet(handle, columns, table_schema)

    def part_files(self, directory: str) -> list[str]:
        """The part files directly under ``directory`` now, in name (= write) order (temporaries excluded)."""
        parent = self.path(directory).rstrip("/")
        return [
            p
            for p in self.find(directory)
            if posixpath.dirname(p) == parent and p.endswith(".parquet") and not posixpath.basename(p).startswith(".")
        ]

    def iter_part_files(
        self,
        directory: str,
        table_schema: pa.Schema,
        columns: list[str] | None = None,
        tags: set[str] | None = None,
        skip: Iterable[str] = (),
    ) -> Iterator[tuple[str, pa.Table]]:
        """``(path, table)`` of every part file under ``directory`` (only those tagged with one of ``tags``,
        if given; none of ``skip``), in name (= write) order."""
        skip = set(skip)
        for file in self.part_files(directory):
            if (tags is not None and part_tag(file) not in tags) or file in skip:
                continue
            yield file, self.read_part(file, table_schema, columns)

    def iter_parts(
        self, directory: str, table_schema: pa.Schema, columns: list[str] | None = None
    ) -> Iterator[pa.Table]:
        """The part files under ``directory``, one table each, in name (= write) order (every row)."""
        for _, table in self.iter_part_files(directory, table_schema, columns):
            yield table

    def read_parts(self, directory: str, table_schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        """All part files under ``directory`` as one table (empty, with the schema, if there are none)."""
        return concat(list(self.iter_parts(directory, table_schema, columns)), table_schema, columns)


def latest_rows(table: pa.Table, key: str) -> pa.Table:
    """The last row of each value of column ``key`` in ``table`` (rows in write order), still in write order."""
    if table.num_rows < 2:
        return table
    numbered = table.select([key]).append_column("row", pa.array(np.arange(table.num_rows)))
    last = numbered.group_by(key, use_threads=False).aggregate([("row", "max")])
    return table.take(np.sort(last.column("row_max").to_numpy()))


def concat(tables: list[pa.Table], table_schema: pa.Schema, columns: list[str] | None) -> pa.Table:
    """``tables`` as one table; an empty table of ``table_schema`` (``columns`` of it) when there are none."""
    if tables:
        return pa.concat_tables(tables)
    empty = table_schema.empty_table()
    return empty.select(columns) if columns else empty
