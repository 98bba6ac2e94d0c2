"""The benchmark runner: run benchmarks by name, write each one's JSON result, re-render the report.

    python -m benchmarks NAME [--size N [N ...]] [--repeats 3] [--out reports] [--no-render]
    python -m benchmarks all [--size search=1000,10000 fidelity=500 ...] [--out reports]

``NAME`` is one of :data:`BENCHMARKS`. Every benchmark is small by default; ``--size`` scales it (what the number
means per benchmark is in :data:`SIZE_HELP`; with ``all``, give ``name=N[,N...]`` pairs). Each writes
``<out>/results/<name>.json``: the benchmark's ``params``, ``results`` and ``checks``, wrapped by :func:`run_one`
with the machine, load average and timing it ran under, plus the ``command`` that produced it. Afterwards the
report (``<out>/benchmarks.md`` and ``<out>/figures/*.png``) is re-rendered from every result present
(:mod:`benchmarks.report`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import benchmarks
from benchmarks.common import machine_info

BENCHMARKS = (
    "rasterize",
    "index_size",
    "fidelity",
    "search",
    "hybrid",
    "feed",
    "pooling",
    "pipeline",
    "scale",
    "gpu",
    "memory",
)
SIZE_HELP = {
    "rasterize": "max pages rendered (whole documents, sample corpus first, then the shared corpus)",
    "index_size": "synthetic pages written per measured Parquet file",
    "fidelity": "pages of the synthetic set; the tiny-model set uses up to this many real pages",
    "search": "index sizes in pages, one run each (e.g. 1000 10000 100000)",
    "hybrid": "unused (the sample corpus and its queries, indexed with the tiny test model)",
    "feed": "pages serialized per vector count",
    "pooling": "pages pooled per vector count",
    "scale": "documents in the synthetic listing and ledger, one index each (e.g. 10000 100000 1000000)",
    "pipeline": "pages of the bulk corpus indexed by the loop and by Ray at 2 CPUs (pipelines.testing.bulk_corpus)",
    "gpu": "pages embedded (ColQwen2.5 3B architecture, random weights, on a GPU; the tiny test model without one)",
    "memory": "pages of the one generated PDF whose job peak RSS is measured before and after streaming",
}
DEFAULT_SIZES: dict[str, list[int]] = {
    "rasterize": [40],
    "index_size": [200],
    "fidelity": [150],
    "search": [1000],
    "hybrid": [0],
    "feed": [50],
    "pooling": [8],
    "scale": [10_000, 100_000],
    "pipeline": [1000],
    "gpu": [256],
    "memory": [1000],
}


def run_one(name: str, sizes: list[int], repeats: int) -> dict:
    """Run benchmark ``name`` and wrap its output with the machine, load and timing it ran under."""
    load_start, started = os.getloadavg(), time.perf_counter()
    # Each benchmark's module is imported only when it runs (they pull in torch, colpali-engine, pdfium...).
    if name == "rasterize":
        from benchmarks.rasterize import bench_rasterize

        body = bench_rasterize(size=sizes[0], repeats=repeats)
    elif name == "index_size":
        from benchmarks.index_size import bench_index_size

        body = bench_index_size(size=sizes[0])
    elif name == "fidelity":
        from benchmarks.fidelity import bench_fidelity

        body = bench_fidelity(size=sizes[0])
    elif name == "search":
        from benchmarks.search import bench_search

        body = bench_search(sizes=tuple(sizes), repeats=repeats)
    elif name == "hybrid":
        from benchmarks.search import bench_hybrid

        body = bench_hybrid()
    elif name == "feed":
        from benchmarks.feed import bench_feed

        body = bench_feed(size=sizes[0])
    elif name == "pooling":
        from benchmarks.pooling import bench_pooling

        body = bench_pooling(size=sizes[0], repeats=repeats)
    elif name == "pipeline":
        from benchmarks.pipeline import bench_pipeline

        body = bench_pipeline(pages=sizes[0], startup=True, split_pages=64, loop_threads=(1,))
    elif name == "gpu":
        from benchmarks.gpu import bench_gpu_here

        body = bench_gpu_here(pages=sizes[0])
    elif name == "memory":
        from benchmarks.memory import bench_memory

        body = bench_memory(pages=sizes[0])
    elif name == "scale":
        from benchmarks.scale import bench_scale

        body = bench_scale(sizes=tuple(sizes))
    else:
        msg = f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}"
        raise ValueError(msg)
    return {
        "benchmark": name,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "elapsed_seconds": time.perf_counter() - started,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "machine": machine_info(),
        **body,
    }


def parse_sizes(name: str, tokens: list[str] | None) -> dict[str, list[int]]:
    """Sizes per benchmark from ``--size``: plain integers for one benchmark, ``name=N[,N...]`` pairs for any."""
    sizes = {key: list(value) for key, value in DEFAULT_SIZES.items()}
    given: set[str] = set()
    for token in tokens or []:
        key, sep, values = token.partition("=")
        if not sep:
            if name == "all":
                msg = f"with 'all', give sizes as name=N[,N...] (got {token!r})"
                raise ValueError(msg)
            key, values = name, token
        if key not in sizes:
            msg = f"--size names unknown benchmark {key!r}; choose from {', '.join(BENCHMARKS)}"
            raise ValueError(msg)
        parsed = [int(v) for v in values.split(",") if v]
        if any(v < 1 for v in parsed):
            msg = f"--size values must be >= 1, got {token!r}"
            raise ValueError(msg)
        if key not in given:  # the first value given replaces the default, later ones add runs
            sizes[key], _ = [], given.add(key)
        sizes[key] += parsed
    return sizes


def write_result(out: Path, name: str, result: dict) -> Path:
    path = out / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    msg = f"not JSON serializable: {type(value).__name__}"
    raise TypeError(msg)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=benchmarks.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=[*BENCHMARKS, "all"])
    size_help = "; ".join(f"{k}: {v} (default {DEFAULT_SIZES[k]})" for k, v in SIZE_HELP.items())
    parser.add_argument("--size", nargs="+", default=None, help=size_help)
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement; the best of them is kept")
    parser.add_argument("--out", default="reports", help="report directory (results/, figures/, benchmarks.md)")
    parser.add_argument("--no-render", action="store_true", help="write the JSON only")
    args = parser.parse_args(argv)
    try:
        sizes = parse_sizes(args.name, args.size)
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    failed = []
    for name in names:
        print(f"[benchmark] {name} (size {sizes[name]}) ...", file=sys.stderr, flush=True)
        try:
            result = run_one(name, sizes[name] or [0], args.repeats)
        except Exception as exc:
            if args.name != "all":
                raise
            failed.append(name)
            result = {"benchmark": name, "status": "failed", "error": "".join(traceback.format_exception(exc))[-3000:]}
        result["command"] = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
        path = write_result(out, name, result)
        print(f"[benchmark] {name}: wrote {path}", file=sys.stderr, flush=True)
    if not args.no_render:
        from benchmarks import report

        print(f"[benchmark] report: {report.render(out)}", file=sys.stderr)
    return 1 if failed else 0
