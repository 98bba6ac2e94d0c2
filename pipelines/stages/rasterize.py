"""Rasterize: one PDF source row in, one page record per page out (or error rows).

Pages are rendered at the pixel budget the model consumes (its processor would resize anything larger
anyway), capped by a DPI ceiling for small pages and a hard pixel ceiling, and kept as compressed JPEG
(default) or PNG bytes. Two renderers (:mod:`pipelines.render`): poppler's command-line tools and pdfium
in a long-lived worker process, every child bounded in memory, time and output. ``rasterize.renderer=auto``
renders with the primary (:data:`AUTO_PRIMARY`) and falls back to the other when the primary cannot open
the document, count its pages or render a page; each page records the renderer that produced it. The text
layer comes from poppler's ``pdftotext`` (pdfium's text layer where poppler cannot read it), read after the
pages are rendered and only for pages that were (a page that fails gets no text time). Documents are
processed in windows of pages so a 2,000-page file never holds more than one window of images.
"""

from __future__ import annotations

import io as bytes_io
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from PIL import Image

from pipelines import ids, io, schema
from pipelines.ids import affects_vectors
from pipelines.render import (
    AUTO,
    PDFIUM,
    POPPLER,
    RENDERERS,
    DocumentError,
    DocumentInfo,
    PageSize,
    fits,
    target_size,
)
from pipelines.render.pdfium import PdfiumWorker, shared_worker
from pipelines.render.poppler import PopplerRenderer
from pipelines.render.repair import repair_root
from pipelines.stages.base import PipelineFailure, Stage, error_fields, exception_fields, fails_run

__all__ = ["AUTO_PRIMARY", "DocumentError", "PageSize", "RasterizeStage", "target_size"]

PDF_MAGIC = b"%PDF-"
# The PDF spec lets the header start anywhere in the first 1024 bytes (junk before it is common).
PDF_MAGIC_WINDOW = 1024
# zlib level 1 for the page PNGs: several times faster than the default level, and the files are
# about as large as poppler's own PNGs (81 KiB per 0.6-Mpx page on the shared corpus).
PNG_COMPRESS_LEVEL = 1
#: The primary renderer of ``renderer=auto`` (the other is the fallback); chosen from the rasterize
#: benchmark (reports/benchmarks.md): pages per CPU-second and the hostile set.
AUTO_PRIMARY = PDFIUM
#: Open failures after which the next renderer is not tried (the time or memory is already spent).
_FINAL_OPEN_ERRORS = frozenset({"timeout"})
#: Which open failure names a document that no renderer opened, most specific first.
_OPEN_ERROR_ORDER = ("encrypted", "no_pages", "memory_limit", "too_large")


@dataclass
class RasterizeStage(Stage):
    """Render each page of each input PDF and extract its text layer.

    Input rows: ``source_uri`` (readable through fsspec). Output: one row per page with identity,
    size, ``image`` bytes, ``text`` and ``renderer``; or one error row per failed document
    (``page_number`` null) or per failed page. Error types: ``read_failed``, ``too_large``,
    ``empty_file``, ``not_pdf``, ``encrypted``, ``corrupt``, ``no_pages``, ``timeout``,
    ``memory_limit``, ``render_failed`` (a renderer failed on the page), ``invalid_page_size`` (no finite
    area, or an aspect ratio beyond :data:`~pipelines.render.MAX_ASPECT_RATIO`: see
    :func:`~pipelines.render.target_size`), ``pixel_cap``, ``encode_failed`` (the rendered image could not
    be encoded or thumbnailed), and ``rasterize_failed``: any other exception while processing the document
    (:meth:`Stage.__call__ <pipelines.stages.base.Stage.__call__>`; the pages it had not yielded yet, or the
    whole document before its first page).

    The pdfium worker process is started on first use, reused for every page and document of this
    stage instance, and stopped by :meth:`close` (or when the stage is garbage-collected, or the job
    process exits: the worker ends when its stdin closes).
    """

    name: ClassVar[str] = "rasterize"
    changes_row_count: ClassVar[bool] = True

    #: Pixel budget per page image; None = the model's budget (the driver resolves it from the registry).
    max_pixels: int | None = field(default=None, metadata=affects_vectors())
    max_dpi: float = field(default=200.0, metadata=affects_vectors())
    hard_max_pixels: int = 4_000_000
    window_pages: int = 16
    image_format: str = field(default="jpeg", metadata=affects_vectors())
    jpeg_quality: int = field(default=90, metadata=affects_vectors(when=lambda stage: stage.image_format == "jpeg"))
    #: poppler | pdfium | auto (AUTO_PRIMARY first, the other as fallback); different renderers give different pixels.
    renderer: str = field(default=AUTO, metadata=affects_vectors())
    extract_text: bool = True
    timeout_s: float = 120.0
    #: Per text-layer call (text is worth less than the page: it gives up sooner); never above ``timeout_s``.
    text_timeout_s: float = 30.0
    document_timeout_s: float = 1800.0
    #: Address-space limit of every renderer child (pdfinfo, pdftoppm, pdftotext, the pdfium worker); 0 = none.
    memory_limit_mb: int = 2048
    #: The pdfium worker's own, lower limit (the smaller of the two applies; 0 = ``memory_limit_mb``). pdfium
    #: holds a page's whole display list where poppler streams it: a page over this limit is drawn by poppler
    #: (``auto``) within ``memory_limit_mb``, and a runaway page stops costing memory sooner.
    pdfium_memory_limit_mb: int = 1024
    max_file_bytes: int = 512 * 1024 * 1024
    thumbnail_px: int = 192  # long side of the JPEG thumbnail kept per page; 0 = none
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.image_format not in ("png", "jpeg"):
            msg = f"rasterize.image_format must be 'png' or 'jpeg', got {self.image_format!r}"
            raise ValueError(msg)
        if self.renderer not in RENDERERS:
            msg = f"rasterize.renderer must be one of {list(RENDERERS)}, got {self.renderer!r}"
            raise ValueError(msg)
        if self.max_pixels is not None and self.max_pixels > self.hard_max_pixels:
            msg = (
                f"rasterize.max_pixels={self.max_pixels} exceeds rasterize.hard_max_pixels={self.hard_max_pixels}; "
                "lower the budget or raise the hard cap"
            )
            raise ValueError(msg)
        if self.thumbnail_px < 0:
            msg = f"rasterize.thumbnail_px must be >= 0 (0 disables thumbnails), got {self.thumbnail_px}"
            raise ValueError(msg)
        if self.window_pages < 1:
            msg = f"rasterize.window_pages must be >= 1, got {self.window_pages}"
            raise ValueError(msg)
        if not (self.timeout_s > 0 and self.document_timeout_s > 0 and self.text_timeout_s > 0):
            msg = "rasterize.timeout_s, text_timeout_s and document_timeout_s must be > 0"
            raise ValueError(msg)
        if self.memory_limit_mb < 0 or self.pdfium_memory_limit_mb < 0:
            msg = (
                "rasterize.memory_limit_mb and pdfium_memory_limit_mb must be >= 0 (0 = no limit / the general "
                f"limit), got {self.memory_limit_mb} and {self.pdfium_memory_limit_mb}"
            )
            raise ValueError(msg)
        self._deadline = math.inf  # monotonic time by which the current document must be done
        self._pdfium: PdfiumWorker | None = None

    # -- renderers ---------------------------------------------------------------------------------

    @property
    def memory_limit_bytes(self) -> int | None:
        return self.memory_limit_mb * 2**20 or None

    @property
    def pdfium_memory_limit_bytes(self) -> int | None:
        limits = [mb for mb in (self.memory_limit_mb, self.pdfium_memory_limit_mb) if mb]
        return min(limits) * 2**20 if limits else None

    def renderer_order(self) -> list[str]:
        """Renderers tried, in order: the chosen one, or for ``auto`` the primary then the fallback."""
        if self.renderer != AUTO:
            return [self.renderer]
        return [AUTO_PRIMARY, POPPLER if AUTO_PRIMARY == PDFIUM else PDFIUM]

    def _renderer(self, name: str):
        if name == POPPLER:
            return PopplerRenderer(self.memory_limit_bytes)
        if self._pdfium is None:
            self._pdfium = shared_worker(self.pdfium_memory_limit_bytes)
        return self._pdfium

    def close(self) -> None:
        """Stop the pdfium worker, if one runs (this process's, shared by stages with the same limit; a later
        document starts a new one)."""
        if self._pdfium is not None:
            self._pdfium.close()
            self._pdfium = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pdfium"] = None  # a worker process belongs to the process that started it
        return state

    # -- documents ---------------------------------------------------------------------------------

    def process_stream(self, batch: pa.Table) -> Iterator[pa.Table]:
        for uri in batch.column("source_uri").to_pylist():
            for rows in self.rasterize_windows(uri):
                yield schema.rows_to_table(rows)

    def rasterize_document(self, uri: str) -> list[dict]:
        """All page records (and error records) of one document, for the bad data the stage knows; an
        unexpected exception propagates (calling the stage turns it into ``rasterize_failed`` rows)."""
        return [row for rows in self.rasterize_windows(uri) for row in rows]

    def rasterize_windows(self, uri: str) -> Iterator[list[dict]]:
        """The records of one document, ``window_pages`` pages at a time (bounded memory).

        Every renderer call runs in a bounded child killed at ``timeout_s``; the whole document also has
        ``document_timeout_s``, after which its remaining pages become ``timeout`` error rows.
        """
        if self.max_pixels is None:
            msg = "RasterizeStage.max_pixels is unset: resolve it to the model's budget before rasterizing"
            raise PipelineFailure(msg)
        self._deadline = time.monotonic() + self.document_timeout_s
        try:
            data = io.read_bytes(uri, self.storage_options, max_bytes=self.max_file_bytes)
        except io.FileTooLarge as exc:
            yield [{"source_uri": uri, **error_fields(self.name, "too_large", str(exc))}]
            return
        except OSError as exc:
            yield [{"source_uri": uri, **error_fields(self.name, "read_failed", f"{type(exc).__name__}: {exc}")}]
            return
        doc_id = ids.doc_id_from_bytes(data)
        base = {"source_uri": uri, "doc_id": doc_id}
        with tempfile.TemporaryDirectory(prefix="rasterize-") as tmp:
            pdf_path = Path(tmp) / "doc.pdf"
            try:
                if not data:
                    raise DocumentError("empty_file", "file is empty (0 bytes)")
                pdf_path.write_bytes(data)
                document = _Document(pdf_path, *self._open(pdf_path, data))
                del data
            except DocumentError as exc:
                yield [{**base, **error_fields(self.name, exc.error_type, str(exc))}]
                return
            try:
                sizes = document.info.sizes
                base["page_count"] = len(sizes)
                base["title"] = document.info.title or io.file_stem(uri)
                for start in range(1, len(sizes) + 1, self.window_pages):
                    stop = min(start + self.window_pages - 1, len(sizes))
                    if time.monotonic() >= self._deadline:
                        exc = DocumentError(
                            "timeout",
                            f"document not finished within {self.document_timeout_s}s "
                            f"(rasterize.document_timeout_s); pages {start}-{len(sizes)} not rendered",
                        )
                        yield [self._page_error(base, n, exc) for n in range(start, len(sizes) + 1)]
                        return
                    yield self._render_window(document, base, start, stop)
            finally:
                if self._pdfium is not None:
                    self._pdfium.release()

    def _call_timeout(self, limit: float | None = None) -> float:
        """Seconds the next child call may take: ``timeout_s`` (or ``limit``), less when the document's budget
        ends sooner."""
        return max(0.1, min(limit or self.timeout_s, self._deadline - time.monotonic()))

    def _open(self, pdf_path: Path, data: bytes) -> tuple[Any, DocumentInfo]:
        """(renderer, what it read) of the first renderer that opens the document and finds pages.

        No byte-prefix check: the parsers decide. When none opens it, the trailer's ``/Root`` is pointed at
        the catalog object if it misses it (:func:`pipelines.render.repair.repair_root`) and they try again;
        then the most specific reason wins: encrypted, no pages, over the memory limit, not a PDF at all
        (no ``%PDF-`` header either), else corrupt with every renderer's reason.
        """
        failures: list[DocumentError] = []
        for attempt in range(2):
            for name in self.renderer_order():
                renderer = self._renderer(name)
                try:
                    return renderer, renderer.open(pdf_path, self._call_timeout())
                except DocumentError as exc:
                    if exc.error_type in _FINAL_OPEN_ERRORS:
                        raise
                    failures.append(exc)
            repaired = repair_root(data) if attempt == 0 else None
            if repaired is None:
                break
            pdf_path.write_bytes(repaired)
        types = {exc.error_type for exc in failures}
        for error_type in _OPEN_ERROR_ORDER:
            if error_type in types:
                raise next(exc for exc in failures if exc.error_type == error_type)
        reasons = "; ".join(dict.fromkeys(str(exc) for exc in failures))
        if PDF_MAGIC not in data[:PDF_MAGIC_WINDOW]:
            head = data[:16]
            msg = f"not a PDF: no '%PDF-' header in the first {PDF_MAGIC_WINDOW} bytes (starts with {head!r})"
            msg += f" and no renderer opens it: {reasons}"
            raise DocumentError("not_pdf", msg)
        raise DocumentError("corrupt", reasons)

    # -- pages -------------------------------------------------------------------------------------

    def _render_window(self, document: _Document, base: dict, start: int, stop: int) -> list[dict]:
        sizes = document.info.sizes
        rows: list[dict] = []
        # Consecutive pages with the same target size share one poppler call (the common case:
        # every page of a document has the same size).
        run_start = start
        while run_start <= stop:
            width_pt, height_pt, _, _ = sizes[run_start - 1]
            try:
                size = target_size(width_pt, height_pt, self.max_pixels, self.max_dpi)
            except DocumentError as exc:
                rows.extend(self._fallback_page(document, base, run_start, exc))
                run_start += 1
                continue
            run_stop = run_start
            while run_stop < stop and sizes[run_stop] == sizes[run_start - 1]:
                run_stop += 1
            rows.extend(self._render_run(document, base, run_start, run_stop, size))
            run_start = run_stop + 1
        # Text last, for the rendered pages only: a page that failed (a bomb that ran into its time or memory
        # bound) spends nothing more on its text layer.
        pages = [row for row in rows if "error_type" not in row]
        if pages:
            first = pages[0]["page_number"]
            texts = self._texts(document, first, pages[-1]["page_number"])
            for row in pages:
                offset = row["page_number"] - first
                row["text"] = texts[offset] if offset < len(texts) else ""
        return rows

    def _render_run(self, document: _Document, base, first, last, size) -> list[dict]:
        if size[0] * size[1] > self.hard_max_pixels:
            exc = DocumentError("pixel_cap", f"render of {size[0]}x{size[1]} px exceeds rasterize.hard_max_pixels")
            return [self._page_error(base, n, exc) for n in range(first, last + 1)]
        renderer, sizes = document.renderer, document.info.sizes
        try:
            images = renderer.render(document.path, first, last, size, sizes[first - 1], self._call_timeout())
        except DocumentError as exc:
            if first == last:
                return self._fallback_page(document, base, first, exc)
            # Isolate the bad page(s) instead of failing the whole run of pages.
            rows = []
            for number in range(first, last + 1):
                rows.extend(self._render_run(document, base, number, number, size))
            return rows
        numbers = range(first, first + len(images))
        return [
            self._page_row(base, n, sizes[n - 1], size, image, renderer.name)
            for n, image in zip(numbers, images, strict=True)
        ]

    def _fallback_page(self, document: _Document, base, number, exc: DocumentError) -> list[dict]:
        """A page the document's renderer could not render: the other renderer tries it (``auto`` only), else it
        is an error row. Not after a timeout: that time is spent. After the memory limit it does: pdfium builds a
        page's whole display list before drawing it, poppler draws while it parses, so a page with millions of
        paths that pdfium cannot hold in ``pdfium_memory_limit_mb`` renders with poppler in a few MiB (bounded by
        ``timeout_s`` like any call)."""
        order = self.renderer_order()
        if len(order) < 2 or exc.error_type in ("timeout", "pixel_cap"):
            return [self._page_error(base, number, exc)]
        other = self._renderer(next(name for name in order if name != document.renderer.name))
        try:
            if document.fallback_info is None:
                document.fallback_info = other.open(document.path, self._call_timeout())
            if number > document.fallback_info.page_count:
                return [self._page_error(base, number, exc)]
            page = document.fallback_info.sizes[number - 1]
            size = target_size(page.width_pt, page.height_pt, self.max_pixels, self.max_dpi)
            if size[0] * size[1] > self.hard_max_pixels:
                return [self._page_error(base, number, exc)]
            [image] = other.render(document.path, number, number, size, page, self._call_timeout())
        except DocumentError as second:
            message = f"{exc}; {other.name}: {second}"
            return [self._page_error(base, number, DocumentError(exc.error_type, message))]
        return [self._page_row(base, number, page, size, image, other.name)]

    def _page_row(self, base, number, page: PageSize, size, image: Image.Image, renderer) -> dict:
        """A page record, or an ``encode_failed`` page error; its ``text`` is filled in once the window's pages
        are rendered. An image whose renderer rounded it past what later steps accept (pdfium scales both sides
        alike) is resized to the ``size`` asked for, which :func:`~pipelines.render.target_size` made fit."""
        if not fits(image.size):
            image = image.resize(size, Image.Resampling.BILINEAR)
        try:
            encoded, thumbnail = self._encode(image), self._thumbnail(image)
        except Exception as exc:  # the encoder refusing this image is the page's problem, not the run's
            if fails_run(exc):
                raise
            context = f"cannot encode the {image.width}x{image.height} px page image: "
            fields = exception_fields(self.name, "encode_failed", exc, context)
            return {**base, "page_number": number, **fields}
        return {
            **base,
            "page_id": ids.page_id(base["doc_id"], number),
            "page_number": number,
            "width_pt": page.width_pt,
            "height_pt": page.height_pt,
            "image": encoded,
            "image_width": image.width,
            "image_height": image.height,
            "thumbnail": thumbnail,
            "text": "",
            "renderer": renderer,
        }

    def _encode(self, image: Image.Image) -> bytes:
        buffer = bytes_io.BytesIO()
        if self.image_format == "jpeg":
            image.save(buffer, format="JPEG", quality=self.jpeg_quality)
        else:
            image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue()

    def _thumbnail(self, image: Image.Image) -> bytes | None:
        if not self.thumbnail_px:
            return None
        small = image.copy()
        small.thumbnail((self.thumbnail_px, self.thumbnail_px), Image.Resampling.BILINEAR)
        if small.mode not in ("RGB", "L"):  # JPEG has no alpha or palette
            small = small.convert("RGB")
        buffer = bytes_io.BytesIO()
        small.save(buffer, format="JPEG", quality=70)
        return buffer.getvalue()

    def _texts(self, document: _Document, first: int, last: int) -> list[str]:
        """Text layers of pages first..last: poppler's pdftotext, else pdfium's where poppler cannot read them
        (``auto``, or ``renderer=pdfium``, which uses no poppler at all), each within ``text_timeout_s`` (at most
        ``timeout_s``). A text layer that cannot be read is not worth losing the page over: it is then empty."""
        if not self.extract_text:
            return []
        names = [name for name in (POPPLER, PDFIUM) if name in self.renderer_order()]
        limit = min(self.text_timeout_s, self.timeout_s)
        for name in names:
            try:
                texts = self._renderer(name).texts(document.path, first, last, self._call_timeout(limit))
            except DocumentError:  # a timeout or the memory limit: not worth spending again on another reader
                return []
            if texts is not None:
                return texts
        return []

    def _page_error(self, base: dict, number: int, exc: DocumentError) -> dict:
        return {**base, "page_number": number, **error_fields(self.name, exc.error_type, str(exc))}


class _Document:
    """One open document: its file, the renderer that opened it, what it read; the fallback's reading once asked."""

    def __init__(self, path: Path, renderer, info: DocumentInfo):
        self.path, self.renderer, self.info = path, renderer, info
        self.fallback_info: DocumentInfo | None = None
