"""Size the CPU stages of a GPU run from measured per-page CPU costs.

A GPU embeds ``r`` pages per second only if the CPU stages feeding it keep up: a stage that costs ``c`` CPU
seconds per page needs ``r x c`` busy cores per GPU. :func:`cpu_workers` turns measured costs (``python -m
benchmarks gpu`` measures them on the host it runs on, see :mod:`benchmarks.gpu`) into the worker counts of
``conf/ray/gpu.yaml``, with headroom for the variance between pages (a slide renders in a fraction of a
dense table's time) and for the scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: Spare capacity on top of the mean cost: pages vary, and a stage at 100% busy backs the GPU up.
HEADROOM = 1.25


def cpu_workers(
    pages_per_second: float, cpu_s_per_page: Mapping[str, float], gpus: int = 1, headroom: float = HEADROOM
) -> dict[str, int]:
    """One-CPU workers per stage so that ``gpus`` GPUs at ``pages_per_second`` each are never starved.

    ``ceil(pages_per_second x gpus x cost x headroom)`` per stage, at least 1. Raises ``ValueError`` on a
    negative rate or cost.
    """
    if pages_per_second < 0 or gpus < 1 or any(cost < 0 for cost in cpu_s_per_page.values()):
        msg = f"need a rate >= 0, gpus >= 1 and costs >= 0, got {pages_per_second}, {gpus}, {dict(cpu_s_per_page)}"
        raise ValueError(msg)
    return {
        stage: max(1, math.ceil(pages_per_second * gpus * cost * headroom - 1e-9))
        for stage, cost in cpu_s_per_page.items()
    }
