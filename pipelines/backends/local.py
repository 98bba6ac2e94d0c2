"""In-process backend: the same stages, run one after another in a plain loop (no Ray).

Used as the single-process baseline in benchmarks and for quick debugging.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipelines import schema
from pipelines.backends.base import BlockWriter
from pipelines.stages.base import Stage


def execute(sources: pa.Table, stages: list[Stage], write_block: BlockWriter, docs_per_batch: int = 1) -> dict:
    """Run every stage over ``sources`` ``docs_per_batch`` documents at a time; returns summed counts."""
    for stage in stages:
        stage.setup()
    totals: Counter = Counter()
    for start in range(0, sources.num_rows, docs_per_batch):
        batches = [schema.conform(sources.slice(start, docs_per_batch))]
        for stage in stages:
            batches = [out for batch in batches for out in stage(batch)]
        for batch in batches:
            totals.update(write_block(batch))
    return dict(totals)
