"""In-process backend: the same stages, run one after another in a plain loop (no Ray).

Used as the single-process baseline in benchmarks, for small inputs, and for quick debugging.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from pipelines import schema
from pipelines.backends.base import STAGE_SECONDS, BlockWriter, ProgressSink, StagePlan
from pipelines.stages.base import Stage


@dataclass
class LocalBackend:
    """Runs every stage over ``docs_per_batch`` documents at a time in this process.

    Memory is bounded per document: the stages are chained as generators, so each block a stage yields (for
    rasterization one window of ``rasterize.window_pages`` pages) goes through every later stage and the
    writer before the next block is produced. At most one window of pages is alive at once (in the forms the
    stages give it, plus the model's micro-batch inside the embed stage), whatever the document's length.
    """

    name: ClassVar[str] = "local"
    docs_per_batch: int = 1

    def start(self, plan: StagePlan) -> None:
        """Nothing to connect to; every plan fits in one process."""

    def progress_relay(self, receive: ProgressSink) -> contextlib.AbstractContextManager[ProgressSink]:
        """The writer runs in this process: deltas go straight to ``receive``."""
        return contextlib.nullcontext(receive)

    def execute(self, sources: pa.Table, plan: StagePlan, writer: BlockWriter) -> dict:
        """Returns summed writer counts plus :data:`STAGE_SECONDS`: wall seconds spent in each stage's own
        work and in the writer (key ``"write"``); a stage's clock stops while later stages consume what it
        yielded. One-time ``setup()`` (model loading) is not included: it is start-up, not per-page work.
        """
        stages = plan.stages
        for stage in stages:
            stage.setup()
        totals: Counter = Counter()
        seconds = dict.fromkeys([stage.name for stage in stages] + ["write"], 0.0)
        blocks: Iterator[pa.Table] = (
            schema.conform(sources.slice(start, self.docs_per_batch))
            for start in range(0, sources.num_rows, self.docs_per_batch)
        )
        for stage in stages:
            blocks = _timed(stage, blocks, seconds)
        for block in blocks:
            started = time.perf_counter()
            totals.update(writer(block))
            seconds["write"] += time.perf_counter() - started
            # A loop variable stays bound while ``next()`` runs: dropped here (and in _timed), no stage still
            # holds window k while window k + 1 is produced.
            del block
        return {**totals, STAGE_SECONDS: {name: round(value, 4) for name, value in seconds.items()}}


def _timed(stage: Stage, blocks: Iterator[pa.Table], seconds: dict[str, float]) -> Iterator[pa.Table]:
    """``stage`` over each of ``blocks``, lazily, adding the time spent inside the stage to
    ``seconds[stage.name]``: only the stage's own ``next()`` is clocked, not the upstream stages producing its
    input nor the downstream ones consuming its output."""
    for batch in blocks:
        outputs = stage(batch)
        del batch  # the stage's generator holds its input until it is exhausted; nothing else may
        while True:
            started = time.perf_counter()
            out = next(outputs, None)
            seconds[stage.name] += time.perf_counter() - started
            if out is None:
                break
            yield out  # ``out`` is rebound by the next ``next()`` call, before any upstream work
