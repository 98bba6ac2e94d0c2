"""What a backend is given: the stages, how to schedule each, and where results go."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa


@dataclass
class StageResources:
    """Scheduling of one stage. Ignored by the in-process backend.

    ``batch_size`` is rows per call (for rasterize: documents; afterwards: pages); the model's own
    micro-batch is a field of the embed stage. ``concurrency`` is the actor-pool size for stateful
    stages and the cap on concurrent tasks otherwise (``None``: Ray decides).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 8
    concurrency: int | None = None
    memory_bytes: int | None = None
    #: Intra-op threads for the stage's numeric libraries (OMP/MKL). None: Ray's default, one per
    #: requested CPU. 0: every core of the node (a CPU-only model actor on a node of its own).
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            msg = f"ray stage batch_size must be >= 1, got {self.batch_size}"
            raise ValueError(msg)
        if self.threads is not None and self.threads < 0:
            msg = f"ray stage threads must be >= 0 or null, got {self.threads}"
            raise ValueError(msg)
        if self.concurrency is not None and self.concurrency < 1:
            msg = f"ray stage concurrency must be >= 1 or null, got {self.concurrency}"
            raise ValueError(msg)


#: Receives each finished block of page records; returns counts to add to the run report.
BlockWriter = Callable[[pa.Table], dict[str, int]]

#: Key of the per-stage timings a backend adds to its returned totals: ``{stage name or "write": seconds}``,
#: time spent processing batches (one-time setup such as model loading excluded).
STAGE_SECONDS = "stage_seconds"
