"""Bounded memory per document in the local backend: one window of pages in flight, whatever the length."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa

from benchmarks.memory import long_pdf
from pipelines import schema
from pipelines.backends.base import StagePlan
from pipelines.backends.local import LocalBackend
from pipelines.config import load_index_config
from pipelines.stages.base import Stage
from tests.helpers import index_config

PAGES, WINDOW, MICRO_BATCH = 100, 8, 4


@dataclass
class _Alive(Stage):
    """Passes pages on unchanged, keeping a weak reference to every table it hands on: ``peak`` is the most page
    rows of those tables alive at once, looked at whenever a table is handed on or written."""

    name: ClassVar[str] = "alive"
    refs: list = field(default_factory=list)
    peak: int = 0

    def process_batch(self, batch: pa.Table) -> pa.Table:
        return batch

    def __call__(self, batch: pa.Table):
        for out in super().__call__(batch):
            self.refs.append(weakref.ref(out))
            self.look()
            yield out

    def look(self) -> None:
        alive = sum(table.num_rows for ref in self.refs if (table := ref()) is not None)
        self.peak = max(self.peak, alive)


def test_local_backend_holds_one_window_of_a_long_document(tmp_path, tiny_model_dir):
    pdf = long_pdf(tmp_path / "long.pdf", PAGES)
    overrides = [f"rasterize.window_pages={WINDOW}", "rasterize.max_pixels=20000", "rasterize.extract_text=false"]
    overrides.append(f"model.micro_batch_size={MICRO_BATCH}")
    job = load_index_config(index_config(f"source.location={tmp_path}", "output.location=unused", *overrides))
    rasterize, *later = job.stage_plan().stages
    alive = _Alive()
    written: list[int] = []

    def write(block: pa.Table) -> dict[str, int]:
        alive.look()
        written.append(int(schema.ok_mask(block).sum()))
        return {"rows": block.num_rows}

    sources = pa.table(
        {"source_uri": [pdf.as_uri()], "source_size": [pdf.stat().st_size]}, schema=schema.SOURCE_SCHEMA
    )
    totals = LocalBackend().execute(sources, StagePlan([rasterize, alive, *later]), write)

    assert totals["rows"] == PAGES and sum(written) == PAGES  # every page embedded and written
    # Before: every window of the document was rendered (and alive) before the first page was embedded.
    assert alive.peak <= WINDOW + MICRO_BATCH, f"{alive.peak} page rows alive at once"
    assert len(written) == PAGES // WINDOW + 1  # each window reached the writer as it came
