"""Writing finished page records into an index as part files tagged with the run."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import schema
from pipelines.index.storage import ERRORS_DIR, PAGES_DIR, PartStore
from pipelines.testing import failpoints


@dataclass
class PartWriter:
    """The backends' block writer: splits each block of page records into page and error rows and
    writes each as a new part file tagged with ``run_id`` (invisible until the run commits, see
    :mod:`pipelines.index.ledger`). Picklable: Ray ships it to the write tasks.
    """

    store: PartStore
    model: str
    config_hash: str
    run_id: str | None = None  # None: untagged parts (an index written outside the run protocol)

    def write(self, block: pa.Table) -> tuple[dict[str, int], pa.Table]:
        """Write ``block``; returns the counts for the run report (pages, error rows, vectors stored)
        and the pages table as written (what an inline feed sends on)."""
        block = schema.conform(block)
        n = block.num_rows
        block = schema.with_column(block, "model", pa.array([self.model] * n, pa.string()))
        block = schema.with_column(block, "config_hash", pa.array([self.config_hash] * n, pa.string()))
        ok = pa.array(schema.ok_mask(block))
        pages = block.filter(ok).select(schema.INDEX_PAGE_COLUMNS)
        errors = block.filter(pc.invert(ok)).select(schema.INDEX_ERROR_COLUMNS)
        for name, table in ((PAGES_DIR, pages), (ERRORS_DIR, errors)):
            if table.num_rows:
                self.store.write_part(name, table, tag=self.run_id)
        counts = {
            "pages": pages.num_rows,
            "error_rows": errors.num_rows,
            "vectors": int(pc.sum(pages.column("n_vectors")).as_py() or 0),
        }
        return counts, pages

    def __call__(self, block: pa.Table) -> dict[str, int]:
        counts, _ = self.write(block)
        failpoints.hit("after_write_block")
        return counts
