"""Per-stage timings the backends add to their totals (``stage_seconds``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import pyarrow as pa
import pytest

from pipelines import schema
from pipelines.backends import local, ray_data
from pipelines.backends.base import STAGE_SECONDS, StagePlan
from pipelines.stages.base import Stage


@dataclass
class _Sleep(Stage):
    name: ClassVar[str] = "sleepy"
    seconds: float = 0.05

    def process_batch(self, batch: pa.Table) -> pa.Table:
        time.sleep(self.seconds)
        return batch


@dataclass
class _Fast(_Sleep):
    name: ClassVar[str] = "fast"
    seconds: float = 0.0


def test_local_backend_times_each_stage_and_the_write():
    sources = pa.table({"source_uri": ["file:///a.pdf", "file:///b.pdf"], "source_size": [1, 2]})
    sources = schema.conform(sources)

    def write(block: pa.Table) -> dict[str, int]:
        time.sleep(0.02)
        return {"rows": block.num_rows}

    totals = local.LocalBackend().execute(sources, StagePlan([_Sleep(), _Fast()]), write)
    assert totals["rows"] == 2
    seconds = totals[STAGE_SECONDS]
    assert set(seconds) == {"sleepy", "fast", "write"}
    assert seconds["sleepy"] >= 0.1 and seconds["write"] >= 0.04
    assert seconds["fast"] < seconds["sleepy"]


def _op(name, transform, parts=None):
    summary = SimpleNamespace(sum=transform)
    return SimpleNamespace(
        operator_name=name,
        block_transform_time=summary,
        stage_time=[SimpleNamespace(sum=p) for p in parts] if parts else None,
    )


def _node(ops, parent=None):
    return SimpleNamespace(operators_stats=ops, parents=[parent] if parent else [])


def test_ray_stats_are_matched_to_stages_in_order_and_fused_operators_split():
    chain = _node([_op("FromArrow", 0.0)])
    chain = _node([_op("MapBatches(RasterizeStage)", 5.0)], chain)
    chain = _node([_op("MapBatches(_StageActor)", 3.0)], chain)  # embed
    chain = _node([_op("MapBatches(_StageActor)", 0.5)], chain)  # pool
    # binarize fused with the write; Write is the write function plus a stats collector
    chain = _node([_op("MapBatches(BinarizeStage)->Write", 0.06, [0.02, 0.03, 0.01])], chain)
    dataset = SimpleNamespace(get_stats_summary=lambda: chain)
    stages = [SimpleNamespace(name=n) for n in ("rasterize", "embed", "pool", "binarize")]

    seconds = ray_data._stage_seconds(dataset, stages)
    assert seconds == pytest.approx({"rasterize": 5.0, "embed": 3.0, "pool": 0.5, "binarize": 0.02, "write": 0.04})

    # operators that cannot be matched to the stages give no timings rather than wrong ones
    assert ray_data._stage_seconds(dataset, stages[:3]) is None
    broken = SimpleNamespace(get_stats_summary=lambda: (_ for _ in ()).throw(RuntimeError("no stats")))
    assert ray_data._stage_seconds(broken, stages) is None
