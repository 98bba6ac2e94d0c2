"""Benchmark 5, feed: bytes on the wire and CPU time per page, compact hex form vs pyvespa's list form.

    python -m benchmarks feed [--size 50]                                        # as part of the report
    python -m benchmarks.feed [--pages 200] [--vectors 256 768 1030] [--json out.json]   # a table on stdout

Pages are synthetic but shaped like the index's: unit-norm vectors of the reference model's width (128-d)
rounded to float16 (as stored), their packed sign bits, and a page of text. For each patch count the same pages are
serialized both ways in one process (body = the JSON pyvespa POSTs: ``{"fields": {...}}``), and the
ratios hex/list are reported; gzip sizes are shown for reference.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

import numpy as np

from benchmarks.common import REFERENCE_DIM
from pipelines.stages.compress import binarize
from pipelines.vespa.documents import DocumentSettings, page_document


def synthetic_rows(n_pages: int, n_vectors: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pages):
        vectors = rng.normal(size=(n_vectors, REFERENCE_DIM))
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
        rows.append(
            {
                "page_id": f"{i:032x}-p1",
                "doc_id": f"{i:032x}",
                "source_uri": f"s3://bucket/docs/{i}.pdf",
                "title": f"Document {i}",
                "page_number": 1,
                "page_count": 1,
                "text": "lorem ipsum dolor sit amet " * 80,
                "thumbnail": None,
                "n_vectors": n_vectors,
                "embedding": vectors.astype("<f2").tobytes(),
                "binary": binarize(vectors.astype(np.float32)).tobytes(),
                "model": "colqwen2.5-v0.2",
                "config_hash": "0" * 16,
            }
        )
    return rows


def measure(rows: list[dict], settings: DocumentSettings, repeats: int = 3) -> dict[str, float]:
    best = float("inf")
    bodies: list[bytes] = []
    for _ in range(repeats):
        started = time.perf_counter()
        bodies = [json.dumps({"fields": page_document(r, settings)["fields"]}).encode() for r in rows]
        best = min(best, time.perf_counter() - started)
    n = len(rows)
    return {
        "bytes_per_page": sum(map(len, bodies)) / n,
        "gzip_bytes_per_page": sum(len(gzip.compress(b, 6)) for b in bodies[:20]) / min(n, 20),
        "ms_per_page": 1000 * best / n,
    }


def run(pages: int, vector_counts: list[int]) -> list[dict]:
    results = []
    for n_vectors in vector_counts:
        rows = synthetic_rows(pages, n_vectors)
        for float_vectors in (False, True):
            hex_form = measure(rows, DocumentSettings(form="hex", float_vectors=float_vectors))
            list_form = measure(rows, DocumentSettings(form="list", float_vectors=float_vectors))
            results.append(
                {
                    "vectors_per_page": n_vectors,
                    "fields": "binary + bfloat16" if float_vectors else "binary only",
                    "hex": hex_form,
                    "list": list_form,
                    "bytes_ratio_hex_over_list": hex_form["bytes_per_page"] / list_form["bytes_per_page"],
                    "time_ratio_hex_over_list": hex_form["ms_per_page"] / list_form["ms_per_page"],
                }
            )
    return results


def bench_feed(size: int = 50, vector_counts: tuple[int, ...] = (256, 768, 1030)) -> dict:
    """Bytes and CPU time per page, compact hex form vs pyvespa's list form (:func:`run`), as a benchmark result."""
    rows = run(size, list(vector_counts))
    return {
        "params": {"pages": size, "vector_counts": list(vector_counts), "repeats": 3},
        "results": {"rows": rows},
        "checks": [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--vectors", type=int, nargs="+", default=[256, 768, 1030])
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    results = run(args.pages, args.vectors)
    header = ["vectors/page", "fields", "hex KB/page", "list KB/page", "bytes hex/list"]
    header += ["hex ms/page", "list ms/page", "time hex/list"]
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['vectors_per_page']} | {r['fields']} | {r['hex']['bytes_per_page'] / 1024:.1f} | "
            f"{r['list']['bytes_per_page'] / 1024:.1f} | {r['bytes_ratio_hex_over_list']:.2f}x | "
            f"{r['hex']['ms_per_page']:.2f} | {r['list']['ms_per_page']:.2f} | {r['time_ratio_hex_over_list']:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
