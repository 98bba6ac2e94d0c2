"""The executor protocol: what a backend is given (stages, their scheduling, a writer) and returns.

Every backend has one signature, ``execute(sources, plan, writer)``: ``sources`` is a table of one
row per input file (:data:`pipelines.schema.SOURCE_SCHEMA`), ``plan`` the stages in order with
their resources, ``writer`` the :data:`BlockWriter` each finished block of page records goes to.
It returns the writer's summed counts plus :data:`STAGE_SECONDS`. Backends are chosen by name
(:func:`pipelines.backends.create`); only :mod:`pipelines.backends.ray_data` imports Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from pipelines.stages.base import Stage


@dataclass
class StageResources:
    """Scheduling of one stage. Ignored by the in-process backend.

    ``batch_size`` is rows per call (for rasterize: documents; afterwards: pages), or None for each block
    as the stage before emitted it (no re-batching, so Ray can fuse the two stages without bundling more
    input rows per task); the model's own micro-batch is a field of the embed stage. ``concurrency`` is
    the actor-pool size for stateful stages and the cap on concurrent tasks otherwise (``None``: Ray decides).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int | None = 8
    concurrency: int | None = None
    memory_bytes: int | None = None
    #: Intra-op threads for the stage's numeric libraries (OMP/MKL). None: Ray's default, one per
    #: requested CPU. 0: every core of the node (a CPU-only model actor on a node of its own).
    threads: int | None = None
    #: Custom Ray resources each task or actor of the stage needs, e.g. ``{cpu_pool: 0.01}``: runs the stage
    #: only on nodes started with that resource (``ray start --resources``, KubeRay ``rayStartParams``).
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            msg = f"ray stage batch_size must be >= 1 or null (whole blocks), got {self.batch_size}"
            raise ValueError(msg)
        if self.threads is not None and self.threads < 0:
            msg = f"ray stage threads must be >= 0 or null, got {self.threads}"
            raise ValueError(msg)
        if self.concurrency is not None and self.concurrency < 1:
            msg = f"ray stage concurrency must be >= 1 or null, got {self.concurrency}"
            raise ValueError(msg)
        if any(amount <= 0 for amount in self.resources.values()):
            msg = f"ray stage resources must be > 0 each, got {dict(self.resources)}"
            raise ValueError(msg)


@dataclass
class RayStages:
    """Per-stage scheduling on Ray (the ``ray.stages`` config node); one field per stage name."""

    rasterize: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=1))
    # Same request as rasterize and whole blocks, so Ray fuses the two into one task per document (no page
    # image crosses the object store); a batch size would make the fused task take that many documents.
    preprocess: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=None))
    embed: StageResources = field(default_factory=lambda: StageResources(num_cpus=1, batch_size=16, concurrency=1))
    pool: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.25, batch_size=16, concurrency=1))
    binarize: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.25, batch_size=16))


@dataclass
class RayConfig:
    """The ``ray`` config node: where Ray runs and how each stage is scheduled on it."""

    #: null: start a local Ray instance; "auto" or ray://host:10001: join a cluster.
    address: str | None = None
    num_cpus: int | None = None  # local instance only; null = all cores
    object_store_memory: int | None = None  # local instance only; bytes
    max_source_blocks: int = 1000
    progress_bars: bool | None = None  # null = only when stderr is a terminal
    stages: RayStages = field(default_factory=RayStages)


@dataclass
class StagePlan:
    """The stages of a run in order, and the scheduling of each (by stage name)."""

    stages: list[Stage]
    resources: dict[str, StageResources] = field(default_factory=dict)

    def resources_of(self, stage: Stage) -> StageResources:
        return self.resources.get(stage.name, StageResources())


#: Receives each finished block of page records; returns counts to add to the run report.
BlockWriter = Callable[[pa.Table], dict[str, int]]

#: Receives the progress delta of one written block (see :mod:`pipelines.progress`).
ProgressSink = Callable[[dict[str, Any]], None]

#: Key of the per-stage timings a backend adds to its returned totals: ``{stage name or "write": seconds}``,
#: time spent processing batches (one-time setup such as model loading excluded).
STAGE_SECONDS = "stage_seconds"


class Backend(Protocol):
    """An executor of a :class:`StagePlan`."""

    name: ClassVar[str]

    def start(self, plan: StagePlan) -> None:
        """Connect to (or start) the compute, and fail fast with :class:`~pipelines.errors.ConfigError`
        when ``plan`` can never be scheduled. Called before the index is touched."""

    def execute(self, sources: pa.Table, plan: StagePlan, writer: BlockWriter) -> dict[str, Any]:
        """Run ``plan`` over ``sources``, sending every finished block to ``writer``; returns summed counts."""

    def progress_relay(self, receive: ProgressSink) -> AbstractContextManager[ProgressSink]:
        """A sink that brings progress deltas (:func:`pipelines.progress.block_delta`) to ``receive`` in
        this process from wherever this backend runs the block writer; valid inside the context, which
        delivers what is still pending when it exits. It may drop deltas but never fails the run."""
