"""Similarity maps: which parts of a page each query token matched, drawn from the stored vectors.

**Geometry.** At embed time every page records a :class:`PatchLayout` (columns ``patch_rows``,
``patch_cols``, ``patch_cells``): a grid of ``rows x cols`` cells laid over the whole page image, and for
each raw vector the cell it came from, or -1 (prompt tokens; the global tile of a split-image model).
:func:`patch_layouts` reads it off the processor's own output, per model family:

* dynamic resolution (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, jina-embeddings-v4): the processor's
  ``image_grid_thw`` in patches, divided by the ``merge_size`` (2x2 patches become one vector), so every
  page has its own grid; the image tokens come out in raster order of that merged grid;
* split image (Idefics3 / ColSmol, ModernVBERT): the ``<row_r_col_c>`` tokens name the local tiles,
  each ``image_seq_len`` (8x8) vectors; colpali-engine's ``get_local_image_mask`` drops the global tile
  and its ``rearrange_image_embeddings`` puts the tiles' vectors where they lie on the page (applied to
  the token positions themselves); an image too small to be split is its one tile;
* fixed grid (PaliGemma / ColPali): a square grid of image tokens over the squashed page.

**Pooling.** The pool stage stores, per raw vector, the row of the pooled vectors it went into
(``pool_groups`` for ``embedding``, ``rerank_pool_groups`` for ``rerank_embedding``; the pooler's own
cluster assignment). A pooled vector's similarity is shown on every cell of its cluster.

**Similarities.** ``query token x stored vector``: over the float re-ranking vectors for the profiles that
read them (:data:`pipelines.search.FLOAT_PROFILES`), else over the unpacked sign bits of the candidate
vectors (what ``two_phase_unpacked`` scores; ``binary`` shares it). Locally from the in-memory index;
through Vespa from the ``similarity_map`` / ``similarity_map_unpacked`` rank profiles, whose summary
feature ``quantized`` is those similarities min-max scaled over the page to -1..1 and cast to int8, as in
Vespa's ColPali sample application (one extra query restricted to the hits' page ids).

**Images.** The index stores no page images (only thumbnails), so each hit's page is rendered again from
its ``source_uri`` with the renderer and pixel size recorded for it (the image the model saw), read with the
search job's own credentials (``source.storage_options``, else ``storage_options``; never the index's stored,
redacted copy) and only when it is within the index's ``rasterize.max_file_bytes``; when the source cannot be
read the stored thumbnail stands in, the log says why, and the JSON says so.

**Output** (:class:`SimilarityMapWriter`): per hit ``q<query>-r<rank>-<page_id>.png`` (a panel with the
combined map, the max over query tokens, then one panel per query token) and a ``.json`` next to it with
the token labels, the grid, each token's maximum and hottest cell, and the maps themselves.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.search import LocalIndex, PageHit, Searcher
    from pipelines.vespa.client import VespaEndpoint

logger = logging.getLogger(__name__)

#: How the int32 per-vector arrays (``patch_cells``, ``pool_groups``) are stored.
INT32 = "<i4"
#: The columns a page's similarity map needs from the index, besides its vectors.
LAYOUT_COLUMNS = ["patch_rows", "patch_cols", "patch_cells", "pool_groups", "rerank_pool_groups"]
#: ... and to draw it (the page image is rendered again as the rasterize stage rendered it).
PAGE_COLUMNS = [
    "page_id", "source_uri", "page_number", "image_width", "image_height", "renderer", "thumbnail", "n_rerank_vectors"
]  # fmt: skip
#: What the maps are computed over: ``float`` re-ranking vectors, or the ``unpacked`` candidate bits.
KINDS = ("float", "unpacked")
#: The Vespa summary feature with the quantized similarities (the sample application's name).
QUANTIZED_FEATURE = "quantized"
_TILE_TOKEN = re.compile(r"<row_(\d+)_col_(\d+)>")
#: Source bytes :class:`PageRenderer` keeps between hits (the most recently used files; a larger file is not kept).
SOURCE_CACHE_BYTES = 256 * 2**20


def encode_ints(values: np.ndarray) -> bytes:
    return np.asarray(values).astype(INT32).tobytes()


def decode_ints(buffer: bytes | None) -> np.ndarray | None:
    return None if buffer is None else np.frombuffer(buffer, dtype=INT32).astype(np.int32)


# ---------------------------------------------------------------------------------------------------------------------
# Geometry: where the vectors lie on the page
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PatchLayout:
    """A page's patch grid and where each raw vector lies on it.

    ``cells[i]`` is the row-major cell (``row * cols + col``) raw vector ``i`` was computed from, or -1 for
    a vector with no place on the page. The grid covers the whole page image; no two vectors share a cell.
    Raises ``ValueError`` on a layout that breaks this.
    """

    rows: int
    cols: int
    cells: np.ndarray

    def __post_init__(self) -> None:
        cells = np.asarray(self.cells, dtype=np.int32)
        object.__setattr__(self, "cells", cells)
        placed = cells[cells >= 0]
        if self.rows < 1 or self.cols < 1 or (cells < -1).any() or (placed >= self.rows * self.cols).any():
            msg = f"patch layout {self.rows}x{self.cols} has cells outside the grid"
            raise ValueError(msg)
        if len(np.unique(placed)) != len(placed):
            msg = f"patch layout {self.rows}x{self.cols} places two vectors on one cell"
            raise ValueError(msg)

    @property
    def n_cells(self) -> int:
        return self.rows * self.cols

    def columns(self) -> dict[str, Any]:
        """The page-record columns that store this layout."""
        return {"patch_rows": self.rows, "patch_cols": self.cols, "patch_cells": encode_ints(self.cells)}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PatchLayout | None:
        """The layout of an index page row; ``None`` for pages indexed without one."""
        if row.get("patch_cells") is None or not row.get("patch_rows") or not row.get("patch_cols"):
            return None
        return cls(int(row["patch_rows"]), int(row["patch_cols"]), decode_ints(row["patch_cells"]))

    def cell_vectors(self, groups: np.ndarray | None = None) -> np.ndarray:
        """``(rows * cols,)``: the stored vector whose similarity each cell shows, -1 where none lies.

        That is the raw vector on the cell (``groups`` None: the stored vectors are the raw ones), or the
        pooled vector it went into (``groups[i]``: the pooled row of raw vector ``i``).
        """
        if groups is not None and len(groups) != len(self.cells):
            msg = f"pooling groups cover {len(groups)} vectors but the layout {len(self.cells)}"
            raise ValueError(msg)
        out = np.full(self.n_cells, -1, dtype=np.int64)
        raw = np.flatnonzero(self.cells >= 0)
        out[self.cells[raw]] = raw if groups is None else groups[raw]
        return out

    def spread(self, similarities: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """``(tokens, rows, cols)`` maps from ``(tokens, stored vectors)`` similarities (NaN: no vector there)."""
        similarities = np.asarray(similarities, dtype=np.float32)
        expected = len(self.cells) if groups is None else int(groups.max()) + 1
        if similarities.shape[1] != expected:
            msg = (
                f"{similarities.shape[1]} stored vectors but the layout and pooling groups describe {expected}; "
                "the index's vectors and layout disagree"
            )
            raise ValueError(msg)
        vectors = self.cell_vectors(groups)
        covered = vectors >= 0
        maps = np.full((similarities.shape[0], self.n_cells), np.nan, dtype=np.float32)
        maps[:, covered] = similarities[:, vectors[covered]]
        return maps.reshape(-1, self.rows, self.cols)


def patch_layouts(processor, inputs) -> list[PatchLayout | None]:
    """The :class:`PatchLayout` of every image in a processed batch, over its non-padding rows (the rows
    :func:`pipelines.models.registry.embeddings_to_rows` keeps), or ``None`` where the family's layout is
    unknown (the page then has no similarity maps; nothing else changes)."""
    import torch

    mask = inputs["attention_mask"].bool()
    n = mask.shape[0]
    try:
        if "image_grid_thw" in inputs:
            return _merged_grid_layouts(processor, inputs, mask)
        if hasattr(processor, "get_local_image_mask"):
            return _tile_layouts(processor, inputs, mask, torch)
        image = _image_mask(processor, inputs)
        return [_square_layout(image[i][mask[i]].numpy()) for i in range(n)] if image is not None else [None] * n
    except (ValueError, KeyError, AttributeError) as exc:  # a processor we do not know how to read
        logger.warning("no similarity-map layout for %s: %s", type(processor).__name__, exc)
        return [None] * n


class LayoutCache:
    """:class:`PatchLayout` by page-image size for one processor.

    A family's layout depends on the image size only (the resize, the grid, the tiles), so it is read off
    the processor's output for a blank image of that size, once per size (pages of a corpus share a few).
    """

    def __init__(self, processor):
        self.processor = processor
        self._layouts: dict[tuple[int, int], PatchLayout | None] = {}
        self._warned = False

    def layout(self, size: tuple[int, int], n_vectors: int) -> PatchLayout | None:
        """The layout of a page image of ``size`` embedded into ``n_vectors`` vectors (``None`` if unknown or if
        it does not describe ``n_vectors`` vectors)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._layouts:
            try:
                inputs = self.processor.process_images([Image.new("RGB", size, "white")])
            except (AttributeError, TypeError, ValueError) as exc:  # maps are optional: never fail the embedding
                logger.warning("no patch layout for %s pages: %s", size, exc)
                inputs = None
            self._layouts[size] = patch_layouts(self.processor, inputs)[0] if inputs is not None else None
        layout = self._layouts[size]
        if layout is not None and len(layout.cells) != n_vectors:
            if not self._warned:  # once: every page of this model would say the same
                name = type(self.processor).__name__
                logger.warning(
                    "%s: the patch layout of a %s page has %d vectors, the model gave %d; no similarity maps",
                    name, size, len(layout.cells), n_vectors,
                )  # fmt: skip
                self._warned = True
            return None
        return layout


def _image_mask(processor, inputs):
    """Image-token mask: colpali-engine's ``get_image_mask`` where the processor has it."""
    if hasattr(processor, "get_image_mask"):
        return processor.get_image_mask(inputs).cpu()
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None and getattr(processor, "image_token", None):
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return None if token_id is None else (inputs["input_ids"] == token_id).cpu()


def _merged_grid_layouts(processor, inputs, mask) -> list[PatchLayout]:
    """Qwen-VL family: ``image_grid_thw`` patches per image, ``merge_size`` x ``merge_size`` per vector."""
    merge = int(getattr(processor.image_processor, "merge_size", 2))
    image = _image_mask(processor, inputs)
    layouts = []
    for i, (frames, height, width) in enumerate(inputs["image_grid_thw"].tolist()):
        rows, cols = height // merge, width // merge
        positions = np.flatnonzero(image[i][mask[i]].numpy())
        if frames != 1 or len(positions) != rows * cols:
            msg = f"{len(positions)} image tokens for a {frames}x{rows}x{cols} merged grid"
            raise ValueError(msg)
        cells = np.full(int(mask[i].sum()), -1, dtype=np.int32)
        cells[positions] = np.arange(rows * cols)  # the merger emits the merged grid in raster order
        layouts.append(PatchLayout(rows, cols, cells))
    return layouts


def _tile_layouts(processor, inputs, mask, torch) -> list[PatchLayout]:
    """Idefics3-style split images: local tiles of ``image_seq_len`` vectors each, the global tile excluded."""
    local = processor.get_local_image_mask(inputs).cpu()
    side = math.isqrt(int(processor.image_seq_len))
    layouts = []
    for i in range(mask.shape[0]):
        ids = inputs["input_ids"][i][mask[i]]
        tiles = [m.groups() for m in map(_TILE_TOKEN.fullmatch, processor.tokenizer.convert_ids_to_tokens(ids)) if m]
        tile_rows = max((int(r) for r, _ in tiles), default=1)
        tile_cols = max((int(c) for _, c in tiles), default=1)
        local_row = local[i][mask[i]]
        rows, cols = tile_rows * side, tile_cols * side
        if int(local_row.sum()) != rows * cols:
            msg = f"{int(local_row.sum())} local image tokens for {tile_rows}x{tile_cols} tiles of {side}x{side}"
            raise ValueError(msg)
        # colpali-engine's own tile-to-page rearrangement, applied to the token positions: (x, y, 1) positions.
        positions = torch.arange(len(local_row), dtype=torch.float64)[:, None]
        grid = processor.rearrange_image_embeddings(positions, local_row, (cols, rows))[..., 0].T  # (rows, cols)
        cells = np.full(len(local_row), -1, dtype=np.int32)
        cells[grid.reshape(-1).long().numpy()] = np.arange(rows * cols)
        layouts.append(PatchLayout(rows, cols, cells))
    return layouts


def _square_layout(image_row: np.ndarray) -> PatchLayout:
    """A fixed square grid of image tokens in raster order (PaliGemma squashes every page to 448x448)."""
    positions = np.flatnonzero(image_row)
    side = math.isqrt(len(positions))
    if side == 0 or side * side != len(positions):
        msg = f"{len(positions)} image tokens are not a square grid"
        raise ValueError(msg)
    cells = np.full(len(image_row), -1, dtype=np.int32)
    cells[positions] = np.arange(len(positions))
    return PatchLayout(side, side, cells)


def query_token_labels(processor, queries: Sequence[str]) -> list[list[str]]:
    """Each query's tokens as text, one per query vector (the non-padding rows of ``process_queries``)."""
    batch = processor.process_queries(list(queries))
    mask = batch["attention_mask"].bool()
    tokenizer = getattr(processor, "tokenizer", processor)
    return [[tokenizer.decode([int(t)]) for t in batch["input_ids"][i][mask[i]]] for i in range(len(queries))]


# ---------------------------------------------------------------------------------------------------------------------
# Similarities: query token x stored vector, locally or from Vespa
# ---------------------------------------------------------------------------------------------------------------------


def map_kind(profile: str) -> str:
    """``float`` for the profiles that rank with the float re-ranking vectors, else ``unpacked``."""
    from pipelines.search import FLOAT_PROFILES

    return "float" if profile in FLOAT_PROFILES else "unpacked"


def local_similarities(local: LocalIndex, page_index: int, query: np.ndarray, kind: str) -> np.ndarray:
    """``(tokens, stored vectors)`` similarities of one page of a local index."""
    from pipelines.stages.compress import unpack_bits

    query = np.asarray(query, dtype=np.float32)
    if kind == "float":
        if local.embedding is None:
            msg = "the index was loaded without its float vectors; similarity maps need them for this profile"
            raise ValueError(msg)
        offsets = local.float_offsets
        vectors = local.embedding[offsets[page_index] : offsets[page_index + 1]].astype(np.float32)
    else:
        vectors = unpack_bits(local.binary[local.offsets[page_index] : local.offsets[page_index + 1]])
    return query @ vectors.T


def pooling_groups(row: Mapping[str, Any], kind: str, separate_rerank: bool) -> np.ndarray | None:
    """The pooled row of each raw vector in the vectors a map of ``kind`` reads (``None``: the raw vectors)."""
    if kind == "float" and separate_rerank:
        return decode_ints(row.get("rerank_pool_groups"))
    return decode_ints(row.get("pool_groups"))


def similarity_query_body(
    vectors: np.ndarray, page_ids: Sequence[str], kind: str, schema: str, timeout: str = "10s"
) -> dict[str, Any]:
    """The ``/search/`` body asking Vespa for the quantized similarities of ``page_ids`` (one query)."""
    from pipelines.vespa.app import SIMILARITY_MAP_PROFILES

    ids = ", ".join(json.dumps(page_id) for page_id in page_ids)
    return {
        "yql": f"select page_id, summaryfeatures from {schema} where page_id in ({ids})",
        "ranking.profile": SIMILARITY_MAP_PROFILES[kind],
        "hits": len(page_ids),
        "timeout": timeout,
        "input.query(qt)": {str(i): row.tolist() for i, row in enumerate(np.asarray(vectors, dtype=np.float32))},
    }


def parse_similarities(response_json: Mapping[str, Any], n_tokens: int) -> dict[str, np.ndarray]:
    """``page_id -> (tokens, stored vectors)`` int8 similarities from a similarity-map answer.

    Reads the ``quantized`` summary feature in Vespa's tensor JSON (a list of ``{"address": {"querytoken",
    "patch"}, "value"}`` cells, or the short form keyed by address). Raises ``ValueError`` when a hit lacks it.
    """
    from pipelines.vespa.query import VespaQueryError

    root = response_json.get("root", {})
    if root.get("errors"):
        messages = "; ".join(f"{e.get('summary', '')}: {e.get('message', '')}" for e in root["errors"])
        raise VespaQueryError(messages)
    out = {}
    for child in root.get("children", []) or []:
        fields = child.get("fields", {})
        features = fields.get("summaryfeatures") or {}
        tensor = features.get(QUANTIZED_FEATURE, features.get(f"rankingExpression({QUANTIZED_FEATURE})"))
        if "page_id" not in fields or tensor is None:
            msg = f"Vespa hit {child.get('id')} has no summaryfeatures.{QUANTIZED_FEATURE} (is the schema deployed?)"
            raise ValueError(msg)
        cells = tensor.get("cells", tensor) if isinstance(tensor, dict) else tensor
        triples = [
            (int(c["address"]["querytoken"]), int(c["address"]["patch"]), float(c["value"]))
            for c in (cells if isinstance(cells, list) else [])
        ]
        values = np.full((n_tokens, 1 + max((p for _, p, _ in triples), default=-1)), np.nan, dtype=np.float32)
        for token, patch, value in triples:
            values[token, patch] = value
        out[fields["page_id"]] = values
    return out


def vespa_similarities(
    endpoint: VespaEndpoint, queries: Sequence[np.ndarray], page_ids: Sequence[Sequence[str]], kind: str
) -> list[dict[str, np.ndarray]]:
    """For each query, ``page_id -> (tokens, stored vectors)`` int8 similarities of its pages, from Vespa."""
    import asyncio

    from pipelines.search import SearchError
    from pipelines.vespa import query as vespa_query

    bodies = [
        similarity_query_body(vectors, ids, kind, endpoint.schema)
        for vectors, ids in zip(queries, page_ids, strict=True)
    ]
    try:
        answers = asyncio.run(vespa_query._search_all(endpoint, bodies, 30.0))
        return [parse_similarities(answer, len(q)) for answer, q in zip(answers, queries, strict=True)]
    except (vespa_query.VespaQueryError, ValueError) as exc:
        msg = f"Vespa at {endpoint.safe_url} (similarity maps): {exc}"
        raise SearchError(msg) from exc


# ---------------------------------------------------------------------------------------------------------------------
# Page images
# ---------------------------------------------------------------------------------------------------------------------


class PageRenderer:
    """Renders index pages again, as the rasterize stage did: same renderer, same pixel size.

    Sources are read with ``storage_options``, only when at most ``max_file_bytes`` (None: the rasterize stage's
    default ``rasterize.max_file_bytes``; the size is asked first, a larger file is never read), and kept for
    later hits up to ``cache_bytes`` in all (least recently used files go first); the pdfium worker (if needed) is
    started once and closed by :meth:`close`. Render failures fall back to the page's thumbnail (then to a blank
    page), with the reason logged.
    """

    def __init__(
        self,
        storage_options: Mapping[str, Any] | None = None,
        memory_limit_mb: int = 2048,
        timeout_s=120.0,
        max_file_bytes: int | None = None,
        cache_bytes: int = SOURCE_CACHE_BYTES,
    ):
        from pipelines.stages.rasterize import RasterizeStage

        self.storage_options = dict(storage_options or {})
        self.memory_limit = memory_limit_mb * 2**20 or None
        self.timeout_s = float(timeout_s)
        self.max_file_bytes = int(RasterizeStage.max_file_bytes if max_file_bytes is None else max_file_bytes)
        self.cache_bytes = int(cache_bytes)
        self._sources: OrderedDict[str, bytes] = OrderedDict()
        self._pdfium = None

    @property
    def cached_bytes(self) -> int:
        """Source bytes held now (at most ``cache_bytes``)."""
        return sum(len(data) for data in self._sources.values())

    def _source(self, uri: str) -> bytes:
        """The bytes of ``uri``, from the cache or read (raises :class:`~pipelines.io.FileTooLarge` over the limit)."""
        from pipelines import io

        if uri in self._sources:
            self._sources.move_to_end(uri)
            return self._sources[uri]
        data = io.read_bytes(uri, self.storage_options, max_bytes=self.max_file_bytes)
        if len(data) <= self.cache_bytes:
            self._sources[uri] = data
            while self.cached_bytes > self.cache_bytes:
                self._sources.popitem(last=False)
        return data

    def render(self, row: Mapping[str, Any]) -> tuple[Image.Image, str]:
        """``(image, how)``: ``how`` is ``rendered``, ``thumbnail`` or ``blank`` (source unreadable, no thumbnail)."""
        from pipelines.render import DocumentError

        size = (int(row["image_width"]), int(row["image_height"]))
        try:
            data = self._source(row["source_uri"])
            with tempfile.TemporaryDirectory(prefix="similarity-map-") as tmp:
                path = Path(tmp) / "doc.pdf"
                path.write_bytes(data)
                renderer = self._renderer(row.get("renderer"))
                info = renderer.open(path, self.timeout_s)
                number = int(row["page_number"])
                [image] = renderer.render(path, number, number, size, info.sizes[number - 1], self.timeout_s)
                if self._pdfium is not None:
                    self._pdfium.release()
            return image.convert("RGB"), "rendered"
        except (OSError, DocumentError, IndexError, ValueError) as exc:
            logger.warning(
                "page %s of %s not rendered (%s); drawing on its thumbnail",
                row.get("page_number"),
                row.get("source_uri"),
                exc,
            )
        if row.get("thumbnail"):
            import io as bytes_io

            return Image.open(bytes_io.BytesIO(row["thumbnail"])).convert("RGB").resize(size), "thumbnail"
        return Image.new("RGB", size, "white"), "blank"

    def _renderer(self, name: str | None):
        from pipelines.render import PDFIUM
        from pipelines.render.pdfium import PdfiumWorker
        from pipelines.render.poppler import PopplerRenderer

        if name != PDFIUM:
            return PopplerRenderer(self.memory_limit)
        if self._pdfium is None:
            self._pdfium = PdfiumWorker(self.memory_limit)
        return self._pdfium

    def close(self) -> None:
        if self._pdfium is not None:
            self._pdfium.close()
            self._pdfium = None


# ---------------------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------------------

_LABEL_PX = 22
_HEADER_PX = 44
_MAX_COLUMNS = 6


def combined_map(maps: np.ndarray) -> np.ndarray:
    """The max over query tokens of ``(tokens, rows, cols)`` maps (NaN where no vector lies)."""
    filled = np.where(np.isnan(maps), -np.inf, maps)
    combined = filled.max(axis=0)
    return np.where(np.isneginf(combined), np.nan, combined).astype(np.float32)


def hottest_cell(grid: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the highest value of a ``(rows, cols)`` map (the first in raster order on ties)."""
    flat = np.where(np.isnan(grid), -np.inf, grid).reshape(-1)
    return divmod(int(np.argmax(flat)), grid.shape[1])


def _overlay(page: Image.Image, grid: np.ndarray, value_range: tuple[float, float], colormap) -> Image.Image:
    """``page`` (in grey, so the colours are the map's) with ``grid`` drawn over it: colpali-engine's
    normalization and colour map, blended half-way.

    Cells are drawn as blocks (nearest-neighbour), not smoothed: a map has one value per patch.
    """
    import torch
    from colpali_engine.interpretability.similarity_map_utils import normalize_similarity_map

    values = normalize_similarity_map(torch.from_numpy(np.nan_to_num(grid, nan=value_range[0])), value_range)
    colours = (colormap(values.clamp(0, 1).numpy())[..., :3] * 255).astype(np.uint8)
    heat = Image.fromarray(colours).resize(page.size, Image.Resampling.NEAREST)
    page = ImageOps.grayscale(page).convert("RGB")
    blended = Image.blend(page, heat, 0.5)
    if np.isnan(grid).any():  # cells with no vector keep the page as it is
        hole = Image.fromarray((np.isnan(grid) * 255).astype(np.uint8)).resize(page.size, Image.Resampling.NEAREST)
        blended.paste(page, mask=hole)
    return blended


def draw_similarity_maps(
    image: Image.Image, maps: np.ndarray, labels: Sequence[str], header: str, panel_px: int = 320
) -> Image.Image:
    """One image: the combined map (max over tokens) then a panel per query token, each over the page.

    All panels share one colour scale, the query's min..max over this page (colpali-engine's
    ``normalize_per_query``), so a weak token looks weak.
    """
    import seaborn as sns

    colormap = sns.color_palette("mako", as_cmap=True)  # colpali-engine's plot_similarity_map colour map
    scale = panel_px / max(image.size)
    page = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    finite = maps[~np.isnan(maps)]
    value_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    panels = [("combined (max over tokens)", combined_map(maps))]
    panels += [
        (f"#{i} {label.strip() or repr(label)}", grid)
        for i, (label, grid) in enumerate(zip(labels, maps, strict=True))
    ]
    columns = min(_MAX_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    cell_w, cell_h = page.width + 8, page.height + _LABEL_PX + 8
    canvas = Image.new("RGB", (columns * cell_w, _HEADER_PX + rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    draw.multiline_text((6, 4), header, fill="black", font=font)
    for n, (title, grid) in enumerate(panels):
        x, y = (n % columns) * cell_w + 4, _HEADER_PX + (n // columns) * cell_h
        peak = np.nanmax(grid) if np.isfinite(grid).any() else float("nan")
        draw.text((x, y + 3), f"{title}  max {peak:.3g}"[:60], fill="black", font=font)
        canvas.paste(_overlay(page, grid, value_range, colormap), (x, y + _LABEL_PX))
    return canvas


# ---------------------------------------------------------------------------------------------------------------------
# Writing maps for ranked hits
# ---------------------------------------------------------------------------------------------------------------------


class SimilarityMapWriter:
    """Writes a similarity-map PNG and JSON for every hit a :class:`~pipelines.search.Searcher` returned.

    ``pages`` supplies each page's layout, size, renderer and thumbnail: the searcher's local index, or
    for Vespa hits the index's pages table (read here, layout columns only). ``kind`` picks the
    vectors (:data:`KINDS`; default: :func:`map_kind` of the searcher's profile). Raises ``ValueError``
    when the index has no layout for a hit (indexed before similarity maps; re-index to get them).
    """

    def __init__(
        self,
        searcher: Searcher,
        out_dir: str | Path,
        pages: pa.Table | None = None,
        kind: str | None = None,
        renderer: PageRenderer | None = None,
        panel_px: int = 320,
    ):
        self.searcher = searcher
        self.out_dir = Path(out_dir)
        self.kind = kind or map_kind(searcher.profile)
        if self.kind not in KINDS:
            msg = f"similarity map vectors must be one of {KINDS}, got {self.kind!r}"
            raise ValueError(msg)
        if searcher.local is None and pages is None:
            msg = "similarity maps of Vespa hits need the index's pages table (the page layouts); set index=<path>"
            raise ConfigError(msg)
        self.pages = pages
        self.renderer = renderer or PageRenderer()
        self.panel_px = int(panel_px)

    @classmethod
    def from_config(cls, cfg, searcher: Searcher) -> SimilarityMapWriter:
        """The writer the search job's config asks for (``explain_dir``, ``explain_panel_px``), rendering pages with
        the job's own source credentials (``source.storage_options``, else ``storage_options``: an index stores its
        source's options redacted) and the index's renderer limits (``rasterize.memory_limit_mb``, ``timeout_s``,
        ``max_file_bytes``). Raises :class:`ConfigError` when Vespa hits have no index to take their layouts from."""
        from omegaconf import OmegaConf

        from pipelines import index
        from pipelines.search import read_index_config
        from pipelines.stages.rasterize import RasterizeStage

        location = index.IndexLocation(str(cfg.index), OmegaConf.to_container(cfg.storage_options))
        index_cfg = read_index_config(location) or OmegaConf.create({})
        pages = None
        if searcher.local is None:
            if "model" not in index_cfg:
                msg = (
                    "similarity maps of Vespa hits need the index they were fed from (its page layouts): "
                    f"no index at {cfg.index!r}; set index=<path>"
                )
                raise ConfigError(msg)
            pages = location.read_pages(PAGE_COLUMNS + LAYOUT_COLUMNS)
        source = OmegaConf.select(cfg, "source.storage_options", default=None)
        limits = RasterizeStage  # its defaults, for an index whose config does not say
        renderer = PageRenderer(
            OmegaConf.to_container(source if source is not None else cfg.storage_options, resolve=True),
            int(OmegaConf.select(index_cfg, "rasterize.memory_limit_mb", default=limits.memory_limit_mb)),
            float(OmegaConf.select(index_cfg, "rasterize.timeout_s", default=limits.timeout_s)),
            int(OmegaConf.select(index_cfg, "rasterize.max_file_bytes", default=limits.max_file_bytes)),
        )
        return cls(
            searcher, cfg.explain_dir, pages, renderer=renderer, panel_px=int(cfg.get("explain_panel_px") or 320)
        )

    def write(
        self,
        queries: Sequence[str],
        vectors: Sequence[np.ndarray],
        hits: Sequence[Sequence[PageHit]],
        labels: Sequence[Sequence[str]] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Maps for every hit of every query; returns, per query and hit, the JSON record written.

        ``labels`` name each query's tokens (default: the query encoder's tokens of ``queries``).

        Raises :class:`ConfigError` for pages without a layout and :class:`~pipelines.search.SearchError`
        when Vespa cannot answer.
        """
        from pipelines.search import SearchError

        labels = self._labels(queries, vectors) if labels is None else [list(names) for names in labels]
        rows = self._rows(hits)
        if self.searcher.local is None:
            ids = [[hit.page_id for hit in query_hits] for query_hits in hits]
            remote = vespa_similarities(self.searcher.endpoint, vectors, ids, self.kind)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        records = []
        for q, (text, query, query_hits) in enumerate(zip(queries, vectors, hits, strict=True)):
            records.append([])
            for rank, hit in enumerate(query_hits, start=1):
                row = rows[hit.page_id]
                if self.searcher.local is not None:
                    similarities = local_similarities(self.searcher.local, hit.page_index, query, self.kind)
                else:
                    similarities = remote[q].get(hit.page_id)
                    if similarities is None:
                        msg = f"Vespa returned no similarities for page {hit.page_id}"
                        raise SearchError(msg)
                records[-1].append(self._write_one(q, rank, text, labels[q], hit, row, similarities))
        return records

    def close(self) -> None:
        self.renderer.close()

    def _labels(self, queries: Sequence[str], vectors: Sequence[np.ndarray]) -> list[list[str]]:
        try:
            labels = query_token_labels(self.searcher.encoder.processor, queries)
        except (AttributeError, TypeError, ValueError) as exc:  # a processor without process_queries
            logger.warning("query tokens not labelled (%s); numbering them", exc)
            labels = [[] for _ in queries]
        return [
            names if len(names) == len(v) else [f"token {i}" for i in range(len(v))]
            for names, v in zip(labels, vectors, strict=True)
        ]

    def _rows(self, hits: Sequence[Sequence[PageHit]]) -> dict[str, dict[str, Any]]:
        """Each hit page's index row (layout, size, renderer, thumbnail), by page id."""
        columns = PAGE_COLUMNS + LAYOUT_COLUMNS
        wanted = {hit.page_id for query_hits in hits for hit in query_hits}
        if self.searcher.local is not None:
            pages = self.searcher.local.pages
            indexes = sorted({hit.page_index for query_hits in hits for hit in query_hits})
            table = pages.take(indexes).select([c for c in columns if c in pages.column_names])
        else:
            import pyarrow.compute as pc

            table = self.pages.select([c for c in columns if c in self.pages.column_names])
            table = table.filter(pc.is_in(table.column("page_id"), value_set=_string_array(wanted)))
        rows = {row["page_id"]: row for row in table.to_pylist()}
        missing = wanted - rows.keys()
        if missing:
            msg = f"pages {sorted(missing)[:3]} are not in the index; similarity maps need their layouts"
            raise ConfigError(msg)
        return rows

    def _write_one(self, q, rank, text, labels, hit, row, similarities) -> dict[str, Any]:
        layout = PatchLayout.from_row(row)
        if layout is None:
            msg = (
                f"page {hit.page_id} has no patch layout (indexed before similarity maps, or by a model whose "
                "layout is unknown); re-index it to get similarity maps"
            )
            raise ConfigError(msg)
        # Re-ranking vectors stored apart (rerank_embedding): the float maps read those, with their own groups.
        separate = row.get("n_rerank_vectors") is not None
        maps = layout.spread(similarities, pooling_groups(row, self.kind, separate))
        image, image_source = self.renderer.render(row)
        header = (
            f"query {q}: {text}\nrank {rank}  score {hit.score:.4f}  {Path(hit.source_uri).name} page "
            f"{hit.page_number}  ({self.searcher.backend}, {self.kind} vectors, {layout.rows}x{layout.cols} grid)"
        )
        if _is_test_model(hit.model):
            header += "  TEST MODEL: random weights, the maps mean nothing"
        stem = f"q{q:02d}-r{rank:02d}-{_safe(hit.page_id)}"
        png, record_path = self.out_dir / f"{stem}.png", self.out_dir / f"{stem}.json"
        draw_similarity_maps(image, maps, labels, header, self.panel_px).save(png, compress_level=1)
        combined = combined_map(maps)
        record = {
            "query": text,
            "query_index": q,
            "rank": rank,
            "score": hit.score,
            "page_id": hit.page_id,
            "source_uri": hit.source_uri,
            "page_number": hit.page_number,
            "model": hit.model,
            "backend": self.searcher.backend,
            "vectors": self.kind,
            "values": "int8: Vespa's quantized min..max over the page" if self.searcher.backend == "vespa" else "dot",
            "grid": [layout.rows, layout.cols],
            "page_image": image_source,
            "png": png.name,
            "json": record_path.name,
            "combined": {"max": _finite(np.nanmax(combined)), "hottest_cell": list(hottest_cell(combined))},
            "tokens": [
                {"index": i, "label": label, "max": _finite(np.nanmax(grid)), "hottest_cell": list(hottest_cell(grid))}
                for i, (label, grid) in enumerate(zip(labels, maps, strict=True))
            ],
            "maps": np.where(np.isnan(maps), None, np.round(maps, 5)).tolist(),  # null: no vector on that cell
        }
        record_path.write_text(json.dumps(record, ensure_ascii=False))
        return record


def explain(cfg, searcher: Searcher, queries, vectors, hits) -> list[list[Path]]:
    """What ``jobs.search ... explain=true`` writes: every hit's maps (:meth:`SimilarityMapWriter.from_config`);
    returns each hit's PNG path, per query."""
    writer = SimilarityMapWriter.from_config(cfg, searcher)
    try:
        records = writer.write(queries, vectors, hits)
    finally:
        writer.close()
    return [[writer.out_dir / record["png"] for record in query_records] for query_records in records]


def read_record(path: str | Path) -> dict[str, Any]:
    """A similarity-map JSON record, with ``maps`` as a ``(tokens, rows, cols)`` float32 array."""
    record = json.loads(Path(path).read_text())
    record["maps"] = np.asarray(record["maps"], dtype=np.float32)
    return record


def _is_test_model(name: str | None) -> bool:
    from pipelines.models import registry

    try:
        return bool(name) and registry.get_spec(name).is_test_model
    except ValueError:  # a model this build does not register
        return False


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]


def _string_array(values):
    import pyarrow as pa

    return pa.array(sorted(values), type=pa.string())
