"""Benchmarks of the pipeline's parts against their baselines: JSON results plus a rendered report.

    python -m jobs.benchmark NAME [--size N [N ...]] [--repeats 3] [--out reports]
    python -m jobs.benchmark all [--size search=1000,10000 fidelity=500 ...] [--out reports]

``NAME`` is one of ``rasterize``, ``index_size``, ``fidelity``, ``search``, ``feed``, ``pooling``,
``pipeline`` or ``all``. Every benchmark is small by default; ``--size`` scales it (what the number
means per benchmark is in :data:`SIZE_HELP`; with ``all``, give ``name=N[,N...]`` pairs). Each writes
``<out>/results/<name>.json``; afterwards the report (``<out>/benchmarks.md`` and
``<out>/figures/*.png``) is re-rendered from every result present (:mod:`jobs.report`).

The machine these run on is shared and noisy. Every figure is therefore a ratio of our component to
its baseline measured in the same process, interleaved (the two alternate within each repeat) and
repeated, with the best of N taken for each side. Where embeddings are involved the model is ``tiny``,
the random-weight TEST model: its vectors say how much the *input* changed the output, never how well
anything retrieves.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.metadata
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines import schema
from pipelines.stages.compress import binarize

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "corpus" / "py-pdf-sample-files"
BENCHMARKS = ("rasterize", "index_size", "fidelity", "search", "feed", "pooling", "pipeline")
SIZE_HELP = {
    "rasterize": "max pages rendered (whole documents, sample corpus first, then the shared corpus)",
    "index_size": "synthetic pages written per measured Parquet file",
    "fidelity": "pages of the synthetic set; the tiny-model set uses up to this many real pages",
    "search": "index sizes in pages, one run each (e.g. 1000 10000 100000)",
    "feed": "pages serialized per vector count",
    "pooling": "pages pooled per vector count",
    "pipeline": "not used (the whole sample corpus is indexed)",
}
DEFAULT_SIZES: dict[str, list[int]] = {
    "rasterize": [40],
    "index_size": [200],
    "fidelity": [150],
    "search": [1000],
    "feed": [50],
    "pooling": [8],
    "pipeline": [],
}
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
#: Vectors the ColQwen2 document prompt adds to the image tokens (``<|im_start|>user\n<|vision_start|>``,
#: ``<|vision_end|>Describe the image.<|im_end|><|endoftext|>``; :mod:`pipelines.models.tiny` reproduces it).
QWEN_PROMPT_VECTORS = 11
TOP_K = 10


# ----------------------------------------------------------------------------------------------------------------
# Measurement plumbing
# ----------------------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    """What the numbers were measured on: CPU, cores, RAM, OS, Python, package and poppler versions."""
    cpu_model, family, model = "unknown", None, None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and cpu_model == "unknown":
                cpu_model = value
            elif key == "cpu family" and family is None:
                family = value
            elif key == "model" and model is None:
                model = value
    ram_bytes = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_bytes = int(line.split()[1]) * 1024
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    try:
        poppler = subprocess.run(["pdftoppm", "-v"], capture_output=True, text=True, timeout=10).stderr.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        poppler = None
    return {
        "cpu_model": cpu_model,
        "cpu_family_model": f"family {family} model {model}" if family else None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gib": round(ram_bytes / 2**30, 1) if ram_bytes else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": packages,
        "poppler": poppler,
    }


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


# ----------------------------------------------------------------------------------------------------------------
# Synthetic multi-vectors
# ----------------------------------------------------------------------------------------------------------------

#: How :class:`ClusteredVectors` builds pages; recorded in results so the report can state it.
CLUSTERED_RECIPE = (
    "Hierarchy of directions in 128-d, every vector L2-normalised, all noise anisotropic (Gaussian in a random "
    "orthonormal basis, per-axis scale i^-0.5, i = 1..128): a corpus-wide common direction (weight 0.5, added to "
    "every vector: an assumed shared component, which the tiny model's vectors also show); per document of 5 pages, 8"
    " topic directions; per page, 6 local centroids (a topic of its document + noise 0.5). A page's patches are a "
    "fraction U(0.3, 0.7) of 'background' (one corpus-wide blank-area direction + noise 0.1: near-duplicates, like a "
    "page's white space) and otherwise 'content' (a local centroid + noise 0.35), plus 11 prompt-token vectors (fixed"
    " directions + noise 0.1, as the ColQwen prompt adds). A query has 10 content tokens (local centroids of one "
    "target page + noise 0.35) and 10 augmentation tokens (one shared direction + noise 0.2, like ColQwen's 10 pad "
    "tokens). The weights are assumptions chosen to give the structure pooling relies on, not fitted to ColPali."
)


class ClusteredVectors:
    """Synthetic page and query multi-vectors with clustered, anisotropic statistics (see :data:`CLUSTERED_RECIPE`).

    Deterministic for a seed. Not ColPali outputs: a stand-in with the structure that matters for pooling and
    binarization (a shared component, near-duplicate background patches, local clusters of content patches, topics
    shared by the pages of a document, anisotropic noise).
    """

    dim = schema.EMBEDDING_DIM
    pages_per_document = 5

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(self.rng.standard_normal((self.dim, self.dim)))
        scales = np.arange(1, self.dim + 1) ** -0.5
        # Maps isotropic N(0, I) rows to anisotropic noise of unit expected norm.
        self._mix = (basis * (scales / np.sqrt((scales**2).sum()))).T
        self.common = unit_rows(self.rng.standard_normal((1, self.dim)))[0]
        self.background = unit_rows(self.rng.standard_normal((1, self.dim)))[0]
        self.prompt = unit_rows(self.rng.standard_normal((QWEN_PROMPT_VECTORS, self.dim)))
        self.augmentation = unit_rows(self.rng.standard_normal((1, self.dim)))[0]
        self._topics: dict[int, np.ndarray] = {}
        self.centroids: dict[int, np.ndarray] = {}

    def noise(self, n: int, scale: float) -> np.ndarray:
        """``n`` anisotropic noise rows of expected L2 norm ``scale``."""
        return scale * (self.rng.standard_normal((n, self.dim)) @ self._mix)

    def _document_topics(self, doc: int) -> np.ndarray:
        if doc not in self._topics:
            self._topics[doc] = unit_rows(self.noise(8, 1.0))
        return self._topics[doc]

    def page(self, index: int, n_vectors: int) -> np.ndarray:
        """Unit vectors ``(n_vectors, 128)`` of page ``index`` (prompt tokens included)."""
        n_patches = max(1, n_vectors - QWEN_PROMPT_VECTORS)
        topics = self._document_topics(index // self.pages_per_document)
        centroids = unit_rows(topics[self.rng.integers(0, len(topics), 6)] + self.noise(6, 0.5))
        self.centroids[index] = centroids
        is_background = self.rng.random(n_patches) < self.rng.uniform(0.3, 0.7)
        content = unit_rows(centroids[self.rng.integers(0, len(centroids), n_patches)] + self.noise(n_patches, 0.35))
        background = unit_rows(self.background + self.noise(n_patches, 0.1))
        patches = np.where(is_background[:, None], background, content)
        prompt = unit_rows(self.prompt + self.noise(QWEN_PROMPT_VECTORS, 0.1))
        vectors = np.concatenate([prompt[:4], patches, prompt[4:]])[:n_vectors]
        return unit_rows(0.5 * self.common + vectors)

    def pages(self, n_pages: int, n_vectors: int | tuple[int, int]) -> list[np.ndarray]:
        """``n_pages`` pages; ``n_vectors`` fixed or drawn uniformly from an inclusive ``(low, high)`` range."""
        low, high = (n_vectors, n_vectors) if isinstance(n_vectors, int) else n_vectors
        counts = self.rng.integers(low, high + 1, size=n_pages)
        return [self.page(i, int(n)) for i, n in enumerate(counts)]

    def query(self, target: int, n_content: int = 10, n_augmentation: int = 10) -> np.ndarray:
        """Query vectors aimed at page ``target`` (already generated): its local centroids plus augmentation tokens."""
        centroids = self.centroids[target]
        content = unit_rows(centroids[self.rng.integers(0, len(centroids), n_content)] + self.noise(n_content, 0.35))
        augmentation = unit_rows(self.augmentation + self.noise(n_augmentation, 0.2))
        return unit_rows(0.5 * self.common + np.concatenate([content, augmentation]))


def vector_statistics(pages: list[np.ndarray], seed: int = 0, pairs: int = 20000) -> dict:
    """Summary statistics of a set of page vectors, to compare synthetic and model-made sets."""
    rng = np.random.default_rng(seed)
    lengths = np.array([len(p) for p in pages])
    flat = np.concatenate(pages).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    a, b = rng.integers(0, len(flat), pairs), rng.integers(0, len(flat), pairs)
    page_of = np.searchsorted(offsets, np.arange(len(flat)), side="right") - 1
    # Same-page pairs: two random rows of one random page.
    which = rng.integers(0, len(pages), pairs)
    i = offsets[which] + (rng.random(pairs) * lengths[which]).astype(int)
    j = offsets[which] + (rng.random(pairs) * lengths[which]).astype(int)
    cross = page_of[a] != page_of[b]
    sample = flat[rng.integers(0, len(flat), min(len(flat), 50000))]
    eigen = np.clip(np.linalg.eigvalsh(np.cov(sample.T)), 0, None)
    return {
        "pages": len(pages),
        "vectors_per_page_mean": float(lengths.mean()),
        "mean_cosine_other_pages": float(np.einsum("ij,ij->i", flat[a], flat[b])[cross].mean()),
        "mean_cosine_same_page": float(np.einsum("ij,ij->i", flat[i], flat[j]).mean()),
        "participation_ratio": float(eigen.sum() ** 2 / (eigen**2).sum()),
        "positive_bit_fraction": float((flat > 0).mean()),
    }


# ----------------------------------------------------------------------------------------------------------------
# 1. rasterize
# ----------------------------------------------------------------------------------------------------------------


def _pdf_paths(sample_dir: Path, shared_dir: Path | None) -> list[Path]:
    paths = sorted(sample_dir.glob("*.pdf"))
    if shared_dir is not None and shared_dir.is_dir():
        paths += sorted(shared_dir.glob("*.pdf"))
    return paths


def poppler_page_count(path: Path) -> int | None:
    """Page count as poppler's ``pdfinfo`` reports it; ``None`` when it cannot open the file."""
    result = subprocess.run(["pdfinfo", str(path)], capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        return None
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("Pages:"):
            return int(line.split(":", 1)[1])
    return None


def _stage_renderer(stage) -> Callable[[Path], list[tuple[int, int, int]]]:
    """Renderer over our stage: ``[(width, height, image bytes)]`` of the page rows it produced."""

    def render(path: Path) -> list[tuple[int, int, int]]:
        rows = stage.rasterize_document(path.as_uri())
        return [(r["image_width"], r["image_height"], len(r["image"])) for r in rows if r.get("error_type") is None]

    return render


def _pdf2image_default(path: Path) -> list[tuple[int, int, int]]:
    """pdf2image with every default: 200 DPI, PPM through a pipe, decoded PIL images in memory."""
    from pdf2image import convert_from_path

    return [(image.width, image.height, 0) for image in convert_from_path(str(path))]


def _pdfium_renderer(max_pixels: int, max_dpi: float) -> Callable[[Path], list[tuple[int, int, int]]]:
    """pypdfium2 rendering every page to a PIL image at the pixel size our stage would use."""
    import pypdfium2 as pdfium

    from pipelines.stages.rasterize import target_size

    def render(path: Path) -> list[tuple[int, int, int]]:
        out, images = [], []
        pdf = pdfium.PdfDocument(str(path))
        try:
            for index in range(len(pdf)):
                page = pdf[index]
                try:
                    width_pt, height_pt = page.get_size()  # after /Rotate, like pdfinfo's sizes
                    width_px, _ = target_size(width_pt, height_pt, max_pixels, max_dpi)
                    image = page.render(scale=width_px / width_pt).to_pil()
                    images.append(image)  # kept, like pdf2image's list of PIL images
                    out.append((image.width, image.height, 0))
                finally:
                    page.close()
        finally:
            pdf.close()
        return out

    return render


def _pdfium_stage_whatif(max_pixels: int, max_dpi: float) -> Callable[[Path], list[tuple[int, int, int]]]:
    """WHAT-IF prototype (not the pipeline's code) producing what our stage produces per page, in process with
    pypdfium2: a PNG (Pillow, ``compress_level=1``) at our pixel size, the text layer (pdfium's), and the stage's own
    JPEG thumbnail. It has none of the stage's isolation: no subprocess to kill on a timeout, a crash in pdfium takes
    the worker down. That trade-off, not speed, is what an in-process renderer would cost.
    """
    import pypdfium2 as pdfium

    from pipelines.stages.rasterize import RasterizeStage, target_size

    thumbnailer = RasterizeStage(max_pixels=max_pixels)

    def render(path: Path) -> list[tuple[int, int, int]]:
        out = []
        pdf = pdfium.PdfDocument(path.read_bytes())
        try:
            for index in range(len(pdf)):
                page = pdf[index]
                try:
                    width_pt, height_pt = page.get_size()
                    width_px, _ = target_size(width_pt, height_pt, max_pixels, max_dpi)
                    image = page.render(scale=width_px / width_pt).to_pil()
                    buffer = io.BytesIO()
                    image.save(buffer, format="PNG", compress_level=1)
                    thumbnailer._thumbnail(image)
                    textpage = page.get_textpage()
                    textpage.get_text_bounded()
                    textpage.close()
                    out.append((image.width, image.height, len(buffer.getvalue())))
                finally:
                    page.close()
        finally:
            pdf.close()
        return out

    return render


def symmetric_maxsim_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """MaxSim-normalised similarity of two vector sets: the mean best-match cosine, averaged both ways.

    ``0.5 * (mean_i max_j cos(a_i, b_j) + mean_j max_i cos(a_i, b_j))``; 1.0 when every vector of each set has an
    identical partner in the other. Used where the rows of two sets have no fixed correspondence (pooled vectors
    come out in cluster order).
    """
    similarity = unit_rows(a) @ unit_rows(b).T
    return float(0.5 * (similarity.max(axis=1).mean() + similarity.max(axis=0).mean()))


@contextlib.contextmanager
def processor_budget(processor, max_pixels: int) -> Iterator[None]:
    """Temporarily give a Qwen2-VL-family processor another pixel budget (``size.longest_edge`` in pixels)."""
    image_processor = processor.image_processor
    original = image_processor.size
    shortest = original["shortest_edge"] if isinstance(original, dict) else original.shortest_edge
    image_processor.size = {"shortest_edge": shortest, "longest_edge": max_pixels}
    try:
        yield
    finally:
        image_processor.size = original


def _embedding_effect(
    docs: list[Path], max_pixels: int, embed_pages: int, model: str, pool_factor: int, at_reference_budget: bool
) -> dict:
    """Embed our stage's image and pdf2image's 200-DPI image of the same pages; compare the pooled vectors.

    At the model's own processor budget, and with ``at_reference_budget`` also with the processor given the
    reference model's budget (the tiny weights then see ColQwen2.5-sized inputs, as a real ColQwen2.5 would).
    """
    from colpali_engine.compression.token_pooling import HierarchicalTokenPooler
    from pdf2image import convert_from_path
    from PIL import Image

    from pipelines.models import registry
    from pipelines.models.encoder import MultiVectorEncoder
    from pipelines.stages.compress import pool_vectors
    from pipelines.stages.rasterize import RasterizeStage

    png_stage = RasterizeStage(max_pixels=max_pixels, extract_text=False, thumbnail_px=0, image_format="png")
    jpeg_stage = RasterizeStage(max_pixels=max_pixels, extract_text=False, thumbnail_px=0, image_format="jpeg")
    per_doc = []
    for path in docs:
        png_rows = [r for r in png_stage.rasterize_document(path.as_uri()) if r.get("error_type") is None]
        jpeg_rows = {r["page_number"]: r for r in jpeg_stage.rasterize_document(path.as_uri()) if r.get("image")}
        # Qwen2-VL needs at least one 28x28 block per side; smaller renders (icon-sized test pages) are skipped.
        per_doc.append(
            [
                (path, r, jpeg_rows[r["page_number"]])
                for r in png_rows
                if min(r["image_width"], r["image_height"]) >= 28
            ]
        )
    # Round-robin over documents (page 1 of each, then page 2, ...) for a mix of layouts and sources.
    chosen = []
    for depth in range(max((len(d) for d in per_doc), default=0)):
        chosen += [d[depth] for d in per_doc if depth < len(d)]
    chosen = chosen[:embed_pages]

    def decode(data: bytes):
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")

    ours = [decode(png["image"]) for _, png, _ in chosen]
    ours_jpeg = [decode(jpeg["image"]) for _, _, jpeg in chosen]
    dpi200 = [
        convert_from_path(str(path), first_page=png["page_number"], last_page=png["page_number"])[0].convert("RGB")
        for path, png, _ in chosen
    ]
    encoder = MultiVectorEncoder(model)
    pooler = HierarchicalTokenPooler()
    spec = registry.get_spec(model)
    budgets = [(f"{model} processor ({spec.max_pixels:,} px)", spec.max_pixels)]
    if at_reference_budget:
        budgets.append((f"{model} weights, processor at the {REFERENCE_MODEL} budget ({max_pixels:,} px)", max_pixels))
    results = []
    for label, budget in budgets:
        with processor_budget(encoder.processor, budget):
            vectors = {
                name: encoder.embed_images(images, micro_batch_size=4)
                for name, images in (("ours", ours), ("ours_jpeg", ours_jpeg), ("dpi200", dpi200))
            }
        pooled = {
            name: [pool_vectors(pooler, v.astype("<f2").astype(np.float32), pool_factor) for v in values]
            for name, values in vectors.items()
        }
        pages = []
        for i, (path, png, _) in enumerate(chosen):
            raw_ours, raw_200 = vectors["ours"][i], vectors["dpi200"][i]
            same_grid = raw_ours.shape == raw_200.shape
            other = (i + 1) % len(chosen)
            pages.append(
                {
                    "document": path.name,
                    "page_number": png["page_number"],
                    "ours_px": [png["image_width"], png["image_height"]],
                    "dpi200_px": list(dpi200[i].size),
                    "vectors_ours": int(raw_ours.shape[0]),
                    "vectors_dpi200": int(raw_200.shape[0]),
                    "same_grid": same_grid,
                    "raw_row_cosine": float(np.einsum("ij,ij->i", unit_rows(raw_ours), unit_rows(raw_200)).mean())
                    if same_grid
                    else None,
                    "pooled_cosine": symmetric_maxsim_cosine(pooled["ours"][i], pooled["dpi200"][i]),
                    "pooled_cosine_jpeg": symmetric_maxsim_cosine(pooled["ours_jpeg"][i], pooled["dpi200"][i]),
                    "pooled_cosine_other_page": symmetric_maxsim_cosine(pooled["ours"][i], pooled["ours"][other])
                    if other != i
                    else None,
                }
            )

        results.append(
            {
                "label": label,
                "processor_max_pixels": budget,
                "pages": pages,
                "pooled_cosine": _mean_min(pages, "pooled_cosine"),
                "pooled_cosine_jpeg": _mean_min(pages, "pooled_cosine_jpeg"),
                "pooled_cosine_other_page": _mean_min(pages, "pooled_cosine_other_page"),
                "raw_row_cosine": _mean_min(pages, "raw_row_cosine"),
                "same_grid_pages": sum(p["same_grid"] for p in pages),
            }
        )
    return {"model": model, "is_test_model": spec.is_test_model, "pool_factor": pool_factor, "budgets": results}


def _mean_min(rows: list[dict], key: str) -> dict | None:
    found = [row[key] for row in rows if row[key] is not None]
    return {"mean": float(np.mean(found)), "min": float(np.min(found))} if found else None


def bench_rasterize(
    size: int = 40,
    repeats: int = 3,
    embed_pages: int = 12,
    sample_dir: Path | None = None,
    shared_dir: Path | None = SHARED_CORPUS,
    embed: bool = True,
    embed_at_reference_budget: bool = True,
    model: str = "tiny",
    pool_factor: int = 3,
) -> dict:
    """Pages per CPU-second (one process, poppler children included) of our RasterizeStage at the ColQwen2.5 pixel
    budget vs pdf2image's defaults (200 DPI) vs pypdfium2 at our pixel size; plus how the 200-DPI input would change
    the (test-model) embeddings.

    Documents are taken whole, sample corpus first, until ``size`` pages. A document is timed only when every
    renderer produced exactly poppler's page count for it; the others are listed with the reason.
    """
    from pipelines.corpus import generate_sample_corpus
    from pipelines.models import registry
    from pipelines.stages.rasterize import RasterizeStage

    budget = registry.get_spec(REFERENCE_MODEL).max_pixels
    with tempfile.TemporaryDirectory(prefix="bench-sample-") as tmp:
        if sample_dir is None:
            sample_dir = Path(tmp)
            generate_sample_corpus(sample_dir)
        default_stage = RasterizeStage(max_pixels=budget)
        renderers: dict[str, tuple[str, Callable]] = {
            "pdf2image_200dpi": (
                "BASELINE: pdf2image convert_from_path, all defaults (200 DPI, PPM through a pipe, PIL images)",
                _pdf2image_default,
            ),
            "stage_default": (
                f"our RasterizeStage, default config (JPEG q90 from poppler's raw pixels, text layer, thumbnail) "
                f"at {budget:,} px",
                _stage_renderer(default_stage),
            ),
            "stage_render_only": (
                "our RasterizeStage, default config with text layer and thumbnail off "
                "(rasterize.extract_text=false, thumbnail_px=0)",
                _stage_renderer(RasterizeStage(max_pixels=budget, extract_text=False, thumbnail_px=0)),
            ),
            "stage_png": (
                "our RasterizeStage with rasterize.image_format=png (lossless, zlib level 1), text and thumbnail",
                _stage_renderer(RasterizeStage(max_pixels=budget, image_format="png")),
            ),
            "whatif_pdfium_stage": (
                "WHAT-IF prototype: in-process pypdfium2 render + Pillow PNG level 1 + text layer + thumbnail",
                _pdfium_stage_whatif(budget, default_stage.max_dpi),
            ),
            "pypdfium2_budget": (
                f"BASELINE: pypdfium2 render to PIL at our pixel size ({budget:,} px budget), nothing else",
                _pdfium_renderer(budget, default_stage.max_dpi),
            ),
        }
        optional = {"whatif_pdfium_stage"}
        docs, excluded, disabled, total = [], [], {}, 0
        pixels: dict[str, list[int]] = {name: [] for name in renderers}
        out_bytes: dict[str, list[int]] = {name: [] for name in renderers}
        for path in _pdf_paths(sample_dir, shared_dir):
            expected = poppler_page_count(path)
            if expected is None:
                excluded.append({"document": path.name, "reason": "pdfinfo cannot open it"})
                continue
            if total + expected > size:
                continue
            # Untimed pass: check every renderer's page count (and warm the file cache and imports). The
            # baselines and our stage decide whether a document is timed; a what-if variant that then fails on
            # a timed document is dropped (and reported) rather than costing the document.
            counts, outputs, problem = {}, {}, None
            for name, (_, render) in sorted(renderers.items(), key=lambda item: item[0] in optional):
                if name in disabled:
                    continue
                if problem is not None and name in optional:
                    break
                try:
                    outputs[name] = render(path)
                    counts[name] = len(outputs[name])
                except Exception as exc:
                    error = f"{name} raised {type(exc).__name__}: {str(exc)[:200]}"
                    if name in optional:
                        disabled[name] = f"{error} on {path.name}"
                    else:
                        problem = error
                    continue
                if counts[name] != expected and name in optional:
                    disabled[name] = f"{name} gave {counts[name]} pages for {path.name}, pdfinfo {expected}"
                elif counts[name] != expected and problem is None:
                    problem = f"page counts differ from pdfinfo's {expected}: {name} gave {counts[name]}"
            if problem:
                excluded.append({"document": path.name, "reason": problem})
                continue
            docs.append({"document": path.name, "path": path, "pages": expected})
            total += expected
            for name, pages in outputs.items():
                pixels[name] += [w * h for w, h, _ in pages]
                out_bytes[name] += [b for _, _, b in pages]
        active = [name for name in renderers if name not in disabled]
        cpu = {name: [] for name in active}
        wall = {name: [] for name in active}
        for repeat in range(repeats):
            # Rotate the order every repeat so no renderer always runs first (cold) or last.
            order = active[repeat % len(active) :] + active[: repeat % len(active)]
            for name in order:
                render = renderers[name][1]
                started_cpu, started = cpu_seconds(), time.perf_counter()
                produced = sum(len(render(d["path"])) for d in docs)
                cpu[name].append(cpu_seconds() - started_cpu)
                wall[name].append(time.perf_counter() - started)
                if produced != total:
                    msg = f"{name} produced {produced} pages in a timed run, expected {total}"
                    raise RuntimeError(msg)
        baseline = "pdf2image_200dpi"
        results = {}
        for name in active:
            best = min(cpu[name])
            per_repeat = [cpu[baseline][r] / cpu[name][r] for r in range(repeats)]
            results[name] = {
                "description": renderers[name][0],
                "pages": total,
                "cpu_seconds": cpu[name],
                "wall_seconds": wall[name],
                "pages_per_cpu_second": total / best,
                "pages_per_wall_second": total / min(wall[name]),
                "speedup_vs_pdf2image": min(cpu[baseline]) / best,
                "speedup_per_repeat": per_repeat,
                "mean_pixels_per_page": float(np.mean(pixels[name])) if pixels[name] else None,
                "mean_image_bytes_per_page": float(np.mean(out_bytes[name])) if any(out_bytes[name]) else None,
            }
        for name, error in disabled.items():
            results[name] = {"description": renderers[name][0], "error": error}
        embedding = None
        if embed and docs:
            paths = [d["path"] for d in docs]
            embedding = _embedding_effect(paths, budget, embed_pages, model, pool_factor, embed_at_reference_budget)
    speed = results.get("stage_default", {}).get("speedup_vs_pdf2image")
    checks = [
        check(
            "rasterize_speed",
            "our RasterizeStage (default config) >= 2x pages per CPU-second of pdf2image at 200 DPI",
            speed,
            2.0,
        )
    ]
    if embedding:
        # The claim is about the image the default config stores (PNG and JPEG are both measured).
        key = "pooled_cosine_jpeg" if default_stage.image_format == "jpeg" else "pooled_cosine"
        tiny_budget = embedding["budgets"][0][key]
        checks.append(
            check(
                "rasterize_cosine",
                f"pooled-vector cosine (test model '{model}', pool factor {pool_factor}) of our default page image "
                f"({default_stage.image_format.upper()}) vs the 200-DPI image >= 0.98 (mean over pages)",
                tiny_budget["mean"] if tiny_budget else None,
                0.98,
                note=f"minimum over pages {tiny_budget['min']:.4f}" if tiny_budget else "",
            )
        )
    for doc in docs:
        doc.pop("path")
    return {
        "params": {
            "max_pages": size,
            "repeats": repeats,
            "pixel_budget": budget,
            "pixel_budget_model": REFERENCE_MODEL,
            "max_dpi": default_stage.max_dpi,
            "embed_pages": embed_pages,
            "model": model,
            "pool_factor": pool_factor,
        },
        "results": {
            "documents": docs,
            "excluded": excluded,
            "pages": total,
            "renderers": results,
            "baseline": baseline,
            "embedding": embedding,
        },
        "checks": checks,
    }


# ----------------------------------------------------------------------------------------------------------------
# 2. index_size
# ----------------------------------------------------------------------------------------------------------------


def patch_counts() -> list[dict]:
    """Vectors per page of every supported model, with where each count comes from."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from pipelines.models import registry
    from pipelines.stages.rasterize import target_size

    rows = [
        {
            "model": "colpali-v1.3",
            "page": "any (squashed to 448x448)",
            "vectors": 1030,
            "source": "1024 image tokens (32x32 grid) + 6 prompt tokens; ../shared/reference/colpali.md section 1",
        }
    ]
    for name in ("colqwen2-v1.0", "colqwen2.5-v0.2", "tiny"):
        spec = registry.get_spec(name)
        for page, (width_pt, height_pt) in (("US Letter portrait", (612, 792)), ("A4 portrait", (595.276, 841.89))):
            width, height = target_size(width_pt, height_pt, spec.max_pixels, 200.0)
            grid_h, grid_w = smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=spec.max_pixels)
            tokens = grid_h * grid_w // (28 * 28)
            rows.append(
                {
                    "model": name,
                    "page": page,
                    "vectors": tokens + QWEN_PROMPT_VECTORS,
                    "source": (
                        f"render {width}x{height} px (registry budget {spec.max_pixels:,} px) -> Qwen2-VL "
                        f"smart_resize {grid_w}x{grid_h} -> {tokens} image tokens (28x28 px each) + "
                        f"{QWEN_PROMPT_VECTORS} prompt tokens"
                    ),
                }
            )
    for edge, note in (
        (1536, "registry comment: longest edge 1536 px"),
        (2048, "colpali.md estimate: longest edge 2048 px"),
    ):
        tiles_w, tiles_h = -(-round(edge * 612 / 792) // 512), -(-edge // 512)
        image_tokens = 64 * (tiles_w * tiles_h + 1)
        rows.append(
            {
                "model": "colsmol-256m / colsmol-500m",
                "page": f"US Letter portrait, {edge}-px long edge",
                "vectors": image_tokens,
                "source": (
                    f"ESTIMATE ({note}; processor config not readable offline): {tiles_w}x{tiles_h} tiles of "
                    f"512 px + 1 global image, 64 tokens each = {image_tokens}, plus unknown marker/prompt tokens"
                ),
            }
        )
    return rows


def parquet_bytes_per_page(n_pages: int, n_vectors: int, seed: int = 0) -> dict:
    """Measured zstd Parquet bytes per page of the ``embedding`` and ``binary`` columns (the index's settings)."""
    import pyarrow.parquet as pq

    vectors = ClusteredVectors(seed).pages(n_pages, n_vectors)
    table = pages_table(vectors).select(["n_vectors", "embedding", "binary"])
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    metadata = pq.ParquetFile(io.BytesIO(buffer.getvalue())).metadata
    sizes = {"embedding": 0, "binary": 0}
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            if column.path_in_schema in sizes:
                sizes[column.path_in_schema] += column.total_compressed_size
    return {
        "pages": n_pages,
        "vectors_per_page": n_vectors,
        "embedding_bytes_per_page": sizes["embedding"] / n_pages,
        "binary_bytes_per_page": sizes["binary"] / n_pages,
        "embedding_raw_bytes_per_page": n_vectors * schema.EMBEDDING_DIM * 2,
        "binary_raw_bytes_per_page": n_vectors * schema.BINARY_BYTES,
    }


def bench_index_size(size: int = 200, pool_factors: tuple[int, ...] = (2, 3, 4)) -> dict:
    """Bytes per page of float16, binary, and binary after pooling, per model patch count; measured Parquet bytes.

    Pooled counts are the pooler's cluster count ``max(n // pool_factor, 1)`` (fewer only when Ward merge distances
    tie, e.g. duplicate vectors). The byte figures are arithmetic; the Parquet ones are measured.
    """
    rows = []
    for entry in patch_counts():
        n = entry["vectors"]
        formats = {"float16": n * schema.EMBEDDING_DIM * 2, "binary": n * schema.BINARY_BYTES}
        for factor in pool_factors:
            formats[f"binary_pool{factor}"] = max(n // factor, 1) * schema.BINARY_BYTES
        formats["index_pool3_float16_plus_binary"] = max(n // 3, 1) * (schema.EMBEDDING_DIM * 2 + schema.BINARY_BYTES)
        rows.append({**entry, "bytes_per_page": formats})
    measured = []
    reference = next(r["vectors"] for r in rows if r["model"] == REFERENCE_MODEL)
    for n in sorted({reference, reference // 3}):
        measured.append(parquet_bytes_per_page(size, n))
    return {
        "params": {"parquet_pages": size, "pool_factors": list(pool_factors), "compression": "zstd"},
        "results": {
            "models": rows,
            "parquet": measured,
            "parquet_vectors": "synthetic clustered set",
            "recipe": CLUSTERED_RECIPE,
        },
        "checks": [],
    }


# ----------------------------------------------------------------------------------------------------------------
# 3. fidelity
# ----------------------------------------------------------------------------------------------------------------


def _ranking_metrics(exact: list[np.ndarray], approx: list[np.ndarray], k: int) -> dict:
    """recall@k and nDCG@k of ``approx`` top-k lists against the exact top-k (graded: rank 1 = k, ..., rank k = 1)."""
    import ir_measures
    from ir_measures import Qrel, R, ScoredDoc, nDCG

    qrels = [Qrel(str(q), str(int(page)), k - rank) for q, top in enumerate(exact) for rank, page in enumerate(top)]
    run = [
        ScoredDoc(str(q), str(int(page)), float(k - rank))
        for q, top in enumerate(approx)
        for rank, page in enumerate(top)
    ]
    per_query: dict[str, dict] = {}
    for metric in ir_measures.iter_calc([R @ k, nDCG @ k], qrels, run):
        per_query.setdefault(str(metric.measure), {})[metric.query_id] = metric.value
    recall = [per_query[f"R@{k}"].get(str(q), 0.0) for q in range(len(exact))]
    ndcg = [per_query[f"nDCG@{k}"].get(str(q), 0.0) for q in range(len(exact))]
    return {"recall": float(np.mean(recall)), "recall_min": float(np.min(recall)), "ndcg": float(np.mean(ndcg))}


def fidelity_of(
    pages: list[np.ndarray],
    queries: list[np.ndarray],
    pool_factors: tuple[int, ...] = (1, 2, 3, 4),
    rerank_counts: tuple[int, ...] = (10, 20, 50, 100, 200),
    k: int = TOP_K,
    targets: list[int] | None = None,
) -> dict:
    """How well the deployed rankings reproduce exact float MaxSim over the unpooled vectors, per setting.

    The reference is the float profile over the unpooled vectors as the index stores them (float16). Per pool
    factor, the pages are pooled with our ``pool_vectors`` (colpali-engine's HierarchicalTokenPooler) and ranked by
    :class:`pipelines.search.LocalIndex`: ``two_phase`` at each rerank count (the largest is every page: the second
    phase alone), ``binary`` (first phase only), ``float`` (pooled float vectors: pooling's loss alone), and a
    what-if ``hamming_then_float`` (the deployed first phase, then float MaxSim over the pooled vectors on the
    candidates: the first phase's own loss). With ``targets`` (the page each query was made from) the share of
    queries whose target is in the top-k is reported too.
    """
    from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

    from pipelines.search import LocalIndex
    from pipelines.stages.compress import pool_vectors

    stored = [np.asarray(p, dtype="<f2").astype(np.float32) for p in pages]
    reference = LocalIndex(pages_table(stored))
    exact = [top_indexes(reference.float_maxsim(q), k) for q in queries]
    pooler = HierarchicalTokenPooler()
    counts = sorted({r for r in rerank_counts if r < len(pages)} | {len(pages)})
    rows = []

    def row(factor: int, profile: str, rerank: int | None, approx: list[np.ndarray], extra: dict) -> dict:
        out = {"pool_factor": factor, "profile": profile, "rerank_count": rerank, **extra}
        out.update(_ranking_metrics(exact, approx, k))
        if targets is not None:
            out["target_in_top_k"] = float(np.mean([t in a for t, a in zip(targets, approx, strict=True)]))
        return out

    if targets is not None:
        rows.append(row(1, "exact", None, exact, {"vectors_per_page": float(np.mean([len(p) for p in stored]))}))
    for factor in pool_factors:
        started = time.process_time()
        pooled = [pool_vectors(pooler, p, factor) for p in stored]
        extra = {
            "vectors_per_page": float(np.mean([len(p) for p in pooled])),
            "pool_cpu_ms_per_page": 1000 * (time.process_time() - started) / len(pages),
        }
        index = LocalIndex(pages_table(pooled))
        first_phase = [index.hamming_maxsim(q) for q in queries]
        pooled_float = [index.float_maxsim(q) for q in queries]
        rows.append(row(factor, "float", None, [top_indexes(f, k) for f in pooled_float], extra))
        rows.append(row(factor, "binary", None, [top_indexes(f, k) for f in first_phase], extra))
        for rerank in counts:
            approx = [np.array([h.page_index for h in index.search(q, k, "two_phase", rerank)]) for q in queries]
            rows.append(row(factor, "two_phase", rerank, approx, extra))
            whatif = []
            for first, scores in zip(first_phase, pooled_float, strict=True):
                candidates = top_indexes(first, max(rerank, k))
                whatif.append(candidates[top_indexes(scores[candidates], k)])
            rows.append(row(factor, "hamming_then_float", rerank, whatif, extra))
    return {"pages": len(pages), "queries": len(queries), "k": k, "rows": rows}


def tiny_model_set(max_pages: int, sample_dir: Path, shared_dir: Path | None, model: str = "tiny"):
    """Real rendered pages (sample corpus, then the shared corpus) and the sample queries through the test model."""
    from PIL import Image

    from pipelines.corpus import QUERIES_FILE_NAME, load_queries
    from pipelines.models import registry
    from pipelines.models.encoder import MultiVectorEncoder
    from pipelines.stages.rasterize import RasterizeStage

    stage = RasterizeStage(max_pixels=registry.get_spec(model).max_pixels, extract_text=False, thumbnail_px=0)
    rows = []
    for path in _pdf_paths(sample_dir, shared_dir):
        if len(rows) >= max_pages:
            break
        rows += [r for r in stage.rasterize_document(path.as_uri()) if r.get("error_type") is None]
    images = []
    for row in rows[:max_pages]:
        with Image.open(io.BytesIO(row["image"])) as image:
            # Icon-sized test pages are below Qwen2-VL's 28x28 minimum; the embed stage would reject them too.
            if min(image.size) >= 28:
                images.append(image.convert("RGB"))
    encoder = MultiVectorEncoder(model)
    # Stored as the index stores them (float16), exactly what the embed stage writes.
    pages = [v.astype("<f2").astype(np.float32) for v in encoder.embed_images(images, micro_batch_size=4)]
    queries = [q.query for q in load_queries(sample_dir / QUERIES_FILE_NAME)]
    query_vectors = encoder.embed_queries(queries)
    info = {"pages_embedded": len(pages), "pages_skipped": len(rows[:max_pages]) - len(pages), "queries": len(queries)}
    return pages, query_vectors, info


def bench_fidelity(
    size: int = 150,
    n_queries: int = 100,
    real: bool = True,
    sample_dir: Path | None = None,
    shared_dir: Path | None = SHARED_CORPUS,
    vectors_per_page: tuple[int, int] = (731, 779),
    pool_factors: tuple[int, ...] = (1, 2, 3, 4),
    rerank_counts: tuple[int, ...] = (10, 20, 50, 100, 200),
    seed: int = 0,
) -> dict:
    """Recall@10 / nDCG@10 of the deployed rankings against exact unpooled float MaxSim, on two vector sets."""
    from pipelines.corpus import generate_sample_corpus

    sets = {}
    generator = ClusteredVectors(seed)
    pages = generator.pages(size, vectors_per_page)
    targets = [int(t) for t in generator.rng.integers(0, size, n_queries)]
    queries = [generator.query(t) for t in targets]
    sets["synthetic"] = {
        "description": f"synthetic clustered set, {vectors_per_page[0]}-{vectors_per_page[1]} raw vectors per page "
        f"(the ColQwen2.5 range: 16:9 slide to US Letter), {n_queries} queries of 20 tokens. {CLUSTERED_RECIPE}",
        "statistics": vector_statistics(pages),
        **fidelity_of(pages, queries, pool_factors, rerank_counts, targets=targets),
    }
    if real:
        with tempfile.TemporaryDirectory(prefix="bench-sample-") as tmp:
            if sample_dir is None:
                sample_dir = Path(tmp)
                generate_sample_corpus(sample_dir)
            real_pages, real_queries, info = tiny_model_set(size, sample_dir, shared_dir)
        sets["tiny_real_pages"] = {
            "description": (
                "TEST MODEL 'tiny' (random weights) over real rendered pages: the sample corpus then the shared "
                f"py-pdf corpus at tiny's pixel budget ({info['pages_embedded']} pages, about 263 raw vectors each), "
                f"and the {info['queries']} sample-corpus queries encoded by the same model. Its 'exact top-10' is "
                "arbitrary (random weights) but real: it is what exact MaxSim over these vectors returns."
            ),
            "statistics": vector_statistics(real_pages),
            **info,
            **fidelity_of(real_pages, real_queries, pool_factors, rerank_counts),
        }
    return {
        "params": {
            "k": TOP_K,
            "pool_factors": list(pool_factors),
            "rerank_counts": list(rerank_counts),
            "synthetic_pages": size,
            "synthetic_queries": n_queries,
            "seed": seed,
        },
        "results": {"sets": sets},
        "checks": [],
    }


# ----------------------------------------------------------------------------------------------------------------
# 4. search
# ----------------------------------------------------------------------------------------------------------------


def synthetic_index(
    n_pages: int, vectors: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(embedding float16 (V, 128), binary uint8 (V, 16), offsets)`` of unit Gaussian page vectors, built in blocks.

    Isotropic Gaussian is enough for speed (the work does not depend on the values) and keeps 100k pages cheap.
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(vectors[0], vectors[1] + 1, size=n_pages)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    embedding = np.empty((total, schema.EMBEDDING_DIM), dtype="<f2")
    bits = np.empty((total, schema.BINARY_BYTES), dtype=np.uint8)
    step = 1 << 19
    for start in range(0, total, step):
        stop = min(start + step, total)
        block = unit_rows(rng.standard_normal((stop - start, schema.EMBEDDING_DIM), dtype=np.float32))
        embedding[start:stop] = block
        bits[start:stop] = binarize(embedding[start:stop].astype(np.float32))
    return embedding, bits, offsets


def _smv_scores(score_multi_vector, queries, embedding, offsets, chunk_pages, cached=None) -> tuple[np.ndarray, float]:
    """colpali-engine's ``score_multi_vector`` over every page, ``chunk_pages`` pages per call (memory-bounded).

    Returns ``(scores (n_queries, n_pages), seconds spent inside score_multi_vector)``. Converting the stored float16
    rows to its float32 tensor input is not timed (a user of it would hold those tensors already).
    """
    import torch

    n_pages = len(offsets) - 1
    qs = [torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)) for q in queries]
    parts, seconds = [], 0.0
    for first in range(0, n_pages, chunk_pages):
        last = min(first + chunk_pages, n_pages)
        if cached is not None:
            ps = cached[first:last]
        else:
            ps = [
                torch.from_numpy(embedding[offsets[i] : offsets[i + 1]].astype(np.float32)) for i in range(first, last)
            ]
        started = time.perf_counter()
        parts.append(score_multi_vector(qs, ps, device="cpu").numpy())
        seconds += time.perf_counter() - started
        del ps
    return np.concatenate(parts, axis=1), seconds


def bench_search(
    sizes: tuple[int, ...] = (1000,),
    repeats: int = 3,
    vectors: tuple[int, int] = (200, 256),
    query_tokens: int = 20,
    rerank_count: int = 100,
    smv_chunk_pages: int = 10000,
    per_query_baseline_max_pages: int = 10000,
    n_queries: int | None = None,
    seed: int = 0,
) -> dict:
    """Queries/s and memory of LocalIndex (two_phase, float) vs colpali-engine's score_multi_vector, same data."""
    import torch
    from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor

    from pipelines.search import LocalIndex

    score_multi_vector = BaseVisualRetrieverProcessor.score_multi_vector
    runs = []
    for n_pages in sizes:
        started = time.perf_counter()
        embedding, bits, offsets = synthetic_index(n_pages, vectors, seed)
        generate_seconds = time.perf_counter() - started
        rng = np.random.default_rng(seed + 1)
        # Fewer queries as the index grows: 16 at 1k pages, 10 at 10k, 4 at 100k.
        count = n_queries or min(16, max(4, 100_000 // n_pages))
        queries = []
        for target in rng.integers(0, n_pages, count):
            page = embedding[offsets[target] : offsets[target + 1]].astype(np.float32)
            # Half the tokens are noisy copies of the target page's vectors, so rankings have a real top.
            near = page[rng.integers(0, len(page), query_tokens // 2)] + rng.normal(
                scale=0.8, size=(query_tokens // 2, 128)
            )
            far = rng.standard_normal((query_tokens - query_tokens // 2, 128))
            queries.append(unit_rows(np.concatenate([near, far])))
        table = pa.table(
            {
                "n_vectors": pa.array(np.diff(offsets).astype(np.int32)),
                "embedding": binary_column(embedding, offsets),
                "binary": binary_column(bits, offsets),
            }
        )
        started = time.perf_counter()
        with peak_memory() as build_memory:
            index = LocalIndex(table)
        build_seconds = time.perf_counter() - started
        del table, embedding, bits
        # Hold score_multi_vector's float32 input in memory when it is small; else convert chunk by chunk.
        cached = None
        float32_bytes = int(index.offsets[-1]) * schema.EMBEDDING_DIM * 4
        if float32_bytes <= 4 * 2**30:
            cached = [
                torch.from_numpy(index.embedding[index.offsets[i] : index.offsets[i + 1]].astype(np.float32))
                for i in range(len(index))
            ]
        methods = ["two_phase", "float", "smv_batched"]
        if n_pages <= per_query_baseline_max_pages:
            methods.append("smv_per_query")
        seconds: dict[str, list[float]] = {m: [] for m in methods}
        peaks: dict[str, int | None] = {m: None for m in methods}
        tops: dict[str, list] = {}
        smv_scores = None
        # Above 10k pages a single repeat (each takes minutes); the run records how many it made.
        size_repeats = repeats if n_pages <= 10_000 else 1
        for repeat in range(size_repeats):
            order = methods[repeat % len(methods) :] + methods[: repeat % len(methods)]
            for method in order:
                with peak_memory() as memory:
                    if method in ("two_phase", "float"):
                        started = time.perf_counter()
                        hits = [index.search(q, TOP_K, method, rerank_count) for q in queries]
                        elapsed = time.perf_counter() - started
                        tops[method] = [[h.page_index for h in hit] for hit in hits]
                    elif method == "smv_batched":
                        scores, elapsed = _smv_scores(
                            score_multi_vector, queries, index.embedding, index.offsets, smv_chunk_pages, cached
                        )
                        tops[method] = [top_indexes(row, TOP_K).tolist() for row in scores]
                        smv_scores = scores
                    else:
                        elapsed = sum(
                            _smv_scores(
                                score_multi_vector, [q], index.embedding, index.offsets, smv_chunk_pages, cached
                            )[1]
                            for q in queries
                        )
                seconds[method].append(elapsed)
                peaks[method] = max(peaks[method] or 0, memory["peak_bytes"] or 0)
        float_scores = np.stack([index.float_maxsim(q) for q in queries])
        equal = sum(a == b for a, b in zip(tops["float"], tops["smv_batched"], strict=True))
        resident = {
            "two_phase": 2 * index.binary.nbytes,  # packed bits plus their word-column copy
            "float": index.embedding.nbytes,
            "smv_batched": float32_bytes,
            "smv_per_query": float32_bytes,
        }
        method_rows = {}
        for method in methods:
            best = min(seconds[method])
            method_rows[method] = {
                "seconds_per_query": best / count,
                "queries_per_second": count / best,
                "seconds_per_repeat": seconds[method],
                "resident_bytes": resident[method],
                "transient_peak_bytes": peaks[method],
            }
        baseline = min(seconds["smv_batched"])
        for method in methods:
            method_rows[method]["speedup_vs_smv_batched"] = baseline / min(seconds[method])
            if "smv_per_query" in methods:
                method_rows[method]["speedup_vs_smv_per_query"] = min(seconds["smv_per_query"]) / min(seconds[method])
        runs.append(
            {
                "pages": n_pages,
                "vectors": int(index.offsets[-1]),
                "queries": count,
                "repeats": size_repeats,
                "generate_seconds": generate_seconds,
                "build_seconds": build_seconds,
                "build_peak_bytes": build_memory["peak_bytes"],
                "smv_input": "held as float32 tensors"
                if cached is not None
                else f"converted {smv_chunk_pages} pages at a time",
                "methods": method_rows,
                "float_top10_equal_smv": equal,
                "float_max_abs_score_diff_vs_smv": float(np.abs(float_scores - smv_scores).max()),
                "two_phase_top10_overlap_with_float": float(
                    np.mean(
                        [len(set(a) & set(b)) / TOP_K for a, b in zip(tops["two_phase"], tops["float"], strict=True)]
                    )
                ),
            }
        )
        del index, cached, tops
    at_10k = next((r for r in runs if r["pages"] == 10_000), None)
    note = "" if at_10k else "not run at 10,000 pages"
    speedups = at_10k["methods"]["two_phase"] if at_10k else {}
    checks = [
        check(
            "search_speed_10k_per_query",
            "at 10k pages, LocalIndex two_phase >= 3x the queries/s of score_multi_vector, both one query per call",
            speedups.get("speedup_vs_smv_per_query"),
            3.0,
            note,
        ),
        check(
            "search_speed_10k_batched",
            "at 10k pages, LocalIndex two_phase (one query per call) >= 3x the queries/s of score_multi_vector "
            "given all queries in one call",
            speedups.get("speedup_vs_smv_batched"),
            3.0,
            note,
        ),
    ]
    for run in runs:
        checks.append(
            check(
                f"search_float_equals_smv_{run['pages']}",
                f"at {run['pages']:,} pages the float profile returns the same top-10 as score_multi_vector "
                "(share of queries)",
                run["float_top10_equal_smv"] / run["queries"],
                1.0,
            )
        )
    return {
        "params": {
            "sizes": list(sizes),
            "repeats": repeats,
            "vectors_per_page": list(vectors),
            "vector_shape": f"{vectors[0]}-{vectors[1]} x 128 per page (ColQwen2.5 pages, 731-779 vectors, pooled 3x)",
            "query_tokens": query_tokens,
            "rerank_count": rerank_count,
            "top_k": TOP_K,
            "smv_chunk_pages": smv_chunk_pages,
            "torch_threads": torch.get_num_threads(),
            "first_phase_threads": len(os.sched_getaffinity(0)),
            "data": (
                "isotropic unit Gaussian vectors (float16 as stored); queries: half noisy copies of a target page's "
                "vectors, half random"
            ),
        },
        "results": {"runs": runs},
        "checks": checks,
    }


# ----------------------------------------------------------------------------------------------------------------
# 5. feed
# ----------------------------------------------------------------------------------------------------------------


def bench_feed(size: int = 50, vector_counts: tuple[int, ...] = (256, 768, 1030)) -> dict:
    """jobs.benchmark_feed: bytes and CPU time per page, compact hex form vs pyvespa's list form."""
    from jobs import benchmark_feed

    rows = benchmark_feed.run(size, list(vector_counts))
    return {
        "params": {"pages": size, "vector_counts": list(vector_counts), "repeats": 3},
        "results": {"rows": rows},
        "checks": [],
    }


# ----------------------------------------------------------------------------------------------------------------
# 6. pooling
# ----------------------------------------------------------------------------------------------------------------

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
        stage_vectors = [schema.decode_embedding(b) for b in outputs["stage"].column("embedding").to_pylist()]
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


# ----------------------------------------------------------------------------------------------------------------
# 7. pipeline
# ----------------------------------------------------------------------------------------------------------------


def bench_pipeline(source: Path | None = None, model: str = "tiny", cpus: tuple[int, ...] = (1, 2)) -> dict:
    """Whole-job throughput through ``jobs.benchmark_pipeline.run_benchmark`` (owned elsewhere), if it exists.

    Records ``status`` ``ok``, ``missing`` (no ``run_benchmark`` yet) or ``failed`` (with the error) instead of
    raising, so ``all`` can go on; the renderer turns ``data`` into ratios against the local 1-CPU run.
    """
    from pipelines.corpus import generate_sample_corpus

    status, error, data = "ok", None, None
    try:
        module = importlib.import_module("jobs.benchmark_pipeline")
        run_benchmark = getattr(module, "run_benchmark", None)
    except Exception as exc:
        run_benchmark, status, error = None, "failed", f"import: {type(exc).__name__}: {exc}"
    if run_benchmark is None and status == "ok":
        status, error = "missing", "jobs.benchmark_pipeline has no run_benchmark(source, model, cpus) yet"
    if run_benchmark is not None:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
            corpus = source
            if corpus is None:
                corpus = Path(tmp) / "sample"
                generate_sample_corpus(corpus)
            try:
                data = run_benchmark(source=str(corpus), model=model, cpus=list(cpus))
            except Exception as exc:
                status, error = "failed", "".join(traceback.format_exception(exc))[-3000:]
    return {
        "params": {
            "source": str(source) if source else "the sample corpus (pipelines.corpus)",
            "model": model,
            "cpus": list(cpus),
        },
        "results": {"status": status, "error": error, "data": data},
        "checks": [],
    }


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def run_one(name: str, sizes: list[int], repeats: int) -> dict:
    """Run benchmark ``name`` and wrap its output with the machine, load and timing it ran under."""
    load_start, started = os.getloadavg(), time.perf_counter()
    if name == "rasterize":
        body = bench_rasterize(size=sizes[0], repeats=repeats)
    elif name == "index_size":
        body = bench_index_size(size=sizes[0])
    elif name == "fidelity":
        body = bench_fidelity(size=sizes[0])
    elif name == "search":
        body = bench_search(sizes=tuple(sizes), repeats=repeats)
    elif name == "feed":
        body = bench_feed(size=sizes[0])
    elif name == "pooling":
        body = bench_pooling(size=sizes[0], repeats=repeats)
    elif name == "pipeline":
        body = bench_pipeline()
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
        prog="python -m jobs.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
        result["command"] = "python -m jobs.benchmark " + shlex.join(sys.argv[1:] if argv is None else argv)
        path = write_result(out, name, result)
        print(f"[benchmark] {name}: wrote {path}", file=sys.stderr, flush=True)
    if not args.no_render:
        from jobs import report

        print(f"[benchmark] report: {report.render(out)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
