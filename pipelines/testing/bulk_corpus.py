"""Deterministic bulk corpus: any number of pages, documents of mixed length and layout, for throughput runs.

The sample corpus (:mod:`pipelines.testing.corpus`, 19 pages) proves correctness; this one measures a steady
state. :func:`plan_bulk_corpus` draws documents from a seeded RNG until the page target is met, each from one
archetype with its own length range, page sizes and layouts, so the corpus has what a real collection has:
many short documents, a few long ones, portrait and landscape, slides, tables, charts and scanned (image-only)
pages. Text is random words (nothing here is meant to be retrieved); what matters is that pages differ in
size, ink and structure, which is what rendering and preprocessing costs depend on.

=============  ===========  =====================================================  ========================
archetype      pages        page sizes                                             layouts
=============  ===========  =====================================================  ========================
memo           1-3          Letter                                                 text
form           1-4          A5, Letter                                             scan (no text layer)
deck           8-40         16:9 slide (960x540 pt)                                slide, chart
report         6-60         A4, Letter (some landscape pages)                      text, columns, table,
                                                                                   chart, figure, sparse
sheet          2-12         Letter landscape                                       table
booklet        12-80        A5                                                     text, table, sparse
=============  ===========  =====================================================  ========================

Determinism: the same ``(pages, seed)`` gives byte-identical files (reportlab's invariant mode, a pinned
``SOURCE_DATE_EPOCH``, uncompressed page streams and in-process JPEG encoding of the scans, as for the sample
corpus). ``python -m pipelines.testing.bulk_corpus OUT_DIR --pages 1000`` writes it.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import pathlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw, ImageFilter
from reportlab.lib.pagesizes import A4, A5, LETTER, landscape
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen.canvas import Canvas

from pipelines.io import write_local_atomic
from pipelines.testing.corpus import SLIDE_16_9, _font, _pinned_source_date_epoch

__all__ = ["MANIFEST_NAME", "BulkDocument", "BulkPage", "generate_bulk_corpus", "main", "plan_bulk_corpus"]

MANIFEST_NAME = "bulk_manifest.json"

_WORDS = tuple(
    """
revenue margin quarter annual segment growth customer supplier inventory freight harbor vessel container
terminal logistics schedule warranty service repair safety pressure temperature valve pump filter sensor
survey reef coral bleaching sample transect station research analysis method result figure table chart
budget council notice permit road bridge water supply outage maintenance contract tender bid award
recipe flour butter oven minutes serve dough sauce season market price index rate yield bond equity risk
policy compliance audit report summary appendix section chapter overview outlook strategy capacity demand
network energy solar wind battery grid storage emission carbon target progress milestone delivery plan
""".split()  # noqa: SIM905
)

_PALETTE = [(0.18, 0.44, 0.62), (0.88, 0.63, 0.19), (0.35, 0.62, 0.35), (0.69, 0.29, 0.29), (0.48, 0.37, 0.66)]


@dataclass(frozen=True)
class BulkPage:
    """One planned page: its layout and size in PDF points."""

    layout: str
    width: float
    height: float


@dataclass(frozen=True)
class BulkDocument:
    """One planned document: file name, archetype, seed of its content, pages in order."""

    file_name: str
    archetype: str
    seed: int
    pages: tuple[BulkPage, ...]


# archetype: (weight, (min pages, max pages), page sizes, layouts with weights)
_ARCHETYPES: dict[str, tuple[float, tuple[int, int], tuple, dict[str, float]]] = {
    "memo": (0.30, (1, 3), (LETTER,), {"text": 1.0}),
    "form": (0.14, (1, 4), (A5, LETTER), {"scan": 1.0}),
    "deck": (0.14, (8, 40), (SLIDE_16_9,), {"slide": 0.75, "chart": 0.25}),
    "report": (
        0.22,
        (6, 60),
        (A4, LETTER, landscape(A4)),
        {"text": 0.4, "columns": 0.2, "table": 0.15, "chart": 0.1, "figure": 0.1, "sparse": 0.05},
    ),
    "sheet": (0.12, (2, 12), (landscape(LETTER),), {"table": 1.0}),
    "booklet": (0.06, (12, 80), (A5,), {"text": 0.7, "table": 0.2, "sparse": 0.1}),
}


def plan_bulk_corpus(pages: int = 1000, seed: int = 0) -> list[BulkDocument]:
    """The documents of a ``pages``-page corpus (exactly ``pages`` pages; the last document is cut to fit).

    Document lengths are drawn log-uniformly within each archetype's range, so short documents dominate
    and a few long ones hold many pages. Deterministic in ``(pages, seed)``.
    """
    if pages < 1:
        msg = f"a bulk corpus needs at least one page, got {pages}"
        raise ValueError(msg)
    rng = random.Random(seed)
    names = list(_ARCHETYPES)
    weights = [_ARCHETYPES[name][0] for name in names]
    docs: list[BulkDocument] = []
    remaining = pages
    while remaining > 0:
        archetype = rng.choices(names, weights)[0]
        _, (low, high), sizes, layouts = _ARCHETYPES[archetype]
        n = min(remaining, max(low, min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))))
        size = sizes[0] if archetype != "report" else rng.choice(sizes[:2])
        planned = []
        for number in range(n):
            if archetype == "form":
                size = rng.choice(sizes)
            layout = rng.choices(list(layouts), list(layouts.values()))[0]
            if archetype in ("report", "booklet") and number == 0:
                layout = "sparse"  # a title page
            width, height = size
            if archetype == "report" and layout in ("table", "chart") and rng.random() < 0.3:
                width, height = landscape(size)
            planned.append(BulkPage(layout, float(width), float(height)))
        docs.append(
            BulkDocument(f"bulk-{len(docs):05d}-{archetype}.pdf", archetype, rng.getrandbits(32), tuple(planned))
        )
        remaining -= n
    return docs


# ---------------------------------------------------------------------------------------------------------------------
# Page layouts: each draws one page on the canvas from the document's RNG.
# ---------------------------------------------------------------------------------------------------------------------


def _sentence(rng: random.Random, low: int = 6, high: int = 16) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
    if rng.random() < 0.4:
        words.insert(rng.randrange(len(words)), f"{rng.randint(1, 999)},{rng.randint(0, 999):03d}")
    return " ".join(words).capitalize() + "."


def _wrap(text: str, width_pt: float, font_size: float) -> list[str]:
    """Greedy wrap by an average glyph width (0.5 em): close enough for filler text, and cheap."""
    per_line = max(8, int(width_pt / (font_size * 0.5)))
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > per_line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines


def _text_block(
    c: Canvas, rng: random.Random, x: float, top: float, width: float, bottom: float, size: float
) -> float:
    """Paragraphs of filler text from ``top`` down to ``bottom``; returns where it stopped."""
    c.setFont("Times-Roman", size)
    leading = size * 1.3
    y = top
    while y - leading > bottom:
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        for line in _wrap(paragraph, width, size):
            if y - leading < bottom:
                return y
            c.drawString(x, y - size, line)
            y -= leading
        y -= leading * 0.6
    return y


def _heading(c: Canvas, rng: random.Random, x: float, y: float, size: float) -> None:
    c.setFont("Helvetica-Bold", size)
    c.drawString(x, y, " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5))).title())


def _margins(w: float, h: float) -> float:
    return max(28.0, min(w, h) * 0.08)


def _draw_text(c: Canvas, rng: random.Random, w: float, h: float) -> None:
    m = _margins(w, h)
    _heading(c, rng, m, h - m - 14, 15)
    _text_block(c, rng, m, h - m - 30, w - 2 * m, m, rng.choice([9.5, 10.5, 11.5]))


def _draw_columns(c: Canvas, rng: random.Random, w: float, h: float) -> None:
    m = _margins(w, h)
    _heading(c, rng, m, h - m - 14, 14)
    gap = 18
    col = (w - 2 * m - gap) / 2
    for i in range(2):
        _text_block(c, rng, m + i * (col + gap), h - m - 30, col, m, 9)


def _draw_table(c: Canvas, rng: random.Random, w: float, h: float) -> None:
    m = _margins(w, h)
    _heading(c, rng, m, h - m - 14, 13)
    cols = rng.randint(4, 9)
    row_h = rng.choice([13.0, 15.0, 18.0])
    rows = int((h - 2 * m - 40) / row_h)
    col_w = (w - 2 * m) / cols
    top = h - m - 30
    c.setFillColorRGB(0.12, 0.16, 0.27)
    c.rect(m, top - row_h, w - 2 * m, row_h, stroke=0, fill=1)
    c.setFillColorRGB(1, 1, 1)
    c.setFont("Helvetica-Bold", 8)
    for j in range(cols):
        c.drawString(m + j * col_w + 3, top - row_h + 4, rng.choice(_WORDS)[:12].title())
    c.setFont("Helvetica", 8)
    for i in range(1, rows):
        y = top - (i + 1) * row_h
        if i % 2 == 0:
            c.setFillColorRGB(0.93, 0.95, 0.97)
            c.rect(m, y, w - 2 * m, row_h, stroke=0, fill=1)
        c.setFillColorRGB(0.1, 0.1, 0.1)
        c.drawString(m + 3, y + 4, rng.choice(_WORDS)[:14])
        for j in range(1, cols):
            c.drawRightString(m + (j + 1) * col_w - 3, y + 4, f"{rng.uniform(-500, 9999):,.1f}")
    c.setStrokeColorRGB(0.3, 0.3, 0.3)
    c.line(m, top - rows * row_h, w - m, top - rows * row_h)


def _draw_chart(c: Canvas, rng: random.Random, w: float, h: float) -> None:
    m = _margins(w, h)
    _heading(c, rng, m, h - m - 14, 14)
    x0, y0, cw, ch = m + 30, m + 30, w - 2 * m - 40, h - 2 * m - 80
    c.setStrokeColorRGB(0, 0, 0)
    c.line(x0, y0, x0 + cw, y0)
    c.line(x0, y0, x0, y0 + ch)
    c.setFont("Helvetica", 7)
    for k in range(6):
        c.drawRightString(x0 - 4, y0 + k * ch / 5 - 2, f"{k * 20}")
    n = rng.randint(5, 14)
    series = rng.randint(1, 3)
    if rng.random() < 0.5:
        bar = cw / (n * (series + 1))
        for i in range(n):
            for s in range(series):
                c.setFillColorRGB(*_PALETTE[s])
                c.rect(x0 + (i * (series + 1) + s + 0.5) * bar, y0, bar, rng.uniform(0.05, 1) * ch, stroke=0, fill=1)
    else:
        for s in range(series):
            c.setStrokeColorRGB(*_PALETTE[s])
            c.setLineWidth(1.5)
            value = rng.uniform(0.2, 0.8)
            points = []
            for i in range(n):
                value = min(1.0, max(0.0, value + rng.uniform(-0.15, 0.15)))
                points.append((x0 + i * cw / (n - 1), y0 + value * ch))
            for a, b in itertools.pairwise(points):
                c.line(*a, *b)
    c.setFont("Times-Italic", 9)
    c.setFillColorRGB(0, 0, 0)
    c.drawString(m, m + 6, _sentence(rng, 5, 10))


def _draw_figure(c: Canvas, rng: random.Random, w: float, h: float) -> None:
    m = _margins(w, h)
    for _ in range(rng.randint(15, 60)):
        c.setFillColorRGB(*rng.choice(_PALETTE))
        c.setStrokeColorRGB(*rng.choice(_PALETTE))
        x, y = rng.uniform(m, w - m), rng.uniform(m + h * 0.3, h - m)
        r = rng.uniform(5, min(w, h) * 0.08)
        if rng.random() < 0.5:
            c.circle(x, y, r, stroke=1, fill=rng.random() < 0.6)
        else:
            c.rect(x - r, y - r, 2 * r, 1.4 * r, stroke=1, fill=rng.random() < 0.6)
    c.setFillColorRGB(0, 0, 0)
    _text_block(c, rng, m, h * 0.3, w - 2 * m, m, 9.5)


def _draw_sparse(c: Canvas, rng: random.Random, w: float, h: float) -> None:
    c.setFont("Helvetica-Bold", 24)
    c.drawCentredString(w / 2, h * 0.6, " ".join(rng.choice(_WORDS) for _ in range(3)).title())
    c.setFont("Helvetica", 12)
    c.drawCentredString(w / 2, h * 0.6 - 30, f"{rng.choice(_WORDS).title()} {rng.randint(2000, 2030)}")


def _draw_slide(c: Canvas, rng: random.Random, w: float, h: float) -> None:
    c.setFillColorRGB(0.06, 0.13, 0.2)
    c.rect(0, h - 80, w, 80, stroke=0, fill=1)
    c.setFillColorRGB(1, 1, 1)
    _heading(c, rng, 40, h - 52, 28)
    c.setFillColorRGB(0.1, 0.1, 0.1)
    c.setFont("Helvetica", 20)
    y = h - 130
    for _ in range(rng.randint(2, 6)):
        c.drawString(60, y, "\u2022 " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 8))))
        y -= 44
    c.setFillColorRGB(0.94, 0.54, 0.14)
    c.rect(w - 260, 60, rng.uniform(80, 200), rng.uniform(60, 200), stroke=0, fill=1)


def _draw_scan(c: Canvas, rng: random.Random, w: float, h: float) -> None:
    """A scanned form: a grey raster with text and boxes drawn into it, JPEG-encoded; no text layer."""
    dpi = 100
    size = (int(w / 72 * dpi), int(h / 72 * dpi))
    image = Image.new("L", size, 238)
    draw = ImageDraw.Draw(image)
    font = _font("DejaVuSans.ttf", 14)
    y = 40
    while y < size[1] - 60:
        if rng.random() < 0.25:
            draw.rectangle([40, y, size[0] - 40, y + 38], outline=70, width=2)
        draw.text((50, y + 10), _sentence(rng, 3, 8)[:70], fill=rng.randint(10, 70), font=font)
        y += rng.randint(42, 70)
    image = image.rotate(rng.uniform(-1.2, 1.2), fillcolor=238).filter(ImageFilter.GaussianBlur(0.6))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    c.drawImage(ImageReader(io.BytesIO(buffer.getvalue())), 0, 0, w, h)


_LAYOUTS = {
    "text": _draw_text,
    "columns": _draw_columns,
    "table": _draw_table,
    "chart": _draw_chart,
    "figure": _draw_figure,
    "sparse": _draw_sparse,
    "slide": _draw_slide,
    "scan": _draw_scan,
}


def _render(doc: BulkDocument) -> bytes:
    rng = random.Random(doc.seed)
    buffer = io.BytesIO()
    first = doc.pages[0]
    with _pinned_source_date_epoch():
        c = Canvas(buffer, pagesize=(first.width, first.height), invariant=1, pageCompression=0, lang="en")
    c.setTitle(doc.file_name.removesuffix(".pdf"))
    c.setCreator("pipelines.testing.bulk_corpus")
    for number, page in enumerate(doc.pages, 1):
        c.setPageSize((page.width, page.height))
        _LAYOUTS[page.layout](c, rng, page.width, page.height)
        if page.layout != "scan":  # a scan has no text layer at all
            c.setFont("Helvetica", 7)
            c.setFillColorRGB(0.5, 0.5, 0.5)
            c.drawCentredString(page.width / 2, 12, f"{doc.file_name} - {number}/{len(doc.pages)}")
        c.showPage()
    c.save()
    return buffer.getvalue()


def generate_bulk_corpus(out_dir: str | os.PathLike[str], pages: int = 1000, seed: int = 0) -> list[pathlib.Path]:
    """Write the planned PDFs and :data:`MANIFEST_NAME` (the plan as JSON) into ``out_dir``; return the PDF paths.

    Byte-for-byte deterministic in ``(pages, seed)`` and idempotent. About 30 ms per page on one core.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = plan_bulk_corpus(pages, seed)
    paths = []
    for doc in docs:
        path = out / doc.file_name
        write_local_atomic(path, _render(doc))
        paths.append(path)
    manifest = {"pages": pages, "seed": seed, "documents": [asdict(doc) for doc in docs]}
    write_local_atomic(out / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.testing.bulk_corpus", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir")
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = generate_bulk_corpus(args.out_dir, args.pages, args.seed)
    docs = plan_bulk_corpus(args.pages, args.seed)
    by_archetype: dict[str, list[int]] = {}
    for doc in docs:
        by_archetype.setdefault(doc.archetype, []).append(len(doc.pages))
    print(f"{args.out_dir}: {len(paths)} PDFs, {args.pages} pages")
    for name, lengths in sorted(by_archetype.items()):
        print(f"  {name:8s} {len(lengths):4d} documents, {sum(lengths):5d} pages ({min(lengths)}-{max(lengths)} each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
