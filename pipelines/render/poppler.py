"""poppler's command-line tools (pdfinfo, pdftoppm, pdftotext) as a renderer, each call a bounded child.

pdftoppm and pdftotext get ``-q`` (no "Syntax Warning"/"Unknown operator" floods) and runs under
:func:`pipelines.render.bounded.run_bounded`. pdftoppm writes raw PPM files that are decoded here (no
PNG encode in poppler, no pdf2image processes).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipelines.render import POPPLER, DocumentError, DocumentInfo, PageSize
from pipelines.render.bounded import BoundedResult, ChildTimeout, run_bounded

#: pdfinfo prints sizes with printf's %g: "612 x 792", "3 x 2e+06", "inf x 5".
_PAGE_SIZE_RE = re.compile(r"^Page\s+(\d+)\s+size:\s+(\S+)\s+x\s+(\S+)")
_PAGE_ROT_RE = re.compile(r"^Page\s+(\d+)\s+rot:\s+(\d+)")
_MEDIABOX_RE = re.compile(r"^Page\s+(\d+)\s+MediaBox:\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)")
_TITLE_RE = re.compile(r"^Title:\s*(.*)$")
#: pdfinfo/pdftoppm stderr when the page tree yields no pages (poppler 22.12 exits 99 then).
_NO_PAGES_RE = re.compile(r"Invalid page count 0\b|last page \(0\)")
#: pdfinfo's listing costs ~60 bytes per page; 64 MiB is a million pages.
INFO_STDOUT_CAP = 64 * 1024 * 1024
TEXT_STDOUT_CAP = 16 * 1024 * 1024


@dataclass
class PopplerRenderer:
    """Stateless: every call names the file. ``memory_limit`` bytes per child (None: unlimited)."""

    memory_limit: int | None = None
    name: str = POPPLER

    def _run(self, args: list[str], timeout: float, stdout_cap: int = 4096) -> BoundedResult:
        try:
            result = run_bounded(args, timeout, self.memory_limit, stdout_cap)
        except ChildTimeout as exc:
            msg = f"{args[0]} did not finish within {timeout:.1f}s (rasterize.timeout_s / document_timeout_s)"
            raise DocumentError("timeout", msg) from exc
        if result.over_memory_limit:
            msg = (
                f"{args[0]} exceeded its memory limit of {self.memory_limit // 2**20} MiB "
                f"(rasterize.memory_limit_mb; exit {result.returncode}): {result.stderr_text[:300]}"
            )
            raise DocumentError("memory_limit", msg)
        return result

    def open(self, path: Path, timeout: float) -> DocumentInfo:
        """Page sizes (after /Rotate; from the MediaBox where the CropBox has no area) and title."""
        # pdfinfo has no -q: its warnings are capped (the start is kept) like every child's.
        result = self._run(["pdfinfo", "-f", "1", "-l", "2147483647", str(path)], timeout, INFO_STDOUT_CAP)
        if result.returncode != 0:
            stderr = result.stderr_text
            if "Incorrect password" in stderr:
                raise DocumentError("encrypted", "PDF is encrypted with a user password; cannot open it without one")
            if _NO_PAGES_RE.search(stderr) and "wrong type" not in stderr and "Invalid page count -" not in stderr:
                raise DocumentError("no_pages", "PDF has zero pages (poppler: page tree /Count 0)")
            raise DocumentError("corrupt", f"poppler cannot read the PDF: {stderr[-500:] or 'pdfinfo failed'}")
        if result.stdout_truncated:
            msg = f"pdfinfo's page listing exceeds {INFO_STDOUT_CAP} bytes"
            raise DocumentError("too_large", msg)
        sizes: dict[int, tuple[float, float]] = {}
        rotations: dict[int, int] = {}
        page_count, title = None, ""
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            if match := _TITLE_RE.match(line):
                title = " ".join(match[1].split())[:512]
            elif match := _PAGE_SIZE_RE.match(line):
                sizes[int(match[1])] = (_points(match[2]), _points(match[3]))
            elif match := _PAGE_ROT_RE.match(line):
                rotations[int(match[1])] = int(match[2]) % 360
            elif line.startswith("Pages:"):
                page_count = int(line.split(":", 1)[1])
        if page_count is None:
            raise DocumentError("corrupt", "poppler reports no page count")
        if page_count == 0:
            raise DocumentError("no_pages", "PDF has zero pages")
        empty = [n for n in range(1, page_count + 1) if not all(v > 0 for v in sizes.get(n, (0.0, 0.0)))]
        mediaboxes = self._mediaboxes(path, empty, timeout) if empty else {}
        if not any(w > 0 and h > 0 for w, h in sizes.values()) and not mediaboxes:
            raise DocumentError("corrupt", "poppler cannot read any page of the PDF: no page has a size")
        out = []
        for number in range(1, page_count + 1):
            width, height = sizes.get(number, (0.0, 0.0))
            mediabox = number in mediaboxes
            if mediabox:
                width, height = mediaboxes[number]
            sideways = rotations.get(number, 0) in (90, 270)
            out.append(
                PageSize(height, width, True, mediabox) if sideways else PageSize(width, height, False, mediabox)
            )
        return DocumentInfo(POPPLER, out, title)

    def _mediaboxes(self, path: Path, numbers: list[int], timeout: float) -> dict[int, tuple[float, float]]:
        """MediaBox sizes of the pages whose CropBox has no area (only those, so the common case pays nothing)."""
        out: dict[int, tuple[float, float]] = {}
        first, last = min(numbers), max(numbers)
        args = ["pdfinfo", "-box", "-f", str(first), "-l", str(last), str(path)]
        result = self._run(args, timeout, INFO_STDOUT_CAP)
        wanted = set(numbers)
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            if (match := _MEDIABOX_RE.match(line)) and int(match[1]) in wanted:
                x0, y0, x1, y1 = (float(match[i]) for i in range(2, 6))
                if abs(x1 - x0) > 0 and abs(y1 - y0) > 0:
                    out[int(match[1])] = (abs(x1 - x0), abs(y1 - y0))
        return out

    def render(self, path: Path, first: int, last: int, size: tuple[int, int], page: PageSize, timeout: float):
        """Pages first..last (all of ``page``'s size) as decoded PIL images, in page order.

        ``-scale-to-x/-y`` apply to the page before its /Rotate, so a sideways page asks for the swapped
        size (otherwise the image comes out stretched with its sides swapped).
        """
        width, height = (size[1], size[0]) if page.sideways else size
        with tempfile.TemporaryDirectory(prefix="pdftoppm-") as out_dir:
            args = ["pdftoppm", "-q", "-f", str(first), "-l", str(last)]
            args += ["-scale-to-x", str(width), "-scale-to-y", str(height)]
            args += [] if page.mediabox else ["-cropbox"]
            result = self._run([*args, str(path), str(Path(out_dir) / "page")], timeout)
            paths = sorted(Path(out_dir).glob("page-*.ppm"))  # zero-padded page numbers: name order is page order
            if len(paths) != last - first + 1:
                msg = (
                    f"pdftoppm produced {len(paths)} images for pages {first}-{last}: "
                    f"{result.stderr_text[-300:] or f'exit {result.returncode}'}"
                )
                raise DocumentError("render_failed", msg)
            images = []
            for image_path in paths:
                with Image.open(image_path) as image:
                    image.load()
                    images.append(image)
                image_path.unlink()
            return images

    def texts(self, path: Path, first: int, last: int, timeout: float) -> list[str] | None:
        """The text layers of pages first..last, or None when poppler cannot read them; raises
        :class:`DocumentError` on a timeout or the memory limit (no other reader should spend them again)."""
        args = ["pdftotext", "-q", "-enc", "UTF-8", "-f", str(first), "-l", str(last), str(path), "-"]
        result = self._run(args, timeout, TEXT_STDOUT_CAP)
        if result.returncode != 0:
            return None
        # pdftotext ends every page with a form feed.
        pages = result.stdout.decode("utf-8", "replace").split("\f")[: last - first + 1]
        return [page.strip() for page in pages] + [""] * (last - first + 1 - len(pages))


def _points(text: str) -> float:
    """A page side as pdfinfo printed it; 0 (no size: the page becomes an ``invalid_page_size`` row) when it is
    not a number."""
    try:
        return float(text)
    except ValueError:
        return 0.0
