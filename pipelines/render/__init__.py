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


#: Longest side of a page image: Pillow's JPEG encoder refuses more ("Maximum supported image dimension is 65500
#: pixels"); PNG allows more, but a page image must suit either format.
MAX_IMAGE_SIDE = 65_500
#: Largest aspect ratio (long side over short side) of a page image: the Qwen2-VL family's image processors
#: (ColQwen2, 2.5, 3: transformers' ``smart_resize``) refuse more than 200; ColPali, Idefics3 (ColSmol) and
#: ModernVBERT accept any (checked down to 1-pixel sides). A page beyond it is an ``invalid_page_size`` row:
#: at any pixel budget its short side is a few dozen pixels (63 at ColQwen's 602,112), nothing a model can read.
MAX_ASPECT_RATIO = 200


def target_size(width_pt: float, height_pt: float, max_pixels: int, max_dpi: float) -> tuple[int, int]:
    """Pixel size to render a page of ``width_pt x height_pt`` points at.

    The largest size with at most ``max_pixels`` pixels that keeps the aspect ratio, but never above
    ``max_dpi`` (upsampling a small page adds no information) nor :data:`MAX_IMAGE_SIDE` on a side, and
    never beyond :data:`MAX_ASPECT_RATIO` (a short side that rounding would make too short gets a pixel).
    Raises :class:`DocumentError` ``invalid_page_size`` for a page without a finite, positive area or with
    a more extreme aspect ratio, so every size returned is one every later step accepts.
    """
    if not (math.isfinite(width_pt) and math.isfinite(height_pt) and width_pt > 0 and height_pt > 0):
        msg = f"page has no finite area ({width_pt} x {height_pt} pt)"
        raise DocumentError("invalid_page_size", msg)
    long_pt, short_pt = max(width_pt, height_pt), min(width_pt, height_pt)
    if long_pt / short_pt > MAX_ASPECT_RATIO:
        msg = (
            f"page is {width_pt:g} x {height_pt:g} pt: aspect ratio {long_pt / short_pt:.4g}:1 is beyond the "
            f"{MAX_ASPECT_RATIO}:1 that page images may have (model processors refuse more)"
        )
        raise DocumentError("invalid_page_size", msg)
    scale = min(max_dpi / 72.0, math.sqrt(max_pixels / width_pt / height_pt), MAX_IMAGE_SIDE / long_pt)
    long_px = min(MAX_IMAGE_SIDE, max(1, math.floor(long_pt * scale)))
    short_px = max(1, math.floor(short_pt * scale), math.ceil(long_px / MAX_ASPECT_RATIO))
    long_px = max(1, min(long_px, max_pixels // short_px))  # the pixel the short side gained stays in the budget
    return (long_px, short_px) if width_pt >= height_pt else (short_px, long_px)


def fits(size: tuple[int, int]) -> bool:
    """Whether an image of ``size`` pixels is within :data:`MAX_IMAGE_SIDE` and :data:`MAX_ASPECT_RATIO`."""
    return min(size) >= 1 and max(size) <= MAX_IMAGE_SIDE and max(size) <= MAX_ASPECT_RATIO * min(size)
