"""Benchmark 6, pooling: CPU cost of our PoolStage against colpali-engine's HierarchicalTokenPooler, same pages.

Also turns the measured CPU ms per page into the CPU cores one GPU's embedding throughput needs for pooling
(:data:`GPU_THROUGHPUTS`; only the first throughput is sourced).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.vectors import ClusteredVectors
from pipelines import schema
from pipelines.stages.compress import row_dims

#: GPU embedding throughputs the core count is derived for. Only the first is sourced.
GPU_THROUGHPUTS = (
    {
        "label": "ColPali, NVIDIA L4: 0.39 s/page (ColPali paper section 5.2, via ../shared/reference/colpali.md s.3)",
        "pages_per_second": 1 / 0.39,
        "vectors": 1030,
        "sourced": True,
    },
    {
        "label": "ASSUMPTION (no sourced figure): ColQwen2.5 at 10 pages/s per GPU",
        "pages_per_second": 10.0,
        "vectors": 700,
        "sourced": False,
    },
    {
        "label": "ASSUMPTION (no sourced figure): ColQwen2.5 at 30 pages/s per GPU",
        "pages_per_second": 30.0,
        "vectors": 700,
        "sourced": False,
    },
)


def bench_pooling(
    size: int = 8, repeats: int = 3, vector_counts: tuple[int, ...] = (700, 1030), pool_factor: int = 3
) -> dict:
    """CPU ms per page of our PoolStage vs colpali-engine's HierarchicalTokenPooler called directly, same pages."""
    import torch
    from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

    from pipelines.stages.compress import PoolStage

    stage = PoolStage(pool_factor=pool_factor)
    stage.setup()  # the colpali-engine import is paid once per worker, not per batch
    pooler = HierarchicalTokenPooler()
    rows = []
    for n in vector_counts:
        pages = ClusteredVectors(n).pages(size, n)
        stored = [np.asarray(p, dtype="<f2") for p in pages]
        table = schema.rows_to_table(
            [
                {"source_uri": f"synthetic://{i}", "n_vectors": n, "n_vectors_raw": n, "embedding": p.tobytes()}
                for i, p in enumerate(stored)
            ]
        )
        tensors = [torch.from_numpy(p.astype(np.float32)) for p in stored]
        cpu = {"stage": [], "direct": []}
        wall = {"stage": [], "direct": []}
        outputs = {}
        for repeat in range(repeats):
            for name in ("stage", "direct") if repeat % 2 == 0 else ("direct", "stage"):
                started_cpu, started = time.process_time(), time.perf_counter()
                if name == "stage":
                    outputs[name] = stage.process_batch(table)
                else:
                    outputs[name] = pooler.pool_embeddings(tensors, pool_factor=pool_factor)
                cpu[name].append(time.process_time() - started_cpu)
                wall[name].append(time.perf_counter() - started)
        cells = outputs["stage"].column("embedding").to_pylist()
        stage_vectors = [schema.decode_embedding(b, d) for b, d in zip(cells, row_dims(outputs["stage"]), strict=True)]
        direct_vectors = [t.numpy().astype("<f2") for t in outputs["direct"]]
        same = all(np.array_equal(a, b) for a, b in zip(stage_vectors, direct_vectors, strict=True))
        stage_ms = 1000 * min(cpu["stage"]) / size
        direct_ms = 1000 * min(cpu["direct"]) / size
        rows.append(
            {
                "vectors_per_page": n,
                "pooled_vectors_per_page": float(np.mean([len(v) for v in stage_vectors])),
                "stage_cpu_ms_per_page": stage_ms,
                "direct_cpu_ms_per_page": direct_ms,
                "stage_wall_ms_per_page": 1000 * min(wall["stage"]) / size,
                "direct_wall_ms_per_page": 1000 * min(wall["direct"]) / size,
                "stage_over_direct_cpu": stage_ms / direct_ms,
                "cpu_per_repeat": cpu,
                "same_output": same,
            }
        )
    by_n = {r["vectors_per_page"]: r for r in rows}
    cores = []
    for gpu in GPU_THROUGHPUTS:
        n = min(by_n, key=lambda v: abs(v - gpu["vectors"]))
        cores.append(
            {
                **gpu,
                "vectors_measured": n,
                "cores_per_gpu": gpu["pages_per_second"] * by_n[n]["stage_cpu_ms_per_page"] / 1000,
            }
        )
    return {
        "params": {
            "pages": size,
            "repeats": repeats,
            "pool_factor": pool_factor,
            "vector_counts": list(vector_counts),
            "torch_threads": torch.get_num_threads(),
            "vectors": "synthetic clustered set (see fidelity)",
        },
        "results": {"rows": rows, "cores_per_gpu": cores},
        "checks": [],
    }
