"""Rasterize: one PDF source row in, one page record per page out (or error rows).

Pages are rendered with poppler's ``pdftoppm`` at the pixel budget the model consumes (its processor
would resize anything larger anyway), capped by a DPI ceiling for small pages and a hard pixel
ceiling, and kept as compressed JPEG (default) or PNG bytes. The text layer comes from poppler's
``pdftotext``. Documents are processed in windows of pages so a 2,000-page file never holds more
than one window of images.
"""

from __future__ import annotations

import io as bytes_io
import math
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import pyarrow as pa
from PIL import Image

from pipelines import ids, io, schema
from pipelines.stages.base import Stage, error_fields

PDF_MAGIC = b"%PDF-"
# The PDF spec lets the header start anywhere in the first 1024 bytes (junk before it is common).
PDF_MAGIC_WINDOW = 1024
_PAGE_SIZE_RE = re.compile(r"^Page\s+(\d+)\s+size:\s+([\d.]+)\s+x\s+([\d.]+)")
_PAGE_ROT_RE = re.compile(r"^Page\s+(\d+)\s+rot:\s+(\d+)")
_TITLE_RE = re.compile(r"^Title:\s*(.*)$")
# zlib level 1 for the page PNGs: several times faster than the default level, and the files are
# about as large as poppler's own PNGs (81 KiB per 0.6-Mpx page on the shared corpus).
PNG_COMPRESS_LEVEL = 1


class PageSize(NamedTuple):
    """A page's size in points as displayed (after /Rotate), and whether it is turned a quarter."""

    width_pt: float
    height_pt: float
    sideways: bool = False


class DocumentError(Exception):
    """A document (or page) cannot be rasterized; ``error_type`` is the recorded reason."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def target_size(width_pt: float, height_pt: float, max_pixels: int, max_dpi: float) -> tuple[int, int]:
    """Pixel size to render a page of ``width_pt x height_pt`` points at.

    The largest size with at most ``max_pixels`` pixels that keeps the aspect ratio, but never above
    ``max_dpi`` (upsampling a small page adds no information).
    """
    if not (width_pt > 0 and height_pt > 0):
        msg = f"page has no area ({width_pt} x {height_pt} pt)"
        raise DocumentError("invalid_page_size", msg)
    scale = min(max_dpi / 72.0, math.sqrt(max_pixels / (width_pt * height_pt)))
    return max(1, math.floor(width_pt * scale)), max(1, math.floor(height_pt * scale))


@dataclass
class RasterizeStage(Stage):
    """Render each page of each input PDF and extract its text layer.

    Input rows: ``source_uri`` (readable through fsspec). Output: one row per page with identity,
    size, ``image`` bytes and ``text``; or one error row per failed document (``page_number`` null)
    or per failed page. Error types: ``read_failed``, ``too_large``, ``empty_file``, ``not_pdf``,
    ``encrypted``, ``corrupt``, ``no_pages``, ``timeout``, ``render_failed``, ``pixel_cap``.
    """

    name: ClassVar[str] = "rasterize"
    changes_row_count: ClassVar[bool] = True

    max_pixels: int = 602_112  # the model's budget; set from the model registry by the job
    max_dpi: float = 200.0
    hard_max_pixels: int = 4_000_000
    window_pages: int = 16
    image_format: str = "jpeg"
    jpeg_quality: int = 90
    extract_text: bool = True
    timeout_s: float = 120.0
    document_timeout_s: float = 1800.0
    max_file_bytes: int = 512 * 1024 * 1024
    thumbnail_px: int = 192  # long side of the JPEG thumbnail kept per page; 0 = none
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.image_format not in ("png", "jpeg"):
            msg = f"rasterize.image_format must be 'png' or 'jpeg', got {self.image_format!r}"
            raise ValueError(msg)
        if self.max_pixels > self.hard_max_pixels:
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
        if not (self.timeout_s > 0 and self.document_timeout_s > 0):
            msg = "rasterize.timeout_s and rasterize.document_timeout_s must be > 0"
            raise ValueError(msg)
        self._deadline = math.inf  # monotonic time by which the current document must be done

    def process_stream(self, batch: pa.Table) -> Iterator[pa.Table]:
        for uri in batch.column("source_uri").to_pylist():
            for rows in self.rasterize_windows(uri):
                yield schema.rows_to_table(rows)

    def rasterize_document(self, uri: str) -> list[dict]:
        """All page records (and error records) of one document; never raises on bad data."""
        return [row for rows in self.rasterize_windows(uri) for row in rows]

    def rasterize_windows(self, uri: str) -> Iterator[list[dict]]:
        """The records of one document, ``window_pages`` pages at a time (bounded memory).

        Every poppler call is a separate process killed at ``timeout_s``; the whole document also has
        ``document_timeout_s``, after which its remaining pages become ``timeout`` error rows.
        """
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
                self._check_header(data)
                pdf_path.write_bytes(data)
                del data
                sizes, title = self._page_sizes(pdf_path)
            except DocumentError as exc:
                yield [{**base, **error_fields(self.name, exc.error_type, str(exc))}]
                return
            base["page_count"] = len(sizes)
            base["title"] = title or io.file_stem(uri)
            for start in range(1, len(sizes) + 1, self.window_pages):
                stop = min(start + self.window_pages - 1, len(sizes))
                if time.monotonic() >= self._deadline:
                    exc = DocumentError(
                        "timeout",
                        f"document not finished within {self.document_timeout_s}s (rasterize.document_timeout_s); "
                        f"pages {start}-{len(sizes)} not rendered",
                    )
                    yield [self._page_error(base, n, exc) for n in range(start, len(sizes) + 1)]
                    return
                yield self._render_window(pdf_path, Path(tmp), base, sizes, start, stop)

    @staticmethod
    def _check_header(data: bytes) -> None:
        if not data:
            raise DocumentError("empty_file", "file is empty (0 bytes)")
        if PDF_MAGIC not in data[:PDF_MAGIC_WINDOW]:
            head = data[:16]
            msg = f"not a PDF: no '%PDF-' header in the first {PDF_MAGIC_WINDOW} bytes (starts with {head!r})"
            raise DocumentError("not_pdf", msg)

    def _call_timeout(self) -> float:
        """Seconds the next poppler call may take: ``timeout_s``, or less when the document's budget ends sooner."""
        return max(0.1, min(self.timeout_s, self._deadline - time.monotonic()))

    def _poppler(self, args: list[str]) -> subprocess.CompletedProcess:
        timeout = self._call_timeout()
        try:
            return subprocess.run(args, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            msg = f"{args[0]} did not finish within {timeout:.1f}s (rasterize.timeout_s / document_timeout_s)"
            raise DocumentError("timeout", msg) from exc

    def _page_sizes(self, pdf_path: Path) -> tuple[list[PageSize], str]:
        """Per-page (width, height) in points, after the page's /Rotate is applied, and the Title metadata."""
        result = self._poppler(["pdfinfo", "-f", "1", "-l", "2147483647", str(pdf_path)])
        stderr = result.stderr.decode("utf-8", "replace").strip()
        if result.returncode != 0:
            if "Incorrect password" in stderr:
                raise DocumentError("encrypted", "PDF is encrypted with a user password; cannot open it without one")
            raise DocumentError("corrupt", f"poppler cannot read the PDF: {stderr[-500:] or 'pdfinfo failed'}")
        sizes: dict[int, tuple[float, float]] = {}
        rotations: dict[int, int] = {}
        page_count = None
        title = ""
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            if match := _TITLE_RE.match(line):
                title = " ".join(match[1].split())[:512]
            elif match := _PAGE_SIZE_RE.match(line):
                sizes[int(match[1])] = (float(match[2]), float(match[3]))
            elif match := _PAGE_ROT_RE.match(line):
                rotations[int(match[1])] = int(match[2]) % 360
            elif line.startswith("Pages:"):
                page_count = int(line.split(":", 1)[1])
        if page_count is None:
            raise DocumentError("corrupt", f"poppler reports no page count: {stderr[-500:]}")
        if page_count == 0:
            raise DocumentError("no_pages", "PDF has zero pages")
        if not any(w > 0 and h > 0 for w, h in sizes.values()):
            tail = stderr.splitlines()[-1] if stderr else "no page has a size"
            raise DocumentError("corrupt", f"poppler cannot read any page of the PDF: {tail}")
        out = []
        for number in range(1, page_count + 1):
            width, height = sizes.get(number, (0.0, 0.0))
            sideways = rotations.get(number, 0) in (90, 270)
            out.append(PageSize(height, width, True) if sideways else PageSize(width, height))
        return out, title

    def _render_window(
        self, pdf_path: Path, tmp: Path, base: dict, sizes: list[PageSize], start: int, stop: int
    ) -> list[dict]:
        texts = self._texts(pdf_path, start, stop)
        rows: list[dict] = []
        # Consecutive pages with the same target size share one poppler call (the common case:
        # every page of a document has the same size).
        run_start = start
        while run_start <= stop:
            width_pt, height_pt, _ = sizes[run_start - 1]
            try:
                size = target_size(width_pt, height_pt, self.max_pixels, self.max_dpi)
            except DocumentError as exc:
                rows.append(self._page_error(base, run_start, exc))
                run_start += 1
                continue
            run_stop = run_start
            while run_stop < stop and sizes[run_stop] == sizes[run_start - 1]:
                run_stop += 1
            rows.extend(self._render_run(pdf_path, tmp, base, sizes, texts, start, run_start, run_stop, size))
            run_start = run_stop + 1
        return rows

    def _render_run(self, pdf_path, tmp, base, sizes, texts, window_start, first, last, size) -> list[dict]:
        if size[0] * size[1] > self.hard_max_pixels:
            exc = DocumentError("pixel_cap", f"render of {size[0]}x{size[1]} px exceeds rasterize.hard_max_pixels")
            return [self._page_error(base, n, exc) for n in range(first, last + 1)]
        try:
            images = self._render(pdf_path, tmp, first, last, size, sizes[first - 1].sideways)
        except DocumentError as exc:
            if first == last:
                return [self._page_error(base, first, exc)]
            # Isolate the bad page(s) instead of failing the whole run of pages.
            rows = []
            for number in range(first, last + 1):
                rows.extend(self._render_run(pdf_path, tmp, base, sizes, texts, window_start, number, number, size))
            return rows
        rows = []
        for offset, (image_bytes, (pixel_w, pixel_h), thumbnail) in enumerate(images):
            number = first + offset
            width_pt, height_pt, _ = sizes[number - 1]
            rows.append(
                {
                    **base,
                    "page_id": ids.page_id(base["doc_id"], number),
                    "page_number": number,
                    "width_pt": width_pt,
                    "height_pt": height_pt,
                    "image": image_bytes,
                    "image_width": pixel_w,
                    "image_height": pixel_h,
                    "thumbnail": thumbnail,
                    "text": texts[number - window_start] if number - window_start < len(texts) else "",
                }
            )
        return rows

    def _render(self, pdf_path: Path, tmp: Path, first: int, last: int, size: tuple[int, int], sideways: bool):
        """Render pages first..last; returns ``[(image bytes, (w, h), thumbnail bytes | None)]`` in page order.

        pdftoppm is called directly (a killable process with the call's timeout), writing raw PPM that is
        encoded here. Going through pdf2image cost two extra processes per call (its own ``pdfinfo`` and a
        ``pdftoppm -v``), and poppler's PNG writer (zlib's default level) about 60% of the stage's CPU
        time (reports/benchmarks.md). The thumbnail comes from the decoded pixels, not a re-decode.
        ``-scale-to-x/-y`` apply to the page before its /Rotate, so a sideways page asks for the swapped
        size (otherwise the image comes out stretched with its sides swapped).
        """
        out_dir = Path(tempfile.mkdtemp(dir=tmp))
        width, height = (size[1], size[0]) if sideways else size
        pages = ["-f", str(first), "-l", str(last)]
        scale = ["-scale-to-x", str(width), "-scale-to-y", str(height)]
        result = self._poppler(["pdftoppm", *pages, *scale, "-cropbox", str(pdf_path), str(out_dir / "page")])
        paths = sorted(out_dir.glob("page-*.ppm"))  # zero-padded page numbers: name order is page order
        if len(paths) != last - first + 1:
            stderr = result.stderr.decode("utf-8", "replace").strip()
            msg = (
                f"pdftoppm produced {len(paths)} images for pages {first}-{last}: {stderr[-300:] or result.returncode}"
            )
            raise DocumentError("render_failed", msg)
        out = []
        for path in paths:
            with Image.open(path) as image:
                image.load()
                out.append((self._encode(image), image.size, self._thumbnail(image)))
            Path(path).unlink()
        return out

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

    def _texts(self, pdf_path: Path, first: int, last: int) -> list[str]:
        if not self.extract_text:
            return []
        try:
            result = self._poppler(
                ["pdftotext", "-q", "-enc", "UTF-8", "-f", str(first), "-l", str(last), str(pdf_path), "-"]
            )
        except DocumentError:
            return []  # a text layer that cannot be read is not worth losing the page over
        if result.returncode != 0:
            return []
        # pdftotext ends every page with a form feed.
        return [page.strip() for page in result.stdout.decode("utf-8", "replace").split("\f")[: last - first + 1]]

    def _page_error(self, base: dict, number: int, exc: DocumentError) -> dict:
        return {**base, "page_number": number, **error_fields(self.name, exc.error_type, str(exc))}
