"""Measuring helpers shared by the benchmarks: CPU time, peak memory, checks, and index-shaped test data.

The machine the benchmarks run on is shared and noisy, so every benchmark reports ratios of our component to a
baseline measured in the same process. The helpers here are the plumbing of those measurements:

* :func:`cpu_seconds` (this process plus its waited-for children: poppler runs as subprocesses) and
  :func:`peak_memory` (peak RSS growth of a block, from the kernel's ``VmHWM`` mark);
* :func:`check`: a required figure ("MUST SHOW" claim) as data, rendered in the report's summary table;
* :func:`machine_info`: what a result was measured on (:mod:`pipelines.environment` plus the package versions);
* index-shaped data: :func:`pages_table` (a ``pages`` table from page vectors), :func:`binary_column` (a zero-copy
  Arrow column over a big matrix), :func:`unit_rows`, :func:`top_indexes` (the ranking order of
  :mod:`pipelines.search`) and :func:`pdf_paths` (the sample corpus, then the shared corpus).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines import environment, schema
from pipelines.models.registry import get_spec
from pipelines.stages.compress import binarize

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus" / "py-pdf-sample-files"
#: Packages whose versions every result records (``machine.packages``).
PACKAGES = (
    "numpy",
    "scipy",
    "torch",
    "transformers",
    "colpali-engine",
    "pyarrow",
    "pdf2image",
    "pypdfium2",
    "pillow",
    "ray",
    "pyvespa",
    "ir-measures",
    "matplotlib",
)
#: The page model of the speed and storage figures: ColQwen2.5 at its registry pixel budget.
REFERENCE_MODEL = "colqwen2.5-v0.2"
#: The width of the synthetic vectors: the reference model's (the registry's, not a constant of its own).
REFERENCE_DIM = get_spec(REFERENCE_MODEL).dim
#: Vectors the ColQwen2 document prompt adds to the image tokens (``<|im_start|>user\n<|vision_start|>``,
#: ``<|vision_end|>Describe the image.<|im_end|><|endoftext|>``; :mod:`pipelines.models.tiny` reproduces it).
QWEN_PROMPT_VECTORS = 11
TOP_K = 10


def machine_info() -> dict:
    """What the numbers were measured on: CPU, cores, RAM, OS, Python, package and poppler versions."""
    return environment.machine_info(packages=PACKAGES)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished, waited-for children (poppler runs as subprocesses)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) so the next reading covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_bytes(field: str = "VmRSS") -> int | None:
    """``VmRSS`` (current) or ``VmHWM`` (peak since the last reset) of this process, in bytes."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


@contextlib.contextmanager
def peak_memory() -> Iterator[dict]:
    """Measure the peak RSS growth of a block: ``{"peak_bytes": VmHWM - VmRSS at entry}`` after it ends."""
    out: dict = {"peak_bytes": None}
    ok = reset_peak_rss()
    before = rss_bytes()
    yield out
    peak = rss_bytes("VmHWM")
    if ok and before is not None and peak is not None:
        out["peak_bytes"] = max(0, peak - before)


def check(check_id: str, claim: str, value: float | None, threshold: float, note: str = "") -> dict:
    """A MUST SHOW claim as data: met when ``value >= threshold`` (``None``: not measured, not met)."""
    met = value is not None and bool(value >= threshold)
    return {"id": check_id, "claim": claim, "value": value, "threshold": threshold, "met": met, "note": note}


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def top_indexes(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` best scores, best first, ties by index (the order :mod:`pipelines.search` uses)."""
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def pages_table(vectors: list[np.ndarray]) -> pa.Table:
    """An index ``pages`` table (float16 ``embedding``, packed ``binary``) holding the given page vectors."""
    rows = []
    for i, page in enumerate(vectors):
        page16 = np.asarray(page, dtype="<f2")
        rows.append(
            {
                "page_id": f"page{i:07d}-p1",
                "source_uri": f"synthetic://{i}",
                "page_number": 1,
                "n_vectors": len(page16),
                "embedding_dim": page16.shape[1],
                "embedding": page16.tobytes(),
                "binary": binarize(page16.astype(np.float32)).tobytes(),
            }
        )
    return schema.rows_to_table(rows).select(schema.INDEX_PAGE_COLUMNS)


def binary_column(matrix: np.ndarray, offsets: np.ndarray) -> pa.ChunkedArray:
    """Zero-copy Arrow ``binary`` column whose cell ``i`` holds rows ``offsets[i]:offsets[i+1]`` of ``matrix``.

    Chunks stay under Arrow's 2 GiB ``binary`` offset limit; the cells are views of ``matrix``'s memory.
    """
    flat = np.ascontiguousarray(matrix).reshape(-1).view(np.uint8)
    row_bytes = matrix.shape[1] * matrix.itemsize
    byte_offsets = offsets.astype(np.int64) * row_bytes
    chunks, first, n_pages = [], 0, len(offsets) - 1
    while first < n_pages:
        end = int(np.searchsorted(byte_offsets, byte_offsets[first] + 2**31 - 1, side="right")) - 1
        end = min(max(end, first + 1), n_pages)
        local = (byte_offsets[first : end + 1] - byte_offsets[first]).astype(np.int32)
        data = flat[byte_offsets[first] : byte_offsets[end]]
        chunks.append(pa.Array.from_buffers(pa.binary(), end - first, [None, pa.py_buffer(local), pa.py_buffer(data)]))
        first = end
    return pa.chunked_array(chunks, type=pa.binary())


def pdf_paths(sample_dir: Path, shared_dir: Path | None) -> list[Path]:
    paths = sorted(sample_dir.glob("*.pdf"))
    if shared_dir is not None and shared_dir.is_dir():
        paths += sorted(shared_dir.glob("*.pdf"))
    return paths
