"""Deterministic sample corpus for the demo and the tests.

Everything is generated in code (no binaries in the repository): six small PDFs (19 pages) covering the layouts a
visual retriever has to cope with, plus ``queries.jsonl`` naming the page that answers each query.

* text pages on clearly distinct subjects (annual report, coral-reef research note, espresso-machine manual, recipe
  booklet, product-launch slides, a public-works notice), each with distinctive vocabulary;
* table pages (platypus ``Table``), chart pages (``reportlab.graphics`` bar / line charts);
* one image-only page (a scanned-looking warranty card rasterised with PIL) that has **no text layer**, so only a
  visual model can retrieve it;
* Letter, A4, A5 and 16:9 slide (960x540 pt) page sizes, portrait and landscape, mixed within documents, and a
  one-page document.

Determinism contract: for a fixed set of installed package versions (pinned by ``uv.lock``), the output is
byte-for-byte identical across runs, machines, output directories and time zones, so document content hashes are
stable. This is achieved by reportlab's invariant mode (fixed creation date and document ID), a pinned
``SOURCE_DATE_EPOCH`` (which reportlab would otherwise honour), uncompressed page streams plus a JPEG-encoded scan
(so neither the system zlib nor its version can change the bytes), a font shipped with reportlab and a fixed layout
engine for the raster text, and a seeded RNG.

``python -m pipelines.testing.corpus OUT_DIR`` generates the corpus and prints what it wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import pathlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import reportlab
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from reportlab.graphics import renderPDF
from reportlab.graphics.charts.barcharts import HorizontalBarChart, VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.linecharts import HorizontalLineChart
from reportlab.graphics.shapes import Drawing, Group, String
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4, A5, LETTER, landscape
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Frame, Paragraph, Spacer, Table, TableStyle

from pipelines.io import write_local_atomic
from pipelines.queries import QueryFileError, read_objects

__all__ = [
    "CORPUS_PAGES",
    "EXPECTED_PAGE_COUNTS",
    "QUERIES_FILE_NAME",
    "SLIDE_16_9",
    "PageSpec",
    "SampleQuery",
    "generate_sample_corpus",
    "load_queries",
    "main",
]

QUERIES_FILE_NAME = "queries.jsonl"
SLIDE_16_9: tuple[float, float] = (960.0, 540.0)

PageKind = Literal["text", "table", "chart", "image"]


@dataclass(frozen=True)
class SampleQuery:
    """A retrieval query and the (file, 1-based page) that answers it."""

    query: str
    file_name: str
    page_number: int


@dataclass(frozen=True)
class PageSpec:
    """What the generator promises about one page.

    ``size`` is (width, height) in PDF points as written to the MediaBox. ``keywords`` are distinctive words that
    are guaranteed to be in the page's extractable text layer (case-insensitive); they are empty exactly for
    ``kind == "image"`` pages, which have no text layer at all.
    """

    size: tuple[float, float]
    kind: PageKind
    keywords: tuple[str, ...]

    @property
    def orientation(self) -> Literal["portrait", "landscape"]:
        return "landscape" if self.size[0] > self.size[1] else "portrait"


DrawFn = Callable[[Canvas, float, float], None]


@dataclass(frozen=True)
class _Page:
    spec: PageSpec
    draw: DrawFn
    queries: tuple[str, ...]


@dataclass(frozen=True)
class _Document:
    file_name: str
    title: str
    author: str
    subject: str
    pages: tuple[_Page, ...]


# ---------------------------------------------------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------------------------------------------------

_STYLES = getSampleStyleSheet()
_BODY = ParagraphStyle("CorpusBody", parent=_STYLES["BodyText"], fontName="Times-Roman", fontSize=11, leading=14.5)
_BODY_SMALL = ParagraphStyle("CorpusBodySmall", parent=_BODY, fontSize=9.5, leading=12.5)
_H1 = ParagraphStyle("CorpusH1", parent=_STYLES["Heading1"], fontName="Helvetica-Bold", fontSize=18, leading=22)
_H2 = ParagraphStyle("CorpusH2", parent=_STYLES["Heading2"], fontName="Helvetica-Bold", fontSize=13, leading=16)
_CAPTION = ParagraphStyle("CorpusCaption", parent=_BODY, fontName="Times-Italic", fontSize=9.5, leading=12)
_BULLET = ParagraphStyle("CorpusBullet", parent=_BODY, leftIndent=14, bulletIndent=2)
_CELL = ParagraphStyle("CorpusCell", parent=_BODY_SMALL, fontName="Helvetica", fontSize=8.5, leading=10.5)

_INK = colors.HexColor("#1F2A44")
_ACCENT = colors.HexColor("#2E6F9E")
_PALETTE = [colors.HexColor(c) for c in ("#2E6F9E", "#E0A030", "#5A9E5A", "#B04A4A", "#7A5EA8")]


def _p(text: str, style: ParagraphStyle = _BODY) -> Paragraph:
    return Paragraph(text, style)


def _flow(c: Canvas, story: Sequence[Flowable], x: float, y: float, width: float, height: float) -> None:
    """Lay ``story`` out in the box with lower-left corner (x, y); raise if it does not fit.

    A Frame silently leaves flowables that do not fit behind, which would drop text (and keywords) from the page.
    """
    pending = list(story)
    Frame(x, y, width, height, leftPadding=0, rightPadding=0, topPadding=0, bottomPadding=0).addFromList(pending, c)
    if pending:
        msg = f"{len(pending)} flowable(s) did not fit on the page, first: {pending[0]!r:.80}"
        raise RuntimeError(msg)


def _running_header(c: Canvas, w: float, h: float, left: str, right: str, margin: float) -> None:
    c.saveState()
    c.setFont("Helvetica", 8)
    c.setFillColor(colors.grey)
    c.drawString(margin, h - margin + 14, left)
    c.drawRightString(w - margin, h - margin + 14, right)
    c.setStrokeColor(colors.lightgrey)
    c.setLineWidth(0.5)
    c.line(margin, h - margin + 10, w - margin, h - margin + 10)
    c.restoreState()


def _footer(c: Canvas, w: float, text: str, margin: float) -> None:
    c.saveState()
    c.setFont("Helvetica", 8)
    c.setFillColor(colors.grey)
    c.drawCentredString(w / 2, margin / 2, text)
    c.restoreState()


def _text_page(
    header: tuple[str, str], footer: str, story_fn: Callable[[], list[Flowable]], margin: float = 0.9 * 72
) -> DrawFn:
    """A conventional document page: running header, body flowed into the margins, footer."""

    def draw(c: Canvas, w: float, h: float) -> None:
        _running_header(c, w, h, header[0], header[1], margin)
        _footer(c, w, footer, margin)
        _flow(c, story_fn(), margin, margin, w - 2 * margin, h - 2 * margin)

    return draw


def _table(
    rows: list[list[str]], col_widths: list[float], *, numeric_from_col: int = 1, total_row: bool = False
) -> Table:
    """A report-style table: dark header, zebra rows, right-aligned numeric columns, optional bold total row."""
    t = Table(rows, colWidths=col_widths, repeatRows=1, hAlign="LEFT")
    style = [
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 9),
        ("FONT", (0, 1), (-1, -1), "Helvetica", 9),
        ("BACKGROUND", (0, 0), (-1, 0), _INK),
        ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
        ("ALIGN", (numeric_from_col, 0), (-1, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("LINEBELOW", (0, 0), (-1, 0), 1, _INK),
        ("LINEBELOW", (0, -1), (-1, -1), 0.75, _INK),
        ("TOPPADDING", (0, 0), (-1, -1), 4),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
    ]
    for r in range(1, len(rows)):
        if r % 2 == 0:
            style.append(("BACKGROUND", (0, r), (-1, r), colors.HexColor("#EEF2F7")))
    if total_row:
        style += [
            ("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 9),
            ("LINEABOVE", (0, -1), (-1, -1), 0.75, _INK),
            ("BACKGROUND", (0, -1), (-1, -1), colors.HexColor("#DCE5F0")),
        ]
    t.setStyle(TableStyle(style))
    return t


def _legend(
    x: float,
    y: float,
    items: list[tuple[colors.Color, str]],
    *,
    columns: int = 1,
    anchor: str = "nw",
    col_width: int = 90,
) -> Legend:
    """A colour-swatch legend anchored at (x, y); items fill ``columns`` columns of ``col_width`` points."""
    lg = Legend()
    lg.x, lg.y = x, y
    lg.fontName, lg.fontSize = "Helvetica", 9
    lg.alignment = "right"
    lg.boxAnchor = anchor
    lg.columnMaximum = max(1, -(-len(items) // columns))
    lg.dx = lg.dy = 8
    lg.deltax, lg.deltay = col_width, 12
    lg.colorNamePairs = items
    return lg


def _fits(drawing: Drawing, w: float, h: float) -> Drawing:
    """Sanity check so a chart never silently spills off its page."""
    if drawing.width > w or drawing.height > h:
        msg = f"drawing {drawing.width}x{drawing.height} does not fit in {w}x{h}"
        raise RuntimeError(msg)
    return drawing


# ---------------------------------------------------------------------------------------------------------------------
# Document 1: annual report (Letter, portrait pages with one landscape chart page)
# ---------------------------------------------------------------------------------------------------------------------

_AR_HEADER = ("Northwind Harbor Logistics", "Annual Report 2023")

_AR_REVENUE = {  # USD millions; the story text below quotes these numbers, keep them in sync
    "North America": (412.6, 438.1, 455.9, 497.3),
    "Europe": (356.2, 341.8, 362.4, 389.0),
    "Asia Pacific": (298.4, 327.5, 351.2, 402.7),
    "Latin America": (88.9, 94.3, 97.6, 104.1),
    "Middle East & Africa": (61.5, 66.2, 70.8, 75.4),
}

_AR_MARGIN = {  # operating margin (%) by segment for 2021, 2022, 2023
    "Ocean Freight": (14.2, 18.9, 11.7),
    "Air Cargo": (9.8, 7.1, 5.4),
    "Warehousing": (12.5, 13.8, 15.2),
    "Customs Brokerage": (21.3, 22.0, 23.6),
}


def _ar_letter() -> list[Flowable]:
    return [
        _p("Letter from the Chief Executive", _H1),
        _p(
            "Dear shareholders, 2023 was the year Northwind Harbor Logistics proved that a diversified freight "
            "network can grow through a normalising shipping cycle. Container throughput across our twelve "
            "terminal partnerships reached 4.8 million TEU, up 6 percent, while consolidated revenue rose to "
            "USD 5.49 billion. Net income was USD 412 million, a record for the company."
        ),
        _p(
            "The most important investment of the year was the opening of our cold-chain warehouse in Rotterdam, "
            "a 38,000 square metre facility with automated pallet shuttles and temperature zones from minus 25 to "
            "plus 15 degrees Celsius. It already handles pharmaceutical and fresh-produce flows for eleven "
            "customers and gives us a second European gateway next to Antwerp."
        ),
        _p(
            "Ocean freight rates fell sharply from their pandemic peak, which compressed margins in our forwarding "
            "business. We responded by renegotiating carrier allocations, consolidating less-than-container-load "
            "volumes and shifting sales effort toward contract logistics, where pricing is stickier and customer "
            "relationships last longer."
        ),
        _p(
            "Reflecting our confidence in the balance sheet, the Board proposes a dividend of USD 1.85 per share, "
            "an increase of 12 percent on the prior year, and a share buyback programme of up to USD 150 million. "
            "Our net debt to EBITDA ratio ended the year at 1.1 times."
        ),
        _p(
            "I want to thank our 21,400 colleagues, who moved freight through port strikes, a drought in the Panama "
            "Canal and record-breaking heat in our Gulf Coast yards without a single lost-time incident in the "
            "fourth quarter. Their professionalism is the foundation of everything in this report."
        ),
        Spacer(1, 10),
        _p("<i>Margaret Okonkwo-Reyes</i><br/>Chief Executive Officer, Northwind Harbor Logistics"),
    ]


def _ar_revenue_table() -> list[Flowable]:
    rows = [["Region", "Q1 2023", "Q2 2023", "Q3 2023", "Q4 2023", "FY 2023"]]
    totals = [0.0] * 5
    for region, quarters in _AR_REVENUE.items():
        fy = sum(quarters)
        rows.append([region, *(f"{q:,.1f}" for q in quarters), f"{fy:,.1f}"])
        for i, v in enumerate((*quarters, fy)):
            totals[i] += v
    rows.append(["Total", *(f"{v:,.1f}" for v in totals)])
    return [
        _p("Quarterly Revenue by Region", _H1),
        _p(
            "The table below shows quarterly revenue by region for fiscal year 2023 in USD millions. Asia Pacific "
            "was the fastest-growing region, driven by new transpacific e-commerce contracts and the ramp-up of our "
            "Ho Chi Minh City hub, while Latin America benefited from nearshoring flows into Mexico."
        ),
        Spacer(1, 8),
        _table(rows, [130, 66, 66, 66, 66, 72], total_row=True),
        Spacer(1, 6),
        _p(
            "Table 3. Quarterly revenue by region (unaudited, USD millions). Totals may not add up due to rounding.",
            _CAPTION,
        ),
        Spacer(1, 10),
        _p("Commentary", _H2),
        _p(
            "North America delivered the highest fourth quarter revenue at USD 497.3 million as retail customers "
            "restocked ahead of the holiday season. Europe dipped in the second quarter because of the Rhine "
            "low-water surcharges we chose not to pass on to customers, and recovered once barge capacity "
            "returned. Middle East &amp; Africa remains our smallest region but grew every quarter, helped by project "
            "cargo for solar farms in Morocco and Saudi Arabia."
        ),
    ]


def _ar_margin_chart(c: Canvas, w: float, h: float) -> None:
    margin = 0.75 * 72
    _running_header(c, w, h, *_AR_HEADER, margin=margin)
    _footer(c, w, "3", margin)
    _flow(
        c,
        [
            _p("Operating Margin by Business Segment", _H1),
            _p(
                "Operating margin (%) for each business segment, fiscal years 2021 to 2023. Customs Brokerage and "
                "Warehousing expanded margins every year, while Air Cargo margins declined as belly capacity "
                "returned to passenger aircraft.",
                _BODY_SMALL,
            ),
        ],
        margin,
        h - margin - 80,
        w - 2 * margin,
        80,
    )
    years = ("2021", "2022", "2023")
    d = Drawing(w - 2 * margin, h - 2 * margin - 110)
    chart = VerticalBarChart()
    chart.x, chart.y = 60, 55
    chart.width, chart.height = d.width - 230, d.height - 90
    chart.data = [tuple(v[i] for v in _AR_MARGIN.values()) for i in range(len(years))]
    chart.categoryAxis.categoryNames = list(_AR_MARGIN)
    chart.categoryAxis.labels.fontName = "Helvetica"
    chart.categoryAxis.labels.fontSize = 9
    chart.categoryAxis.labels.dy = -4
    chart.valueAxis.valueMin, chart.valueAxis.valueMax, chart.valueAxis.valueStep = 0, 25, 5
    chart.valueAxis.labels.fontName = "Helvetica"
    chart.valueAxis.visibleGrid = True
    chart.valueAxis.gridStrokeColor = colors.HexColor("#DDDDDD")
    chart.barSpacing, chart.groupSpacing = 2, 14
    for i in range(len(years)):
        chart.bars[i].fillColor = _PALETTE[i]
        chart.bars[i].strokeColor = None
    chart.barLabelFormat = "%.1f"
    chart.barLabels.fontName, chart.barLabels.fontSize, chart.barLabels.nudge = "Helvetica", 7, 7
    d.add(chart)
    d.add(
        String(
            chart.x + chart.width / 2,
            d.height - 16,
            "Figure 4. Operating margin by segment, 2021-2023",
            fontName="Helvetica-Bold",
            fontSize=12,
            fillColor=_INK,
            textAnchor="middle",
        )
    )
    d.add(
        String(
            chart.x + chart.width / 2, 14, "Business segment", fontName="Helvetica", fontSize=10, textAnchor="middle"
        )
    )
    # shapes.String cannot rotate, so the vertical y-axis title is a String inside a rotated Group
    g = Group(String(0, 0, "Operating margin (%)", fontName="Helvetica", fontSize=10, textAnchor="middle"))
    g.transform = (0, 1, -1, 0, 22, chart.y + chart.height / 2)
    d.add(g)
    d.add(
        _legend(
            chart.x + chart.width + 30, chart.y + chart.height, [(_PALETTE[i], f"FY {y}") for i, y in enumerate(years)]
        )
    )
    renderPDF.draw(_fits(d, w, h), c, margin, margin)


def _ar_outlook() -> list[Flowable]:
    return [
        _p("Sustainability and 2024 Outlook", _H1),
        _p("Decarbonising the last mile of port logistics", _H2),
        _p(
            "Drayage, the short truck haul between marine terminals and inland warehouses, is the most visible "
            "source of emissions in the communities around our ports. In 2023 we deployed 64 battery-electric "
            "drayage trucks in Long Beach and Savannah and installed 28 fast chargers at our yards. Together with "
            "shore power at two berths, this reduced our Scope 1 emissions by 14 percent against the 2021 baseline."
        ),
        _p(
            "Scope 3 emissions from subcontracted ocean and air carriers remain more than 90 percent of our "
            "footprint. We signed our first book-and-claim agreement for sustainable aviation fuel and joined a "
            "green shipping corridor initiative between Singapore and Rotterdam to secure methanol-ready vessel "
            "capacity from 2026."
        ),
        _p("Outlook for 2024", _H2),
        _p(
            "We expect revenue growth of 4 to 6 percent in 2024, with contract logistics and customs brokerage "
            "growing faster than freight forwarding. Capital expenditure is planned at USD 310 million, of which "
            "roughly one third is earmarked for electric trucks, charging infrastructure and warehouse solar "
            "roofs. Guidance assumes container spot rates remain close to their December 2023 level and excludes "
            "any further disruption in the Red Sea."
        ),
        _p(
            "Key risks include a slowdown in consumer demand in North America, labour negotiations at East Coast "
            "ports, and currency volatility in our Latin American operations. Our scenario planning and hedging "
            "policies are described in the risk management section of this report."
        ),
    ]


_ANNUAL_REPORT = _Document(
    file_name="annual_report_2023.pdf",
    title="Northwind Harbor Logistics - Annual Report 2023",
    author="Northwind Harbor Logistics",
    subject="Annual report, fiscal year 2023",
    pages=(
        _Page(
            PageSpec(LETTER, "text", ("throughput", "cold-chain", "Rotterdam", "dividend")),
            _text_page(_AR_HEADER, "1", _ar_letter),
            (
                "By how much did the dividend per share increase in 2023?",
                "new cold-chain warehouse opened in Rotterdam",
            ),
        ),
        _Page(
            PageSpec(LETTER, "table", ("Quarterly", "Asia Pacific", "Latin America", "fourth quarter")),
            _text_page(_AR_HEADER, "2", _ar_revenue_table),
            (
                "Which region had the highest fourth quarter revenue?",
                "table of quarterly revenue by region for Asia Pacific and Latin America",
            ),
        ),
        _Page(
            PageSpec(landscape(LETTER), "chart", ("Operating margin", "Air Cargo", "Customs Brokerage")),
            _ar_margin_chart,
            ("bar chart of operating margin by business segment", "how did the air cargo margin change since 2021"),
        ),
        _Page(
            PageSpec(LETTER, "text", ("drayage", "battery-electric", "emissions", "shore power")),
            _text_page(_AR_HEADER, "4", _ar_outlook),
            ("Scope 1 emissions reduction from battery-electric drayage trucks and shore power",),
        ),
    ),
)

# ---------------------------------------------------------------------------------------------------------------------
# Document 2: research note (A4 portrait)
# ---------------------------------------------------------------------------------------------------------------------

_RN_HEADER = ("Reef Ecology Research Note 2024-07", "Marine heatwaves and coral bleaching")

_RN_BLEACHING = {  # % of surveyed coral cover bleached, 2016-2024
    "Northern zone": (62, 18, 9, 7, 41, 12, 33, 20, 58),
    "Central zone": (31, 12, 6, 5, 36, 9, 27, 15, 44),
    "Southern zone": (8, 4, 3, 2, 22, 5, 14, 9, 29),
}
_RN_YEARS = tuple(str(y) for y in range(2016, 2025))


def _rn_intro() -> list[Flowable]:
    return [
        _p("Marine Heatwaves and Coral Bleaching on the Great Barrier Reef", _H1),
        _p("<i>T. Nakamura, L. Fitzgerald-Ahmed and R. Okafor — Institute for Tropical Reef Ecology</i>", _BODY_SMALL),
        Spacer(1, 6),
        _p("Abstract", _H2),
        _p(
            "Mass coral bleaching occurs when prolonged marine heatwaves break down the symbiosis between "
            "reef-building corals and their photosynthetic algae, the zooxanthellae. Without these symbionts the "
            "coral tissue turns transparent, exposing the white calcium carbonate skeleton, and colonies starve if "
            "temperatures do not fall within a few weeks. We compiled nine years of aerial and in-water surveys to "
            "quantify how bleaching severity scales with accumulated heat stress across three latitudinal zones."
        ),
        _p("Introduction", _H2),
        _p(
            "The Great Barrier Reef experienced its first recorded mass bleaching event in 1998 and has since been "
            "hit by events in 2002, 2016, 2017, 2020, 2022 and 2024. Fast-growing branching taxa such as "
            "<i>Acropora</i> and <i>Pocillopora</i> are the most susceptible, whereas massive <i>Porites</i> "
            "colonies often survive with partial mortality. Repeated events shorten the recovery window, which for "
            "a typical mid-shelf reef is ten to fifteen years."
        ),
        _p(
            "Heat stress is usually summarised as degree heating weeks, the accumulation of sea surface temperature "
            "anomalies above the local maximum monthly mean over a rolling twelve-week window. Values above four "
            "degree heating weeks are associated with significant bleaching, and values above eight with widespread "
            "mortality. This note asks whether those thresholds still hold for reefs that have bleached repeatedly "
            "and may have acquired more heat-tolerant symbionts."
        ),
    ]


def _rn_methods() -> list[Flowable]:
    return [
        _p("Methods", _H1),
        _p("Survey design", _H2),
        _p(
            "We surveyed 42 reef sites between Lizard Island in the north and the Capricorn Bunker Group in the "
            "south. At each site divers swam three permanent 50 metre belt transects at 3 to 5 metres depth on the "
            "exposed reef slope, recording every coral colony within one metre of the tape as healthy, pale, "
            "bleached or recently dead. Photo quadrats of one square metre were taken every five metres along each "
            "transect for later verification."
        ),
        _p("Heat stress", _H2),
        _p(
            "Daily satellite sea surface temperature at 5 km resolution was obtained for the pixel closest to each "
            "site. Degree heating weeks were computed as the sum of daily HotSpot values of at least 1 °C, divided "
            "by seven, over the preceding 84 days. The annual maximum of that series was used as the heat stress "
            "predictor for the survey year."
        ),
        _p("Statistical analysis", _H2),
        _p(
            "The proportion of bleached colonies per transect was modelled with a mixed-effects logistic regression "
            "with degree heating weeks, latitudinal zone and their interaction as fixed effects and site as a "
            "random intercept. Models were fitted in R using restricted maximum likelihood; confidence intervals "
            "were obtained by parametric bootstrap with 2,000 replicates."
        ),
        _p(
            "All transect data, photo quadrat annotations and analysis scripts are archived in the institute's open "
            "data repository under a CC-BY licence.",
            _CAPTION,
        ),
    ]


def _rn_results(c: Canvas, w: float, h: float) -> None:
    margin = 0.9 * 72
    _running_header(c, w, h, *_RN_HEADER, margin=margin)
    _footer(c, w, "3", margin)
    top = [
        _p("Results", _H1),
        _p(
            "Bleached coral cover tracked accumulated heat stress closely in every year of the record (Figure 2). "
            "The Northern zone, closest to the equator, bleached most severely in 2016 and again in 2024, while "
            "the Southern zone stayed below ten percent until the 2020 heatwave.",
        ),
    ]
    _flow(c, top, margin, h - margin - 100, w - 2 * margin, 100)

    d = Drawing(w - 2 * margin, 330)
    chart = HorizontalLineChart()
    chart.x, chart.y, chart.width, chart.height = 50, 70, d.width - 70, 220
    chart.data = list(_RN_BLEACHING.values())
    chart.categoryAxis.categoryNames = list(_RN_YEARS)
    chart.categoryAxis.labels.fontName = "Helvetica"
    chart.categoryAxis.labels.fontSize = 9
    chart.valueAxis.valueMin, chart.valueAxis.valueMax, chart.valueAxis.valueStep = 0, 70, 10
    chart.valueAxis.labels.fontName = "Helvetica"
    chart.valueAxis.visibleGrid = True
    chart.valueAxis.gridStrokeColor = colors.HexColor("#DDDDDD")
    markers = ("FilledCircle", "FilledSquare", "FilledDiamond")
    for i in range(len(_RN_BLEACHING)):
        chart.lines[i].strokeColor = _PALETTE[i]
        chart.lines[i].strokeWidth = 1.8
        chart.lines[i].symbol = makeMarker(markers[i], size=5, fillColor=_PALETTE[i], strokeColor=_PALETTE[i])
    d.add(chart)
    d.add(
        String(
            chart.x + chart.width / 2,
            d.height - 14,
            "Bleached coral cover by reef zone, 2016-2024",
            fontName="Helvetica-Bold",
            fontSize=11,
            textAnchor="middle",
            fillColor=_INK,
        )
    )
    d.add(String(chart.x + chart.width / 2, 38, "Survey year", fontName="Helvetica", fontSize=9, textAnchor="middle"))
    d.add(String(chart.x, chart.y + chart.height + 8, "Bleached cover (%)", fontName="Helvetica", fontSize=9))
    zones = [(_PALETTE[i], z) for i, z in enumerate(_RN_BLEACHING)]
    d.add(_legend(chart.x + 10, 4, zones, columns=3, anchor="sw", col_width=110))
    chart_y = h - margin - 110 - d.height
    renderPDF.draw(_fits(d, w, h), c, margin, chart_y)

    below = [
        _p(
            "Figure 2. Line chart of the percentage of bleached coral cover per year for the Northern, Central and "
            "Southern reef zones. Each point is the mean over all transects surveyed in that zone.",
            _CAPTION,
        ),
        Spacer(1, 8),
        _p(
            "Bleaching probability rose steeply beyond four degree heating weeks in all zones, but reefs that had "
            "bleached in 2016 showed a smaller response in 2020 for the same heat stress (odds ratio 0.71, 95% CI "
            "0.58 to 0.86), consistent with partial acclimatisation or a shift toward heat-tolerant symbionts."
        ),
    ]
    _flow(c, below, margin, margin, w - 2 * margin, chart_y - margin - 6)


_RESEARCH_NOTE = _Document(
    file_name="coral_reef_research_note.pdf",
    title="Marine Heatwaves and Coral Bleaching on the Great Barrier Reef",
    author="Institute for Tropical Reef Ecology",
    subject="Research note on coral bleaching and degree heating weeks",
    pages=(
        _Page(
            PageSpec(A4, "text", ("zooxanthellae", "bleaching", "Acropora", "heatwaves")),
            _text_page(_RN_HEADER, "1", _rn_intro),
            ("why do corals lose their zooxanthellae and bleach during marine heatwaves",),
        ),
        _Page(
            PageSpec(A4, "text", ("transects", "42 reef sites", "degree heating weeks", "logistic regression")),
            _text_page(_RN_HEADER, "2", _rn_methods),
            (
                "how many reef sites were surveyed with belt transects",
                "mixed-effects logistic regression of bleaching against degree heating weeks",
            ),
        ),
        _Page(
            PageSpec(A4, "chart", ("Figure 2", "Northern", "Southern", "Bleached coral cover")),
            _rn_results,
            ("line chart of bleached coral cover per year for northern, central and southern reef zones",),
        ),
    ),
)

# ---------------------------------------------------------------------------------------------------------------------
# Document 3: user manual (A5 portrait, last page is an image-only scan)
# ---------------------------------------------------------------------------------------------------------------------

_UM_HEADER = ("Brevio Espresso Pro 2", "User Manual")
_UM_MARGIN = 0.6 * 72


def _um_safety() -> list[Flowable]:
    bullets = [
        "Connect the espresso machine only to a grounded outlet that matches the voltage on the rating plate.",
        "Never immerse the machine, power cord or plug in water or any other liquid.",
        "The steam wand, brew group and cup warmer become very hot. Hold the portafilter only by its handle.",
        "Keep the machine out of reach of children and do not let the power cord hang over the counter edge.",
        "Unplug the machine before cleaning, descaling or when it is not used for a long period.",
        "Do not use the machine if the cord is damaged; contact an authorised Brevio service centre.",
    ]
    return [
        _p("Important Safety Instructions", _H1),
        _p(
            "Read all instructions before using your Brevio Espresso Pro 2 and keep this manual for reference.",
            _BODY_SMALL,
        ),
        Spacer(1, 4),
        *[
            Paragraph(b, ParagraphStyle("b", parent=_BULLET, fontSize=9.5, leading=12.5), bulletText="•")
            for b in bullets
        ],
        Spacer(1, 6),
        _p(
            "<b>Warning:</b> steam and hot water can cause scalding. Always point the steam wand into a milk jug "
            "or the drip tray before opening the steam knob.",
            _BODY_SMALL,
        ),
    ]


def _um_first_use() -> list[Flowable]:
    steps = [
        "<b>Fill the water tank.</b> Lift the lid at the back, fill the removable tank with fresh cold water up to "
        "the MAX line (1.8 litres) and slide it back until it clicks.",
        "<b>Prime the pump.</b> Switch on, wait for the ready light, then run hot water through the group head "
        "without the portafilter for 20 seconds.",
        "<b>Grind and dose.</b> Set the burr grinder to a fine setting (between 5 and 8) and dose 18 grams of "
        "coffee into the double basket.",
        "<b>Tamp.</b> Level the grounds and tamp with about 15 kg of pressure until the puck is flat and polished.",
        "<b>Brew.</b> Lock the portafilter into the group head and press the double-cup button. A good shot takes "
        "25 to 30 seconds and yields about 36 grams of espresso.",
    ]
    style = ParagraphStyle("step", parent=_BODY_SMALL, leftIndent=16, bulletIndent=0, spaceAfter=4)
    return [
        _p("Getting Started", _H1),
        _p(
            "Before the first use, rinse the water tank, drip tray and portafilter baskets with warm water.",
            _BODY_SMALL,
        ),
        Spacer(1, 4),
        *[Paragraph(s, style, bulletText=f"{i}.") for i, s in enumerate(steps, 1)],
        Spacer(1, 4),
        _p(
            "If the shot runs faster than 20 seconds, grind finer; if slower than 35 seconds, grind coarser.", _CAPTION
        ),
    ]


def _um_troubleshooting() -> list[Flowable]:
    rows = [
        ["Code", "Meaning", "What to do"],
        ["E01", "Water tank empty or not seated", "Refill the tank and push it down until it clicks."],
        ["E02", "Boiler overheating", "Switch off, let the machine cool for 30 minutes, restart."],
        ["E03", "Grinder jam", "Unplug, remove the bean hopper and clear stones or debris from the burrs."],
        ["E04", "Descaling required", "Run the descaling programme with Brevio descaler (see page 14)."],
        ["E05", "Pump pressure low", "Check for a blocked shower screen; grind coarser; call service if it persists."],
        ["E06", "Temperature sensor fault", "Contact an authorised Brevio service centre."],
    ]
    cells = [[Paragraph(x, _CELL) for x in r] for r in rows]
    cells[0] = [Paragraph(f"<font color='white'><b>{x}</b></font>", _CELL) for x in rows[0]]
    t = _table(cells, [34, 100, 192], numeric_from_col=99)
    return [
        _p("Troubleshooting", _H1),
        _p(
            "When a fault occurs the display shows an error code and the power light flashes amber. Look up the "
            "error code in the table below before contacting service.",
            _BODY_SMALL,
        ),
        Spacer(1, 6),
        t,
        Spacer(1, 8),
        _p(
            "Descaling: in hard water areas the E04 reminder appears roughly every 200 shots. Never use vinegar, "
            "which damages the boiler seals and voids the warranty.",
            _BODY_SMALL,
        ),
    ]


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A TrueType font shipped inside reportlab, laid out with the BASIC engine.

    Both choices are for determinism: system fonts differ between machines, and Pillow would otherwise pick libraqm
    when it happens to be installed, which can shape text differently.
    """
    path = pathlib.Path(reportlab.__file__).parent / "fonts" / name
    return ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC)


def _scanned_warranty_card(page_size: tuple[float, float], dpi: int = 150) -> bytes:
    """Render a scanned-looking warranty registration card as grayscale JPEG bytes.

    JPEG, because reportlab embeds JPEG bytes verbatim (DCTDecode) while it re-compresses any other raster with the
    system zlib; it is also what a real scanner would produce.
    """
    wpx, hpx = round(page_size[0] / 72 * dpi), round(page_size[1] / 72 * dpi)
    img = Image.new("L", (wpx, hpx), 250)
    d = ImageDraw.Draw(img)
    regular, bold, italic = _font("Vera.ttf", 22), _font("VeraBd.ttf", 34), _font("VeraIt.ttf", 24)
    small, bold_small = _font("Vera.ttf", 17), _font("VeraBd.ttf", 22)
    x0 = 70
    d.text((x0, 70), "BREVIO", font=_font("VeraBd.ttf", 52), fill=30)
    d.text((x0 + 4, 132), "Home Appliances Ltd.", font=small, fill=60)
    d.text((x0, 200), "WARRANTY REGISTRATION CARD", font=bold, fill=25)
    d.text((x0, 248), "Espresso Pro 2  -  Model BX-220", font=regular, fill=40)
    d.line((x0, 290, wpx - x0, 290), fill=40, width=3)

    fields = [
        ("Owner name", "Ingrid Solberg"),
        ("Street address", "14 Fjordveien"),
        ("City / Postcode", "Bergen 5003"),
        ("Serial number", "BX220-0047-2291"),
        ("Date of purchase", "12 / 03 / 2024"),
        ("Retailer", "Kaffebrenneriet Bergen"),
    ]
    y = 330
    for label, value in fields:
        d.text((x0, y), label, font=bold_small, fill=45)
        d.line((x0 + 250, y + 30, wpx - x0, y + 30), fill=90, width=2)
        # the filled-in values imitate handwriting in blue-black ink, hence the italic face and darker tone
        d.text((x0 + 262, y - 2), value, font=italic, fill=20)
        y += 72

    y += 16
    d.text((x0, y), "Where did you hear about Brevio?", font=bold_small, fill=45)
    y += 44
    bx = x0
    for option in ("Friend", "Store", "Online review", "Magazine"):
        d.rectangle((bx, y, bx + 24, y + 24), outline=40, width=2)
        if option == "Store":
            d.line((bx + 4, y + 12, bx + 10, y + 21), fill=20, width=4)
            d.line((bx + 10, y + 21, bx + 24, y - 4), fill=20, width=4)
        d.text((bx + 34, y - 1), option, font=regular, fill=40)
        bx += 34 + round(d.textlength(option, font=regular)) + 36

    y += 80
    d.rectangle((x0, y, x0 + 300, y + 150), outline=80, width=2)
    d.text((x0 + 12, y + 8), "Retailer stamp", font=small, fill=90)
    # a round rubber stamp, slightly off-centre like a real one
    cx, cy, r = x0 + 170, y + 85, 52
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=95, width=4)
    d.ellipse((cx - r + 10, cy - r + 10, cx + r - 10, cy + r - 10), outline=110, width=2)
    d.text((cx - 38, cy - 12), "PAID", font=_font("VeraBd.ttf", 26), fill=95)
    d.text((x0 + 340, y + 110), "Signature", font=small, fill=70)
    d.line((x0 + 340, y + 100, wpx - x0, y + 100), fill=90, width=2)
    signature = [(x0 + 360 + k * 9, y + 80 - int(18 * np.sin(k / 1.7)) - (k % 3) * 4) for k in range(32)]
    d.line(signature, fill=25, width=3, joint="curve")

    d.text((x0, hpx - 150), "Return within 30 days of purchase to activate your 2-year warranty.", font=small, fill=60)
    d.text((x0, hpx - 120), "Brevio Customer Care, Postboks 88, 0101 Oslo, Norway", font=small, fill=60)

    # Scanner artefacts: a slight skew, softened edges, paper grain and a darker edge where the lid did not close.
    # Only rng.random() is used because numpy guarantees that stream, unlike the distribution samplers.
    img = img.rotate(0.7, resample=Image.Resampling.BICUBIC, fillcolor=250).filter(ImageFilter.GaussianBlur(0.6))
    rng = np.random.default_rng(20240312)
    grain = (rng.random((hpx, wpx)) + rng.random((hpx, wpx)) + rng.random((hpx, wpx)) - 1.5) * 9.0
    shadow = np.clip(1.0 - np.arange(wpx) / 40.0, 0.0, 1.0)[None, :] * 70.0
    arr = np.clip(np.asarray(img, dtype=np.float64) + grain - shadow, 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=82, optimize=False, progressive=False)
    return buf.getvalue()


def _image_only_page(c: Canvas, w: float, h: float) -> None:
    """Place the scan as the page's only content: no text operators at all, so there is no text layer."""
    c.drawImage(ImageReader(io.BytesIO(_scanned_warranty_card((w, h)))), 0, 0, width=w, height=h)


_MANUAL = _Document(
    file_name="espresso_machine_manual.pdf",
    title="Brevio Espresso Pro 2 - User Manual",
    author="Brevio Home Appliances Ltd.",
    subject="User manual for the Brevio Espresso Pro 2 espresso machine",
    pages=(
        _Page(
            PageSpec(A5, "text", ("grounded outlet", "steam wand", "scalding")),
            _text_page(_UM_HEADER, "1", _um_safety, margin=_UM_MARGIN),
            ("is it safe to immerse the espresso machine in water", "steam wand scalding warning"),
        ),
        _Page(
            PageSpec(A5, "text", ("portafilter", "tamp", "water tank", "18 grams")),
            _text_page(_UM_HEADER, "2", _um_first_use, margin=_UM_MARGIN),
            ("how many grams of coffee to dose and how hard to tamp", "fill the water tank and prime the pump"),
        ),
        _Page(
            PageSpec(A5, "table", ("E04", "Descaling", "Grinder jam", "error code")),
            _text_page(_UM_HEADER, "3", _um_troubleshooting, margin=_UM_MARGIN),
            ("what does error code E04 mean on the espresso machine", "grinder jam error code"),
        ),
        _Page(
            PageSpec(A5, "image", ()),
            _image_only_page,
            ("warranty registration card with serial number and retailer stamp",),
        ),
    ),
)

# ---------------------------------------------------------------------------------------------------------------------
# Document 4: recipe booklet (A5 recipe pages + an A4 conversion table: mixed sizes within one document)
# ---------------------------------------------------------------------------------------------------------------------

_RB_HEADER = ("The Autumn Kitchen", "Recipe Booklet")
_RB_MARGIN = 0.6 * 72


def _recipe(
    title: str, intro: str, meta: str, ingredients: list[str], method: list[str]
) -> Callable[[], list[Flowable]]:
    def story() -> list[Flowable]:
        ing_style = ParagraphStyle("ing", parent=_BODY_SMALL, fontSize=9, leading=11.5, leftIndent=10, bulletIndent=0)
        step_style = ParagraphStyle(
            "step", parent=_BODY_SMALL, fontSize=9, leading=11.5, leftIndent=14, bulletIndent=0, spaceAfter=2
        )
        return [
            _p(title, ParagraphStyle("rt", parent=_H1, fontName="Times-Bold", fontSize=17, textColor=_ACCENT)),
            _p(intro, _CAPTION),
            _p(meta, ParagraphStyle("meta", parent=_BODY_SMALL, fontName="Helvetica", fontSize=8, spaceBefore=4)),
            _p("Ingredients", _H2),
            *[Paragraph(i, ing_style, bulletText="•") for i in ingredients],
            _p("Method", _H2),
            *[Paragraph(s, step_style, bulletText=f"{n}.") for n, s in enumerate(method, 1)],
        ]

    return story


_SOURDOUGH = _recipe(
    "Country Sourdough Loaf",
    "A crackling crust and open crumb from nothing but flour, water, salt and a lively starter.",
    "Makes 1 loaf  ·  Active time 40 min  ·  Total time 24 hours",
    [
        "100 g active sourdough starter (fed 6 hours earlier)",
        "375 g water at 27 °C",
        "450 g strong white bread flour",
        "50 g wholemeal rye flour",
        "10 g fine sea salt",
    ],
    [
        "Mix the starter with the water, add both flours and stir until no dry flour remains. Rest 45 minutes "
        "(autolyse).",
        "Add the salt and squeeze it through the dough. Over the next 3 hours perform four sets of stretch and folds.",
        "Let the bulk fermentation continue until the dough has risen by half and feels airy, 4 to 6 hours in total.",
        "Shape into a tight boule, place seam side up in a floured banneton and proof overnight in the fridge.",
        "Bake in a preheated Dutch oven at 250 °C for 20 minutes with the lid on, then 25 minutes at 230 °C without.",
    ],
)

_RISOTTO = _recipe(
    "Wild Mushroom Risotto",
    "Porcini soaking liquid gives this creamy risotto its deep, woodland flavour.",
    "Serves 4  ·  Active time 35 min  ·  Total time 45 min",
    [
        "20 g dried porcini, soaked in 300 ml hot water",
        "300 g chanterelle and chestnut mushrooms",
        "320 g arborio or carnaroli rice",
        "1.2 litres hot vegetable stock",
        "150 ml dry white wine",
        "1 shallot, 2 garlic cloves, fresh thyme",
        "60 g parmesan, 40 g cold butter",
    ],
    [
        "Drain the porcini, keeping the liquid, and chop them. Sauté the fresh mushrooms in butter until golden.",
        "Soften the shallot and garlic, add the arborio rice and toast for two minutes until the grains turn glossy.",
        "Deglaze with the white wine, then add the stock and porcini liquid a ladle at a time, stirring often.",
        "After about 18 minutes the rice should be tender with a slight bite. Stir in the mushrooms and thyme.",
        "Off the heat, beat in the cold butter and parmesan (the mantecatura) and rest two minutes before serving.",
    ],
)

_LEMON_TART = _recipe(
    "Sharp Lemon Tart",
    "A crisp sweet shortcrust pastry case filled with a silky, tangy lemon curd custard.",
    "Serves 8  ·  Active time 50 min  ·  Total time 4 hours including chilling",
    [
        "Pastry: 200 g plain flour, 100 g cold butter, 60 g icing sugar, 1 egg yolk",
        "Filling: 5 eggs, 150 g caster sugar, 150 ml double cream",
        "Zest and juice of 4 unwaxed lemons",
        "Icing sugar for dusting",
    ],
    [
        "Rub the butter into the flour and icing sugar, bind with the egg yolk and chill the pastry for 30 minutes.",
        "Roll out, line a 23 cm tart tin and blind bake at 180 °C for 15 minutes with baking beans, then 8 without.",
        "Whisk the eggs and caster sugar, then stir in the cream, lemon zest and juice. Skim off any foam.",
        "Lower the oven to 140 °C, pour the filling into the pastry case and bake until just set with a wobble, "
        "about 30 minutes.",
        "Cool, then chill for at least 2 hours. Dust with icing sugar and caramelise with a blowtorch if you like.",
    ],
)


def _rb_conversions() -> list[Flowable]:
    oven = [["Celsius", "Fahrenheit", "Gas mark", "Description"]] + [
        [f"{c} °C", f"{f} °F", g, desc]
        for c, f, g, desc in [
            (140, 275, "1", "Very low (custards, meringues)"),
            (160, 325, "3", "Moderate (rich fruit cakes)"),
            (180, 350, "4", "Moderate (sponges, tart cases)"),
            (200, 400, "6", "Hot (roast vegetables)"),
            (230, 450, "8", "Very hot (bread)"),
            (250, 480, "9", "Maximum (pizza, sourdough)"),
        ]
    ]
    cups = [
        ["Ingredient", "1 cup", "1 tablespoon", "1 teaspoon"],
        ["Plain flour", "125 g", "8 g", "3 g"],
        ["Caster sugar", "200 g", "12 g", "4 g"],
        ["Butter", "225 g", "14 g", "5 g"],
        ["Arborio rice", "190 g", "12 g", "-"],
        ["Water or stock", "240 ml", "15 ml", "5 ml"],
    ]
    return [
        _p("Kitchen Conversion Tables", _H1),
        _p(
            "Use these tables to convert oven temperatures between Celsius, Fahrenheit and gas mark, and to turn "
            "American cup measures into grams. Fan ovens run hotter: reduce the Celsius setting by about 20 degrees."
        ),
        Spacer(1, 6),
        _p("Oven temperatures", _H2),
        _table(oven, [80, 80, 70, 210], numeric_from_col=99),
        Spacer(1, 12),
        _p("Cups to grams", _H2),
        _table(cups, [150, 90, 100, 90]),
        Spacer(1, 8),
        _p("Weights are for spooned and levelled cups; packed brown sugar weighs about 220 g per cup.", _CAPTION),
    ]


_RECIPES = _Document(
    file_name="recipe_booklet.pdf",
    title="The Autumn Kitchen - Recipe Booklet",
    author="The Autumn Kitchen",
    subject="Seasonal recipes and kitchen conversion tables",
    pages=(
        _Page(
            PageSpec(A5, "text", ("sourdough", "banneton", "Dutch oven", "starter")),
            _text_page(_RB_HEADER, "1", _SOURDOUGH, margin=_RB_MARGIN),
            ("sourdough loaf with starter proofed overnight in a banneton",),
        ),
        _Page(
            PageSpec(A5, "text", ("risotto", "porcini", "arborio", "parmesan")),
            _text_page(_RB_HEADER, "2", _RISOTTO, margin=_RB_MARGIN),
            ("wild mushroom risotto with porcini and arborio rice",),
        ),
        _Page(
            PageSpec(A5, "text", ("lemon", "shortcrust", "blind bake", "tart")),
            _text_page(_RB_HEADER, "3", _LEMON_TART, margin=_RB_MARGIN),
            ("how long to blind bake the shortcrust pastry for a lemon tart",),
        ),
        _Page(
            PageSpec(A4, "table", ("Fahrenheit", "Gas mark", "Cups to grams")),
            _text_page(_RB_HEADER, "4", _rb_conversions),
            ("convert oven temperature from Celsius to Fahrenheit and gas mark", "how many grams of flour in one cup"),
        ),
    ),
)

# ---------------------------------------------------------------------------------------------------------------------
# Document 5: product launch slides (16:9, 960x540 pt)
# ---------------------------------------------------------------------------------------------------------------------

_SL_DARK = colors.HexColor("#0F2233")
_SL_ORANGE = colors.HexColor("#F08A24")


def _slide_frame(c: Canvas, w: float, h: float, title: str, number: int) -> None:
    c.setFillColor(_SL_DARK)
    c.rect(0, h - 78, w, 78, stroke=0, fill=1)
    c.setFillColor(_SL_ORANGE)
    c.rect(0, h - 82, w, 4, stroke=0, fill=1)
    c.setFillColor(colors.white)
    c.setFont("Helvetica-Bold", 28)
    c.drawString(48, h - 52, title)
    c.setFillColor(colors.grey)
    c.setFont("Helvetica", 10)
    c.drawString(48, 20, "Helios Home Technologies  |  Confidential  |  Aurora launch plan")
    c.drawRightString(w - 48, 20, str(number))


def _slide_title(c: Canvas, w: float, h: float) -> None:
    c.setFillColor(_SL_DARK)
    c.rect(0, 0, w, h, stroke=0, fill=1)
    # a stylised thermostat dial as the hero graphic
    cx, cy = w - 165, h / 2
    for r, col in ((125, "#1D3A52"), (98, "#F08A24"), (89, "#0F2233"), (66, "#1D3A52")):
        c.setFillColor(colors.HexColor(col))
        c.circle(cx, cy, r, stroke=0, fill=1)
    c.setFillColor(colors.white)
    c.setFont("Helvetica-Bold", 36)
    c.drawCentredString(cx, cy - 12, "21.5°")
    c.setFillColor(_SL_ORANGE)
    c.rect(60, h / 2 + 78, 80, 6, stroke=0, fill=1)
    c.setFillColor(colors.white)
    c.setFont("Helvetica-Bold", 44)
    c.drawString(60, h / 2 + 20, "Aurora Smart Thermostat")
    c.setFont("Helvetica", 24)
    c.drawString(60, h / 2 - 22, "Launch Plan  -  Q3 2024")
    c.setFillColor(colors.HexColor("#9FB3C8"))
    c.setFont("Helvetica", 14)
    c.drawString(60, 80, "Helios Home Technologies  |  Product Marketing  |  Board review, 4 June 2024")


def _slide_features(c: Canvas, w: float, h: float) -> None:
    _slide_frame(c, w, h, "Why customers will choose Aurora", 2)
    features = [
        ("Occupancy sensing", "Radar presence sensor turns heating down in empty rooms within 10 minutes."),
        ("Heat pump ready", "Native control of heat pumps with auxiliary strips and dual-fuel systems."),
        ("Matter protocol", "Works with Apple Home, Google Home and Alexa through Matter over Thread."),
        ("Energy savings", "Field trial of 1,200 homes: 23% lower heating and cooling energy use."),
    ]
    col_w, x0, y0 = (w - 96 - 3 * 24) / 4, 48, 120
    for i, (name, text) in enumerate(features):
        x = x0 + i * (col_w + 24)
        c.setFillColor(colors.HexColor("#F3F6F9"))
        c.roundRect(x, y0, col_w, 280, 10, stroke=0, fill=1)
        c.setFillColor(_PALETTE[i % len(_PALETTE)])
        c.circle(x + 34, y0 + 240, 18, stroke=0, fill=1)
        c.setFillColor(colors.white)
        c.setFont("Helvetica-Bold", 16)
        c.drawCentredString(x + 34, y0 + 234, str(i + 1))
        _flow(
            c,
            [
                _p(name, ParagraphStyle("fh", fontName="Helvetica-Bold", fontSize=17, leading=21, textColor=_INK)),
                Spacer(1, 8),
                _p(text, ParagraphStyle("fb", fontName="Helvetica", fontSize=13, leading=17, textColor=_INK)),
            ],
            x + 16,
            y0 + 16,
            col_w - 32,
            190,
        )
    c.setFillColor(_INK)
    c.setFont("Helvetica-Oblique", 14)
    c.drawString(48, 80, "Retail price USD 179  -  compatible with 95% of North American HVAC systems")


def _slide_preorders(c: Canvas, w: float, h: float) -> None:
    _slide_frame(c, w, h, "Pre-orders by sales channel", 3)
    channels = ("Online store", "Big-box retail", "Utility rebate program", "HVAC installers")
    preorders = (18400, 12900, 9700, 6100)
    d = Drawing(w - 96, h - 150)
    chart = HorizontalBarChart()
    chart.x, chart.y, chart.width, chart.height = 170, 40, d.width - 420, d.height - 70
    chart.data = [preorders[::-1]]
    chart.categoryAxis.categoryNames = list(channels[::-1])
    chart.categoryAxis.labels.fontName, chart.categoryAxis.labels.fontSize = "Helvetica", 12
    chart.valueAxis.valueMin, chart.valueAxis.valueMax, chart.valueAxis.valueStep = 0, 20000, 5000
    chart.valueAxis.labels.fontName, chart.valueAxis.labels.fontSize = "Helvetica", 10
    chart.valueAxis.labelTextFormat = "{:,.0f}".format
    chart.valueAxis.visibleGrid = True
    chart.valueAxis.gridStrokeColor = colors.HexColor("#DDDDDD")
    chart.bars[0].fillColor, chart.bars[0].strokeColor = _SL_ORANGE, None
    chart.barLabelFormat = "{:,.0f}".format
    chart.barLabels.fontName, chart.barLabels.fontSize = "Helvetica-Bold", 11
    chart.barLabels.boxAnchor, chart.barLabels.dx = "w", 6
    d.add(chart)
    d.add(
        String(
            chart.x + chart.width / 2,
            8,
            "Pre-orders (units), 1 May - 31 May 2024",
            fontName="Helvetica",
            fontSize=11,
            textAnchor="middle",
        )
    )
    renderPDF.draw(_fits(d, w, h), c, 48, 50)
    _flow(
        c,
        [
            _p(
                "47,100 pre-orders",
                ParagraphStyle("kpi", fontName="Helvetica-Bold", fontSize=26, leading=30, textColor=_SL_ORANGE),
            ),
            Spacer(1, 6),
            _p(
                "Online store leads, but the utility rebate program converts best: customers of three partner "
                "utilities receive a USD 75 instant rebate at checkout.",
                ParagraphStyle("kb", fontName="Helvetica", fontSize=13, leading=17, textColor=_INK),
            ),
        ],
        w - 48 - 210,
        150,
        210,
        250,
    )


_SLIDES = _Document(
    file_name="product_launch_slides.pdf",
    title="Aurora Smart Thermostat - Launch Plan",
    author="Helios Home Technologies",
    subject="Product launch presentation",
    pages=(
        _Page(
            PageSpec(SLIDE_16_9, "text", ("Aurora", "Thermostat", "Launch Plan")),
            _slide_title,
            ("Aurora smart thermostat launch plan presentation",),
        ),
        _Page(
            PageSpec(SLIDE_16_9, "text", ("Occupancy sensing", "heat pumps", "Matter", "23%")),
            _slide_features,
            ("thermostat that works with heat pumps and the Matter protocol", "occupancy sensing energy savings"),
        ),
        _Page(
            PageSpec(SLIDE_16_9, "chart", ("Pre-orders", "sales channel", "Utility rebate program")),
            _slide_preorders,
            ("pre-orders by sales channel including the utility rebate program",),
        ),
    ),
)

# ---------------------------------------------------------------------------------------------------------------------
# Document 6: one-page public notice (Letter portrait)
# ---------------------------------------------------------------------------------------------------------------------


def _notice() -> list[Flowable]:
    right = ParagraphStyle("r", parent=_BODY_SMALL, alignment=TA_RIGHT)
    return [
        _p("City of Lakeview — Department of Public Works", ParagraphStyle("dep", parent=_H2, textColor=_ACCENT)),
        _p("Issued 2 September 2024  ·  Ref. PW-2024-117", right),
        Spacer(1, 6),
        _p("NOTICE: Water Main Replacement on Maple Avenue", _H1),
        _p(
            "Beginning Monday 16 September 2024, crews will replace the 1920s cast-iron water main under Maple "
            "Avenue between Birch Street and Harbor Road with a new 12-inch ductile iron pipe. Work is expected to "
            "last six weeks, weather permitting."
        ),
        _p("What residents should expect", _H2),
        Paragraph(
            "Planned water shut-offs of up to four hours; affected addresses receive a door hanger 48 hours "
            "in advance.",
            _BULLET,
            bulletText="•",
        ),
        Paragraph(
            "A precautionary boil-water advisory after each reconnection until two consecutive bacteriological "
            "samples test clean.",
            _BULLET,
            bulletText="•",
        ),
        Paragraph(
            "Maple Avenue will be closed to through traffic between 7:00 and 17:00; follow the signed detour "
            "via Cedar Lane.",
            _BULLET,
            bulletText="•",
        ),
        Paragraph(
            "Curbside waste collection continues on the normal schedule; place bins at the nearest corner.",
            _BULLET,
            bulletText="•",
        ),
        _p("Boil-water advisory", _H2),
        _p(
            "When an advisory is in effect, bring tap water to a rolling boil for one minute before drinking, making "
            "ice, brushing teeth or preparing baby formula. Bottled water will be available at the Lakeview "
            "Community Centre, 300 Harbor Road, from 8:00 to 20:00 daily."
        ),
        _p("Questions", _H2),
        _p(
            "Call the Public Works hotline at (555) 014-2290 or email waterworks@lakeview.example. Project updates "
            "and a map of the work zones are posted at lakeview.example/maple."
        ),
        Spacer(1, 10),
        _p("<i>Daniel Hartmann, P.E., Director of Public Works</i>", _BODY_SMALL),
    ]


_NOTICE = _Document(
    file_name="water_main_notice.pdf",
    title="Notice: Water Main Replacement on Maple Avenue",
    author="City of Lakeview Department of Public Works",
    subject="Public notice",
    pages=(
        _Page(
            PageSpec(LETTER, "text", ("Maple Avenue", "water main", "boil-water advisory", "detour")),
            _text_page(("City of Lakeview", "Public Notice"), "Page 1 of 1", _notice),
            ("water main replacement on Maple Avenue boil water advisory", "which street is the detour via"),
        ),
    ),
)

# ---------------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------------

# Sorted by file name so the write order and queries.jsonl order are canonical.
_DOCUMENTS: tuple[_Document, ...] = tuple(
    sorted((_ANNUAL_REPORT, _RESEARCH_NOTE, _MANUAL, _RECIPES, _SLIDES, _NOTICE), key=lambda d: d.file_name)
)

CORPUS_PAGES: Mapping[str, tuple[PageSpec, ...]] = MappingProxyType(
    {doc.file_name: tuple(p.spec for p in doc.pages) for doc in _DOCUMENTS}
)
"""file name -> per-page promises (size, kind, keywords), in page order."""

EXPECTED_PAGE_COUNTS: Mapping[str, int] = MappingProxyType({name: len(pages) for name, pages in CORPUS_PAGES.items()})
"""file name -> number of pages the generator writes."""

# Fixed date (matches reportlab's own invariant date, 2000-01-01T00:00:00Z).
_FIXED_SOURCE_DATE_EPOCH = "946684800"
_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _pinned_source_date_epoch() -> Iterator[None]:
    """Temporarily pin SOURCE_DATE_EPOCH: reportlab's timestamp (and thus the document ID) honours it even in
    invariant mode, so a machine that happens to export it would otherwise produce different bytes."""
    with _ENV_LOCK:
        old = os.environ.get("SOURCE_DATE_EPOCH")
        os.environ["SOURCE_DATE_EPOCH"] = _FIXED_SOURCE_DATE_EPOCH
        try:
            yield
        finally:
            if old is None:
                del os.environ["SOURCE_DATE_EPOCH"]
            else:
                os.environ["SOURCE_DATE_EPOCH"] = old


def _render(doc: _Document) -> bytes:
    buf = io.BytesIO()
    with _pinned_source_date_epoch():
        # Writing to a buffer (not a path) keeps the output directory out of anything reportlab might record.
        c = Canvas(buf, pagesize=doc.pages[0].spec.size, invariant=1, pageCompression=0, lang="en")
    c.setTitle(doc.title)
    c.setAuthor(doc.author)
    c.setSubject(doc.subject)
    c.setCreator("pipelines.corpus sample generator")
    for page in doc.pages:
        w, h = page.spec.size
        c.setPageSize((w, h))
        page.draw(c, w, h)
        c.showPage()
    c.save()
    return buf.getvalue()


def _queries() -> list[SampleQuery]:
    return [
        SampleQuery(query=q, file_name=doc.file_name, page_number=n)
        for doc in _DOCUMENTS
        for n, page in enumerate(doc.pages, 1)
        for q in page.queries
    ]


def generate_sample_corpus(out_dir: str | os.PathLike[str]) -> list[pathlib.Path]:
    """Write the sample PDFs and ``queries.jsonl`` into ``out_dir`` (created if missing); return the PDF paths, sorted.

    Byte-for-byte deterministic (see the module docstring) and idempotent: re-running rewrites identical bytes.
    Files in ``out_dir`` that this generator does not own are left untouched. ``queries.jsonl`` holds one JSON object
    per line, ``{"query", "file_name", "page_number"}`` with a 1-based page number; see :func:`load_queries`.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for doc in _DOCUMENTS:
        path = out / doc.file_name
        write_local_atomic(path, _render(doc))
        paths.append(path)
    lines = [
        json.dumps({"query": q.query, "file_name": q.file_name, "page_number": q.page_number}, ensure_ascii=False)
        for q in _queries()
    ]
    write_local_atomic(out / QUERIES_FILE_NAME, ("\n".join(lines) + "\n").encode("utf-8"))
    return sorted(paths)


def load_queries(path: str | os.PathLike[str]) -> list[SampleQuery]:
    """Read a ``queries.jsonl`` file (blank lines ignored, extra keys ignored), in file order.

    Raises :class:`~pipelines.queries.QueryFileError` (a ``ValueError``) naming the line if it is not UTF-8 or not a
    JSON object with a non-empty string ``query``, a string ``file_name`` and a positive integer ``page_number``.
    """
    queries = []
    for lineno, rec in read_objects(path):
        query, file_name, page = rec.get("query"), rec.get("file_name"), rec.get("page_number")
        # bool is an int subclass; a page number of `true` is a data error, not page 1
        if not (
            isinstance(query, str)
            and query.strip()
            and isinstance(file_name, str)
            and file_name
            and isinstance(page, int)
            and not isinstance(page, bool)
            and page >= 1
        ):
            msg = f"{path}:{lineno}: need non-empty 'query', 'file_name' and integer 'page_number' >= 1: {rec!r}"
            raise QueryFileError(msg)
        queries.append(SampleQuery(query=query, file_name=file_name, page_number=page))
    return queries


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.testing.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write the sample PDFs and queries.jsonl into")
    args = parser.parse_args(argv)
    paths = generate_sample_corpus(args.out_dir)
    for path in paths:
        specs = CORPUS_PAGES[path.name]
        sizes = ", ".join(f"{w:g}x{h:g} {s.kind}" for s in specs for w, h in [s.size])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"{path}  {len(specs)} page(s)  sha256:{digest}  [{sizes}]")
    queries_path = pathlib.Path(args.out_dir) / QUERIES_FILE_NAME
    print(f"{queries_path}  {len(load_queries(queries_path))} queries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
