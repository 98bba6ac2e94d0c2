"""In-process backend: the same stages, run one after another in a plain loop (no Ray).

Used as the single-process baseline in benchmarks, for small inputs, and for quick debugging.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from pipelines import schema
from pipelines.backends.base import STAGE_SECONDS, BlockWriter, ProgressSink, StagePlan


@dataclass
class LocalBackend:
    """Runs every stage over ``docs_per_batch`` documents at a time in this process."""

    name: ClassVar[str] = "local"
    docs_per_batch: int = 1

    def start(self, plan: StagePlan) -> None:
        """Nothing to connect to; every plan fits in one process."""

    def progress_relay(self, receive: ProgressSink) -> contextlib.AbstractContextManager[ProgressSink]:
        """The writer runs in this process: deltas go straight to ``receive``."""
        return contextlib.nullcontext(receive)

    def execute(self, sources: pa.Table, plan: StagePlan, writer: BlockWriter) -> dict:
        """Returns summed writer counts plus :data:`STAGE_SECONDS`: wall seconds spent in each stage's
        batches and in the writer (key ``"write"``). One-time ``setup()`` (model loading) is not
        included: it is start-up, not per-page work.
        """
        stages = plan.stages
        for stage in stages:
            stage.setup()
        totals: Counter = Counter()
        seconds = dict.fromkeys([stage.name for stage in stages] + ["write"], 0.0)
        for start in range(0, sources.num_rows, self.docs_per_batch):
            batches = [schema.conform(sources.slice(start, self.docs_per_batch))]
            for stage in stages:
                # Each stage's output is materialized before the next stage starts, so the clock
                # around this one comprehension is exactly this stage's time (fan-out included).
                started = time.perf_counter()
                batches = [out for batch in batches for out in stage(batch)]
                seconds[stage.name] += time.perf_counter() - started
            for batch in batches:
                started = time.perf_counter()
                totals.update(writer(batch))
                seconds["write"] += time.perf_counter() - started
        return {**totals, STAGE_SECONDS: {name: round(value, 4) for name, value in seconds.items()}}
