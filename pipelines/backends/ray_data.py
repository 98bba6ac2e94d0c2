"""Ray Data backend: the only place that knows about ``map_batches``, actor pools and resources.

Sources become a dataset of one row per input file; each stage becomes one ``map_batches`` over
Arrow batches: stateful stages (models) on an actor pool whose actors call ``setup()`` once,
stateless ones as tasks (Ray fuses consecutive task stages). Blocks stream into an
:class:`IndexDatasink` as they finish, so pages are written while later documents still render.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, DataContext, Datasink, TaskPoolStrategy
from ray.data.datasource.datasink import WriteResult
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.backends.base import (
    STAGE_SECONDS,
    BlockWriter,
    ProgressSink,
    RayConfig,
    StagePlan,
    StageResources,
)
from pipelines.errors import ConfigError
from pipelines.stages.base import Stage

logger = logging.getLogger(__name__)

#: Environment variable naming the stage an actor runs (see :func:`_map_stage`).
STAGE_ENV = "PIPELINES_STAGE"
#: Key of the per-operator utilization a Ray run adds to its totals (see :func:`operator_utilization`).
OPERATORS = "ray_operators"


class _StageActor:
    """Actor wrapper: one stage object per actor, set up once."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        yield from self.stage(batch)


class IndexDatasink(Datasink[dict]):
    """Writes each block through ``write_block`` and sums the counts it returns."""

    def __init__(self, write_block: BlockWriter):
        self.write_block = write_block
        self.totals: dict[str, int] = {}

    def write(self, blocks, ctx) -> dict:
        totals: Counter = Counter()
        for block in blocks:
            table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
            if table.num_rows:
                totals.update(self.write_block(table))
        return dict(totals)

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        totals: Counter = Counter()
        for counts in write_result.write_returns:
            totals.update(counts or {})
        self.totals = dict(totals)

    def get_name(self) -> str:
        return "PageIndex"


@dataclass
class _QueueSink:
    """Sends progress deltas from a write task to the driver's queue actor (waits for the put, so a
    finished task's deltas are on the queue before the driver's last drain)."""

    queue: Queue

    def __call__(self, delta: dict) -> None:
        self.queue.put(delta, timeout=30)


@dataclass
class RayDataBackend:
    """Runs a stage plan as a Ray Data pipeline on a local instance or a cluster (``config.address``)."""

    name: ClassVar[str] = "ray"
    config: RayConfig = field(default_factory=RayConfig)
    #: Environment of every Ray worker (importable package, offline hub settings, failpoints).
    env_vars: dict[str, str] = field(default_factory=dict)

    def start(self, plan: StagePlan) -> None:
        """Connect to a cluster (``address``) or start a local one sized by ``num_cpus``; then check
        that ``plan`` fits (:func:`check_resources_fit`)."""
        init_ray(self.config.address, self.config.num_cpus, self.config.object_store_memory, self.env_vars)
        check_resources_fit(plan)

    @contextlib.contextmanager
    def progress_relay(self, receive: ProgressSink) -> Iterator[ProgressSink]:
        """Write tasks put their deltas on a queue actor on the driver's node (no CPU requested); a
        thread here drains it into ``receive`` every second, and once more when the context exits."""
        node = ray.get_runtime_context().get_node_id()
        # Hard affinity: the driver's node lives as long as the run, another node may not (a soft affinity
        # placed this zero-CPU actor on other nodes 3 times in 4 with Ray 2.60).
        placement = NodeAffinitySchedulingStrategy(node, soft=False)
        queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": placement})
        stop = threading.Event()

        def drain() -> None:
            try:
                pending = queue.qsize()
                for delta in queue.get_nowait_batch(pending) if pending else ():
                    receive(delta)
            except Exception as exc:  # progress is informational; the run goes on without it
                logger.debug("progress relay: %s: %s", type(exc).__name__, exc)

        def pump() -> None:
            while not stop.wait(1.0):
                drain()

        thread = threading.Thread(target=pump, name="progress-relay", daemon=True)
        thread.start()
        try:
            yield _QueueSink(queue)
        finally:
            stop.set()
            thread.join()
            drain()
            queue.shutdown(force=True)

    def execute(self, sources: pa.Table, plan: StagePlan, writer: BlockWriter) -> dict:
        """Run ``plan`` over ``sources`` on the connected Ray cluster; returns the sink's summed counts.

        The result also has :data:`~pipelines.backends.base.STAGE_SECONDS` (per-stage seconds, see
        :func:`_stage_seconds`) and :data:`OPERATORS` (per-operator utilization, see
        :func:`operator_utilization`) when Ray Data's stats can be matched to the stages.
        """
        dataset = self._dataset(sources, plan)
        sink = IndexDatasink(writer)
        # The write runs as tasks after the last stage; with the same request Ray fuses it into that
        # stage (and it must fit beside the actor pools, like any task stage).
        last = plan.resources_of(plan.stages[-1]) if plan.stages else StageResources(num_cpus=1.0)
        write_args = {"num_cpus": last.num_cpus, **({"resources": dict(last.resources)} if last.resources else {})}
        dataset.write_datasink(sink, ray_remote_args=write_args)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("ray data execution stats:\n%s", dataset.stats())
        stage_seconds = _stage_seconds(dataset, plan.stages)
        totals = dict(sink.totals)
        operators = operator_utilization(dataset, plan)
        if operators is not None:
            totals[OPERATORS] = operators
        if stage_seconds is not None:
            totals[STAGE_SECONDS] = stage_seconds
        return totals

    def _dataset(self, sources: pa.Table, plan: StagePlan) -> ray.data.Dataset:
        """The lazy dataset: one block per source file (up to a cap), one ``map_batches`` per stage."""
        ctx = DataContext.get_current()
        progress = self.config.progress_bars
        ctx.enable_progress_bars = sys.stderr.isatty() if progress is None else progress
        # Split the time of fused operators (binarize->write) per stage in Ray Data's stats, for
        # ``stage_seconds``; it costs one number per stage on each block's metadata.
        ctx.per_stage_map_timing = True
        # Per-file rows are tiny; one block per file (up to a cap) lets rasterization spread over workers.
        # (Slicing on the driver rather than repartitioning: a shuffle stage would need whole CPUs that the
        # actor pools may already hold.)
        n_blocks = max(1, min(sources.num_rows, self.config.max_source_blocks))
        rows_per_block = -(-sources.num_rows // n_blocks)
        blocks = [sources.slice(start, rows_per_block) for start in range(0, sources.num_rows, rows_per_block)]
        dataset = ray.data.from_arrow(blocks)
        previous: Stage | None = None
        for stage in plan.stages:
            dataset = _map_stage(dataset, stage, plan, _fused_window(previous, stage, plan))
            previous = stage
        return dataset


def _fused_window(previous: Stage | None, stage: Stage, plan: StagePlan) -> int | None:
    """Rows per call for ``stage`` when it takes whole blocks right behind a fan-out stage that emits windows.

    Ray Data re-merges what a task's generator yields into blocks of up to ``target_max_block_size`` (128 MiB)
    before the next stage sees them (fused into the same task or not): a whole-block stage behind rasterization
    would get hundreds of one document's pages in one call and make all their model inputs at once (14 MB a page
    at the ColQwen2.5 budget). Called window by window, it holds one window of its output at a time, and the
    merged input is bounded by the block size (JPEG bytes), not by the document's length.
    """
    window = getattr(previous, "window_pages", None)
    if not isinstance(window, int) or not previous.changes_row_count:
        return None
    if stage.stateful or plan.resources_of(stage).batch_size is not None:
        return None  # an actor pool or a set batch size: Ray Data already cuts the input into batches
    return window


@dataclass
class _InWindows:
    """A stage called on ``rows``-row slices of each block it is given, yielding each slice's output as it comes."""

    stage: Stage
    rows: int

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for start in range(0, batch.num_rows, self.rows):
            yield from self.stage(batch.slice(start, self.rows))


def _map_stage(
    dataset: ray.data.Dataset, stage: Stage, plan: StagePlan, window: int | None = None
) -> ray.data.Dataset:
    """``dataset`` followed by ``stage``: on an actor pool when the stage is stateful, else as tasks (with
    ``window``: called on slices of that many rows of each block, see :func:`_fused_window`).

    Resources go through ``map_batches``' named parameters and the pool size through ``compute``
    (``ActorPoolStrategy``/``TaskPoolStrategy``), the current Ray Data forms.
    """
    res = plan.resources_of(stage)
    env: dict[str, str] = {}
    if res.threads is not None:
        threads = str(res.threads or os.cpu_count() or 1)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if stage.stateful:
        # Naming the stage in its actors' environment also keeps Ray from fusing the upstream CPU stage into
        # this actor pool (fusion needs identical remote args), which would run preprocessing inside the
        # model's actor, one batch at a time.
        env[STAGE_ENV] = stage.name
    common = {
        "batch_size": res.batch_size,
        "batch_format": "pyarrow",
        "udf_modifying_row_count": stage.changes_row_count,
        "num_cpus": res.num_cpus,
        "num_gpus": res.num_gpus or None,
        "memory": res.memory_bytes or None,
        "resources": dict(res.resources) or None,
        "runtime_env": {"env_vars": env} if env else None,
    }
    if stage.stateful:
        return dataset.map_batches(
            _StageActor,
            fn_constructor_args=(stage,),
            compute=ActorPoolStrategy(size=res.concurrency or 1),
            **common,
        )
    fn = _InWindows(stage, window) if window else stage
    return dataset.map_batches(
        fn, compute=TaskPoolStrategy(size=res.concurrency) if res.concurrency else None, **common
    )


def init_ray(address: str | None, num_cpus: int | None, object_store_memory: int | None, env_vars: Mapping) -> None:
    """Connect to a cluster (``address``) or start a local one sized by ``num_cpus`` (no-op when connected)."""
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": dict(env_vars)} if env_vars else None
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
        )


def check_resources_fit(plan: StagePlan) -> None:
    """Fail fast when actor pools would reserve so much that task stages can never be scheduled.

    Actors hold their CPUs/GPUs for the whole run; if what is left cannot fit one task of every
    task stage, Ray Data waits forever instead of failing.
    """
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    actor_cpus = actor_gpus = 0.0
    for stage in plan.stages:
        res = plan.resources_of(stage)
        if stage.stateful:
            actor_cpus += res.num_cpus * (res.concurrency or 1)
            actor_gpus += res.num_gpus * (res.concurrency or 1)
    if actor_gpus > gpus:
        msg = f"actor pools need {actor_gpus} GPUs but the cluster has {gpus}; lower ray.stages.*.num_gpus/concurrency"
        raise ConfigError(msg)
    for stage in plan.stages:
        missing = {k: v for k, v in plan.resources_of(stage).resources.items() if total.get(k, 0.0) < v}
        if missing:
            msg = (
                f"ray.stages.{stage.name}.resources asks for {missing}, which no node of the cluster offers; start "
                f"nodes with them (ray start --resources, KubeRay rayStartParams.resources) or drop the request"
            )
            raise ConfigError(msg)
    for stage in plan.stages:
        res = plan.resources_of(stage)
        if not stage.stateful and actor_cpus + res.num_cpus > cpus + 1e-9:
            msg = (
                f"actor pools reserve {actor_cpus} of {cpus} CPUs, leaving no room for a {res.num_cpus}-CPU "
                f"{stage.name!r} task; lower ray.stages.<stage>.num_cpus or concurrency (or add CPUs)"
            )
            raise ConfigError(msg)


def _stage_seconds(dataset: ray.data.Dataset, stages: list[Stage]) -> dict[str, float] | None:
    """Seconds each stage (and the write, key ``"write"``) spent transforming blocks, from Ray Data's stats.

    Times are summed over all workers of a stage (parallel workers add up, so the sum can exceed the
    wall time) and exclude actor start-up (model loading). Operators are matched to ``stages`` by
    position: each stage is one ``map_batches`` in order, and the datasink is Ray Data's ``Write``.
    Fused operators (``A->B``) are split with the per-stage timing enabled in :func:`execute`. Returns
    None when the stats cannot be matched (another Ray Data version): the timings are informational
    and must never fail a run.
    """
    try:
        summary = dataset.get_stats_summary()
    except Exception as exc:  # a DeveloperAPI; its absence only costs the timings
        logger.debug("no Ray Data stats for stage timings: %s: %s", type(exc).__name__, exc)
        return None
    chain = [op for node in _nodes(summary) for op in node.operators_stats]
    units: list[tuple[str, float]] = []
    for op in chain:
        names = op.operator_name.split("->")
        total = op.block_transform_time.sum if op.block_transform_time else 0.0
        parts = [part.sum for part in op.stage_time] if op.stage_time else [total]
        if len(names) == 1:
            units.append((names[0], float(total)))
        elif len(parts) >= len(names):
            # One timing per transform function; only the last fused operator may have several
            # (Write is the write function plus a stats collector), so the rest belong to it.
            head = len(names) - 1
            units.extend((name, float(part)) for name, part in zip(names[:head], parts[:head], strict=True))
            units.append((names[-1], float(sum(parts[head:]))))
        else:
            logger.debug("cannot split fused operator %s for stage timings", op.operator_name)
            return None
    maps = [seconds for name, seconds in units if name.startswith("MapBatches(")]
    writes = [seconds for name, seconds in units if name.startswith("Write")]
    if len(maps) != len(stages) or not writes:
        logger.debug("Ray Data operators %s do not match stages %s", [n for n, _ in units], [s.name for s in stages])
        return None
    seconds = {stage.name: value for stage, value in zip(stages, maps, strict=True)}
    seconds["write"] = sum(writes)
    return {name: round(value, 4) for name, value in seconds.items()}


def _nodes(summary) -> list:
    """The nodes of a Ray Data stats summary in execution order (parents first); one node per operator."""
    nodes: list = []
    pending = [summary]
    while pending:
        node = pending.pop()
        nodes[:0] = [node]
        pending.extend(node.parents)
    return nodes


def operator_utilization(dataset: ray.data.Dataset, plan: StagePlan) -> list[dict] | None:
    """How each Ray Data operator spent the run, from Ray Data's own per-operator metrics.

    One entry per operator (fused stages share one), in execution order: ``operator``, ``stages`` (the plan's
    stages it ran, ``"write"`` for the sink), ``kind`` (``actors`` or ``tasks``), ``workers`` (actor-pool size),
    ``tasks`` (finished), ``busy_s`` (worker time running tasks, summed over workers), ``cpu_s`` (the CPU time
    of that work: on a shared machine the busy share over the CPU share says how much it waited for a core),
    ``submission_backpressure_s`` (wall time Ray Data held back new tasks for this operator because of
    backpressure), ``output_backpressure_s`` (task time spent holding finished output nobody took), and
    fractions of the execution's wall time ``wall_s``: ``busy`` (actors: of the pool's capacity, workers x
    wall; tasks: busy_s / wall, the average number of tasks running), ``backpressured`` (submission
    backpressure / wall) and, for actor pools, ``idle`` (1 - busy - output backpressure share). None when
    the stats cannot be matched to the plan's stages (another Ray Data version): informational only.
    """
    try:
        nodes = [node for node in _nodes(dataset.get_stats_summary()) if node.operators_stats]
        wall = max(float(getattr(node, "time_total_s", 0.0) or 0.0) for node in nodes)
        stages = iter(plan.stages)
        out = []
        for node in nodes:
            names = [name for op in node.operators_stats for name in op.operator_name.split("->")]
            if all(not name.startswith(("MapBatches(", "Write")) for name in names):
                continue  # the input (FromArrow): no work of ours
            ran = [next(stages) if name.startswith("MapBatches(") else None for name in names]
            ran_names = [stage.name if stage is not None else "write" for stage in ran]
            actor = next((stage for stage in ran if stage is not None and stage.stateful), None)
            metrics = getattr(node, "extra_metrics", None) or {}
            busy = float(metrics.get("task_worker_completion_time_s") or 0.0)
            cpu = sum(op.cpu_time.sum for op in node.operators_stats if getattr(op, "cpu_time", None))
            submission = float(metrics.get("task_submission_backpressure_time") or 0.0)
            output = float(metrics.get("task_output_backpressure_time_s") or 0.0)
            entry = {
                "operator": "->".join(names),
                "stages": ran_names,
                "kind": "actors" if actor is not None else "tasks",
                "workers": (plan.resources_of(actor).concurrency or 1) if actor is not None else None,
                "tasks": int(metrics.get("num_tasks_finished") or 0),
                "busy_s": round(busy, 3),
                "cpu_s": round(float(cpu), 3),
                "submission_backpressure_s": round(submission, 3),
                "output_backpressure_s": round(output, 3),
                "wall_s": round(wall, 3),
            }
            capacity = wall * (entry["workers"] or 1)
            entry["busy"] = round(busy / capacity, 4) if capacity else None
            entry["backpressured"] = round(submission / wall, 4) if wall else None
            if actor is not None and capacity:
                entry["idle"] = round(max(0.0, 1.0 - (busy + output) / capacity), 4)
            out.append(entry)
        if next(stages, None) is not None:
            return None
        return out
    except Exception as exc:  # a DeveloperAPI; its absence only costs the figures
        logger.debug("no Ray Data operator metrics: %s: %s", type(exc).__name__, exc)
        return None
