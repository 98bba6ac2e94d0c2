"""Benchmark: embedding throughput on the model's device (GPU), and the CPU each GPU needs.

    python -m benchmarks gpu [--size PAGES]                                     # ColQwen2.5 3B, random weights
    python -m benchmarks.gpu --model colqwen2.5-v0.2 --pages 256 [--batch-tokens 16384] [--peak-tflops 989]
    python -m benchmarks.gpu --model tiny --pages 8 --device cpu --peak-tflops 1      # the test's size

:func:`bench_gpu` runs the pipeline's own embed path (:class:`~pipelines.models.encoder.MultiVectorEncoder`:
micro-batches by token budget, pinned host memory, asynchronous copies back) over ``pages`` pages rendered from
the bulk corpus at the model's pixel budget and preprocessed on the CPU beforehand, as the pipeline's CPU stage
does. A registry model runs with ``random_weights`` (its real architecture from
``pipelines/models/architectures``, random weights, no hub): THROUGHPUT ONLY, its vectors are meaningless. The
``tiny`` test model runs as it is (the test runs this on CPU).

Reported: ``pages_per_second`` and ``tokens_per_second`` (sequence tokens; ``padded_tokens_per_second`` counts
the padding a micro-batch computes too) over the timed passes after a warm-up pass; ``flops_per_page`` from
torch's FLOP counter on one page (matmuls, convolutions and SDPA attention; kernels it does not know, such
as the flash-attn package's, are not counted, so MFU is then a slight underestimate); ``mfu`` =
``flops_per_page x pages_per_second / peak``, with the peak from :data:`PEAK_TFLOPS` by device name (dense
bf16) or ``--peak-tflops``. ``cpu`` measures the CPU stages' seconds per page on this host (rasterize at the
model's budget, preprocess, pool, binarize) and turns them into the workers per GPU that keep up
(:func:`pipelines.backends.sizing.cpu_workers`), which is how ``conf/ray/gpu.yaml`` is sized.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Dense bf16 tensor-core peak per device (TFLOP/s, vendor datasheets), matched against the CUDA device name.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "B200": 2250.0,
}
#: Model of the default run: the reference model of the speed figures (benchmarks.common.REFERENCE_MODEL).
DEFAULT_MODEL = "colqwen2.5-v0.2"


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a CUDA device by name (longest matching key), None when unknown."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_TFLOPS[key]
    return None


def _pages(model: str, pages: int, source: str) -> list[dict]:
    """``pages`` rendered pages (rows with ``image``) of the PDFs in ``source`` at the model's budget, cycling
    through them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines import schema
    from pipelines.models import registry
    from pipelines.stages.rasterize import RasterizeStage

    stage = RasterizeStage(max_pixels=registry.get_spec(model).max_pixels)
    tables = []
    for path in sorted(Path(source).glob("*.pdf")):
        table = stage.apply(schema.conform(pa.table({"source_uri": [str(path)], "source_size": [0]})))
        tables.append(table.filter(pc.is_null(table["error_type"])))
        if sum(t.num_rows for t in tables) >= pages:
            break
    rows = pa.concat_tables(tables).to_pylist()
    return [rows[i % len(rows)] for i in range(pages)]


def flops_per_page(encoder, item: dict) -> float:
    """FLOPs of one page's forward pass, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        encoder.embed_inputs([item], micro_batch_size=1)
    return float(counter.get_total_flops())


def embed_throughput(encoder, items: list[dict], micro_batch_size: int, batch_tokens: int | None) -> dict[str, Any]:
    """Pages/s and tokens/s of the encoder over ``items`` after one warm-up pass (device synchronized)."""
    import torch

    def sync() -> None:
        if encoder.is_cuda:
            torch.cuda.synchronize()

    encoder.embed_inputs(items[: max(1, micro_batch_size)], micro_batch_size, batch_tokens)  # warm-up
    sync()
    encoder.timings.clear()
    started = time.perf_counter()
    vectors = encoder.embed_inputs(items, micro_batch_size, batch_tokens)
    sync()
    seconds = time.perf_counter() - started
    timings = encoder.timings
    return {
        "seconds": round(seconds, 4),
        "pages_per_second": round(len(items) / seconds, 4),
        "tokens_per_second": round(timings["tokens"] / seconds, 2),
        "padded_tokens_per_second": round(timings["padded_tokens"] / seconds, 2),
        "tokens_per_page": round(timings["tokens"] / len(items), 1),
        "padding_share": round(1 - timings["tokens"] / max(1, timings["padded_tokens"]), 4),
        "vectors_per_page": round(sum(v.shape[0] for v in vectors) / len(items), 1),
        "all_finite": bool(all(torch.isfinite(torch.from_numpy(v)).all() for v in vectors)),
    }


def cpu_stage_costs(model: str, rows: list[dict], pool_factor: int = 3, rerank_pool_factor: int | None = 1) -> dict:
    """CPU seconds per page of the CPU stages on this host, for ``model``'s pages (process plus children)."""
    import numpy as np
    import pyarrow as pa

    from benchmarks.common import cpu_seconds
    from benchmarks.vectors import ClusteredVectors
    from pipelines import schema
    from pipelines.models.registry import ModelConfig, get_spec
    from pipelines.stages.compress import BinarizeStage, PoolStage
    from pipelines.stages.preprocess import PreprocessStage
    from pipelines.stages.rasterize import RasterizeStage

    spec = get_spec(model)
    random = not spec.is_test_model
    rasterize = RasterizeStage(max_pixels=spec.max_pixels)
    preprocess = PreprocessStage(model=ModelConfig(name=model, random_weights=random))
    preprocess.setup()
    pool = PoolStage(pool_factor=pool_factor, rerank_pool_factor=rerank_pool_factor)
    pool.setup()
    sources = sorted({row["source_uri"] for row in rows})
    table = schema.conform(pa.table({"source_uri": sources, "source_size": [0] * len(sources)}))
    costs: dict[str, float] = {}
    started = cpu_seconds()
    rendered = rasterize.apply(table)
    n_rendered = int(schema.ok_mask(rendered).sum())
    if n_rendered == 0:
        msg = f"no page of {sources[:3]}... rendered: the CPU cost of rasterizing cannot be measured"
        raise RuntimeError(msg)
    costs["rasterize"] = (cpu_seconds() - started) / n_rendered
    images = schema.rows_to_table([{k: row[k] for k in ("source_uri", "image")} for row in rows])
    started = cpu_seconds()
    prepared = preprocess.apply(images)
    costs["preprocess"] = (cpu_seconds() - started) / len(rows)
    tokens = [int(n) for n in prepared.column("n_tokens").to_pylist() if n is not None]
    n_vectors = int(np.median(tokens)) if tokens else 768
    pages = ClusteredVectors(n_vectors).pages(min(len(rows), 16), n_vectors)
    embedded = schema.rows_to_table(
        [
            {"source_uri": f"synthetic://{i}", "n_vectors": n_vectors, "n_vectors_raw": n_vectors,
             "embedding": np.asarray(p, dtype="<f2").tobytes()}
            for i, p in enumerate(pages)
        ]
    )  # fmt: skip
    started = cpu_seconds()
    pooled = pool.apply(embedded)
    costs["pool"] = (cpu_seconds() - started) / len(pages)
    started = cpu_seconds()
    BinarizeStage().apply(pooled)
    costs["binarize"] = (cpu_seconds() - started) / len(pages)
    return {
        "cpu_s_per_page": {k: round(v, 4) for k, v in costs.items()},
        "pages_rasterized": n_rendered,
        "vectors_per_page": n_vectors,
        "pool_factor": pool_factor,
        "rerank_pool_factor": rerank_pool_factor,
    }


def bench_gpu(
    model: str = DEFAULT_MODEL,
    pages: int = 64,
    device: str = "auto",
    dtype: str = "auto",
    micro_batch_size: int = 64,
    batch_tokens: int | None = 16384,
    peak: float | None = None,
    source: str | None = None,
    cpu_costs: bool = True,
) -> dict:
    """Embedding throughput of ``model`` on ``device`` (random weights for registry models), FLOPs, MFU and the
    CPU workers per GPU its throughput needs, over the PDFs in ``source`` (None: a generated bulk corpus, kept
    until the CPU stages have been timed on it). See the module docstring for what each figure means."""
    if source is None:
        from pipelines.testing.bulk_corpus import generate_bulk_corpus

        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
            generate_bulk_corpus(tmp, pages=min(pages, 48))
            return bench_gpu(model, pages, device, dtype, micro_batch_size, batch_tokens, peak, tmp, cpu_costs)
    import torch
    from PIL import Image

    from benchmarks.common import check
    from pipelines.backends.sizing import cpu_workers
    from pipelines.models import registry
    from pipelines.models.encoder import MultiVectorEncoder

    spec = registry.get_spec(model)
    random = not spec.is_test_model
    rows = _pages(model, pages, source)
    encoder = MultiVectorEncoder(model, device=device, dtype=dtype, random_weights=random)
    started = time.perf_counter()
    items = [encoder.page_inputs(Image.open(io.BytesIO(row["image"]))) for row in rows]
    preprocess_s = (time.perf_counter() - started) / len(items)
    flops = flops_per_page(encoder, items[0])
    speed = embed_throughput(encoder, items, micro_batch_size, batch_tokens)
    device_name = torch.cuda.get_device_name(encoder.device) if encoder.is_cuda else "cpu"
    peak = peak if peak is not None else (peak_tflops(device_name) if encoder.is_cuda else None)
    achieved = flops * speed["pages_per_second"] / 1e12
    out: dict[str, Any] = {
        "model": model,
        "random_weights": random,
        "label": "THROUGHPUT ONLY (random weights)" if random else "TEST MODEL (random weights)",
        "device": device_name,
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "attention": getattr(encoder.model.config, "_attn_implementation", None),
        "parameters": sum(p.numel() for p in encoder.model.parameters()),
        "pages": len(items),
        "micro_batch_size": micro_batch_size,
        "batch_tokens": batch_tokens,
        **speed,
        "flops_per_page": flops,
        "achieved_tflops": float(f"{achieved:.4g}"),
        "peak_tflops": peak,
        "mfu": float(f"{achieved / peak:.4g}") if peak else None,
        "preprocess_wall_s_per_page": round(preprocess_s, 4),
    }
    if cpu_costs:
        cpu = cpu_stage_costs(model, rows[: min(len(rows), 16)])
        cpu["workers_per_gpu"] = cpu_workers(speed["pages_per_second"], cpu["cpu_s_per_page"])
        out["cpu"] = cpu
    checks = []
    if encoder.is_cuda and out["mfu"] is not None:
        checks.append(check("gpu_mfu", "MFU of the embed path on the GPU", out["mfu"], 0.3))
    return {
        "params": {"model": model, "pages": pages, "device": device, "batch_tokens": batch_tokens},
        "results": out,
        "checks": checks,
    }


def bench_gpu_here(pages: int = 256) -> dict:
    """``python -m benchmarks gpu``: the reference model's full architecture (random weights) on a GPU; without a
    GPU, the tiny test model on the CPU at a few pages (the full model takes minutes per page there)."""
    import torch

    if torch.cuda.is_available():
        return bench_gpu(DEFAULT_MODEL, pages)
    result = bench_gpu("tiny", min(pages, 8), device="cpu")
    result["results"]["note"] = "no GPU on this host: the tiny TEST model on the CPU (plumbing only, not GPU speed)"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--pages", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--micro-batch-size", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=16384, help="0: micro_batch_size pages per pass")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: by name)")
    parser.add_argument("--source", default=None, help="PDF directory (default: the bulk corpus)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU stage costs")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = bench_gpu(
        args.model,
        args.pages,
        args.device,
        args.dtype,
        args.micro_batch_size,
        args.batch_tokens or None,
        args.peak_tflops,
        args.source,
        cpu_costs=not args.no_cpu,
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
