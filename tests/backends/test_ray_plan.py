"""How the Ray backend lays stages out: current map_batches forms, fusion, utilization figures, GPU sizing."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import pyarrow as pa
import pytest

from pipelines import schema
from pipelines.backends import ray_data
from pipelines.backends.base import StagePlan, StageResources
from pipelines.backends.sizing import cpu_workers
from pipelines.stages.base import Stage


@dataclass
class _Task(Stage):
    name: ClassVar[str] = "first"

    def process_batch(self, batch: pa.Table) -> pa.Table:
        return batch


@dataclass
class _Second(_Task):
    name: ClassVar[str] = "second"


@dataclass
class _Model(_Task):
    name: ClassVar[str] = "model"
    stateful: ClassVar[bool] = True


def _physical_ops(dataset) -> list[str]:
    """Operator names of the plan Ray Data would execute (after fusion), in order."""
    from ray.data._internal.logical.optimizers import get_execution_plan  # internal: what fusion decides

    op, names = get_execution_plan(dataset._logical_plan)[0].dag, []
    while op is not None:
        names.insert(0, op.name)
        op = op.input_dependencies[0] if op.input_dependencies else None
    return names


def test_stages_map_without_deprecated_arguments_and_cpu_work_stays_out_of_the_actor(ray_cluster):
    import ray
    from ray.data import ActorPoolStrategy

    # Same CPU request everywhere: only the stage tag keeps Ray from fusing the CPU stages into the actor.
    same = StageResources(num_cpus=0.5, batch_size=None)
    plan = StagePlan(
        [_Task(), _Second(), _Model()],
        {"first": same, "second": same, "model": StageResources(num_cpus=0.5, batch_size=4, concurrency=2)},
    )
    dataset = ray.data.from_arrow(pa.table({"source_uri": ["a", "b"]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # RayDeprecationWarning (ray_remote_args, concurrency=) would raise
        for stage in plan.stages:
            dataset = ray_data._map_stage(dataset, stage, plan)
    actor = dataset._logical_plan.dag
    assert isinstance(actor.compute, ActorPoolStrategy) and actor.compute.max_size == 2
    assert actor.ray_remote_args["runtime_env"]["env_vars"][ray_data.STAGE_ENV] == "model"
    ops = _physical_ops(dataset)
    assert ops[-2:] == ["MapBatches(_Task)->MapBatches(_Second)", "MapBatches(_StageActor)"]


def _node(name, metrics, parent=None, total=10.0):
    op = SimpleNamespace(operator_name=name, block_transform_time=None, stage_time=None)
    return SimpleNamespace(operators_stats=[op], parents=[parent] if parent else [], extra_metrics=metrics,
                           time_total_s=total)  # fmt: skip


def test_operator_utilization_splits_busy_idle_and_backpressure_per_operator():
    chain = _node("FromArrow", {})
    chain = _node("MapBatches(_Task)->MapBatches(_Second)", {
        "task_worker_completion_time_s": 15.0, "task_submission_backpressure_time": 2.0, "num_tasks_finished": 6,
    }, chain)  # fmt: skip
    chain = _node("MapBatches(_StageActor)", {
        "task_worker_completion_time_s": 12.0, "task_output_backpressure_time_s": 2.0, "num_tasks_finished": 3,
    }, chain)  # fmt: skip
    chain = _node("Write", {"task_worker_completion_time_s": 0.5}, chain)
    plan = StagePlan([_Task(), _Second(), _Model()], {"model": StageResources(concurrency=2)})
    dataset = SimpleNamespace(get_stats_summary=lambda: chain)

    tasks, actors, write = ray_data.operator_utilization(dataset, plan)
    assert (tasks["stages"], tasks["kind"], tasks["tasks"]) == (["first", "second"], "tasks", 6)
    assert tasks["busy"] == pytest.approx(1.5)  # 15 s of work in 10 s: 1.5 tasks running on average
    assert tasks["backpressured"] == pytest.approx(0.2)
    assert (actors["stages"], actors["kind"], actors["workers"]) == (["model"], "actors", 2)
    assert actors["busy"] == pytest.approx(0.6) and actors["idle"] == pytest.approx(0.3)  # 2 actors x 10 s
    assert write["stages"] == ["write"]
    # operators that do not match the plan's stages give no figures rather than wrong ones
    assert ray_data.operator_utilization(dataset, StagePlan([_Task(), _Second()])) is None


def test_cpu_workers_per_gpu_keep_up_with_its_pages_per_second():
    costs = {"rasterize": 0.09, "preprocess": 0.03, "pool": 0.1}
    assert cpu_workers(40.0, costs) == {"rasterize": 5, "preprocess": 2, "pool": 5}  # ceil(40 x c x 1.25)
    assert cpu_workers(40.0, costs, gpus=2)["rasterize"] == 9
    assert cpu_workers(0.0, costs) == {"rasterize": 1, "preprocess": 1, "pool": 1}
    with pytest.raises(ValueError, match="costs >= 0"):
        cpu_workers(1.0, {"pool": -1.0})


@dataclass
class _Windows(Stage):
    """One document -> ``pages`` page rows, yielded ``window_pages`` at a time (like rasterization)."""

    name: ClassVar[str] = "windows"
    changes_row_count: ClassVar[bool] = True
    window_pages: int = 4
    pages: int = 40

    def process_stream(self, batch: pa.Table):
        for uri in batch.column("source_uri").to_pylist():
            for start in range(1, self.pages + 1, self.window_pages):
                numbers = range(start, min(start + self.window_pages, self.pages + 1))
                yield schema.rows_to_table([{"source_uri": uri, "page_number": n} for n in numbers])


@dataclass
class _CallSize(_Task):
    """Records in each row how many rows the call that saw it was given (``n_tokens``)."""

    name: ClassVar[str] = "call_size"

    def process_batch(self, batch: pa.Table) -> pa.Table:
        index = batch.schema.get_field_index("n_tokens")
        return batch.set_column(index, "n_tokens", pa.array([batch.num_rows] * batch.num_rows, pa.int32()))


def test_a_whole_block_stage_behind_rasterization_gets_one_window_at_a_time(ray_cluster):
    # Ray Data merges what the fan-out stage yields into blocks of up to 128 MiB before the fused stage sees them:
    # the stage after rasterization (preprocess: model inputs, 14 MB a page) got a whole document in one call.
    same = StageResources(num_cpus=0.5, batch_size=None)
    plan = StagePlan(
        [_Windows(), _CallSize()], {"windows": StageResources(num_cpus=0.5, batch_size=1), "call_size": same}
    )
    sources = pa.table({"source_uri": ["file:///long.pdf"], "source_size": [1]}, schema=schema.SOURCE_SCHEMA)
    import sys

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    try:
        table = pa.concat_tables(ray.get(ray_data.RayDataBackend()._dataset(sources, plan).to_arrow_refs()))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert sorted(table.column("page_number").to_pylist()) == list(range(1, 41))
    assert max(table.column("n_tokens").to_pylist()) == 4
