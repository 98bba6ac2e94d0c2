"""One index as readers and the driver use it: part-file storage plus its ledger and visible view.

:class:`IndexLocation` is the facade the rest of the package uses (search, feed, replay, the driver);
it adds to :class:`~pipelines.index.storage.PartStore` the reads that apply the ledger's visibility
rules (:mod:`pipelines.index.view`) and compaction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import schema
from pipelines.index import view
from pipelines.index.ledger import LEDGER_DIR, Ledger
from pipelines.index.storage import ERRORS_DIR, PAGES_DIR, TABLES, PartStore, concat


class IndexLocation(PartStore):
    """An index at a directory or fsspec URL: its part files, ledger, and the rows that are visible."""

    @functools.cached_property
    def ledger(self) -> Ledger:
        """The index's ledger; one per location object, so its cached state serves every reader of it."""
        return Ledger(self)

    def clear_tables(self) -> None:
        """Delete the pages and errors tables and the ledger (overwrite mode)."""
        self.remove_dirs(PAGES_DIR, ERRORS_DIR, LEDGER_DIR)

    def iter_visible(self, name: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The ``pages`` or ``errors`` table one part file at a time, visible rows only."""
        return view.iter_visible(self, self.ledger, name, columns)

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Read ``pages`` or ``errors`` as one table of visible rows (empty table with the schema if absent)."""
        return concat(list(self.iter_visible(name, columns)), TABLES[name][0], columns)

    def iter_page_parts(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The pages table one part file at a time (bounded memory for large indexes)."""
        return self.iter_visible(PAGES_DIR, columns)

    def read_pages(self, columns: list[str] | None = None) -> pa.Table:
        return self.read_table(PAGES_DIR, columns)

    def read_errors(self) -> pa.Table:
        return self.read_table(ERRORS_DIR)

    def compact(self, tags: set[str] | None = None, grace_s: float = 0.0) -> dict[str, int]:
        """Drop rows nobody sees from the part files of runs ``tags``; the parts replaced are deleted after
        ``grace_s`` seconds (see :func:`pipelines.index.view.compact`)."""
        return view.compact(self, self.ledger, tags, grace_s)


def embedding_dim(location: IndexLocation) -> int:
    """The vector width of an index: as recorded when it was created (``ledger/index.json``), else (indexes
    written before it was recorded) from its pages (:func:`pipelines.schema.table_dim`)."""
    meta = location.ledger.read_meta()
    if meta and meta.get("embedding_dim"):
        return int(meta["embedding_dim"])
    return schema.table_dim(location.read_pages(["embedding_dim", "n_vectors", "binary"]))


def page_vectors(pages: pa.Table, page_id: str, column: str = "embedding") -> np.ndarray:
    """Decoded vectors of one page of a pages table: float16 ``(n, dim)`` (``embedding``, ``rerank_embedding``)
    or uint8 ``(n, dim / 8)`` (``binary``), ``dim`` the page's vector width."""
    match = pages.filter(pc.equal(pages.column("page_id"), page_id))
    if match.num_rows != 1:
        msg = f"expected exactly one page {page_id!r}, found {match.num_rows}"
        raise KeyError(msg)
    row = match.to_pylist()[0]
    dim = schema.row_dim(row)
    return schema.decode_binary(row[column], dim) if column == "binary" else schema.decode_embedding(row[column], dim)
