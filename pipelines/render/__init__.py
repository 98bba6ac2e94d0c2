"""PDF renderers behind the rasterize stage: poppler's command-line tools and a pdfium worker process.

Both run out of the job's process, bounded (:mod:`pipelines.render.bounded`): a memory limit, a timeout
and capped output per child. A renderer opens a document (:class:`DocumentInfo`: page sizes in points
as displayed, title), renders runs of pages to PIL images at a given pixel size, and reads text layers.
Failures are :class:`DocumentError` with the reason recorded in the error row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

POPPLER, PDFIUM, AUTO = "poppler", "pdfium", "auto"
RENDERERS = (POPPLER, PDFIUM, AUTO)


class PageSize(NamedTuple):
    """A page's size in points as displayed (after /Rotate), whether it is turned a quarter, and whether
    it is rendered from its MediaBox (its CropBox has no area)."""

    width_pt: float
    height_pt: float
    sideways: bool = False
    mediabox: bool = False


class DocumentError(Exception):
    """A document (or page) cannot be rasterized; ``error_type`` is the recorded reason."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


@dataclass
class DocumentInfo:
    """What a renderer learned on opening a document."""

    renderer: str
    sizes: list[PageSize] = field(default_factory=list)
    title: str = ""

    @property
    def page_count(self) -> int:
        return len(self.sizes)


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
