"""Generated broken and hostile PDFs, for robustness tests and for trying the pipeline's defences.

Each file is written in code (raw PDF syntax or reportlab), so nothing binary lives in the repo:

=====================  ==================================================  ==========================
file                   what it is                                          expected outcome
=====================  ==================================================  ==========================
truncated.pdf          a valid PDF cut off after 60 % of its bytes         ``corrupt`` or indexed*
garbage.pdf            ``%PDF-1.7`` followed by random bytes               ``corrupt``
encrypted.pdf          reportlab with a user password                      ``encrypted``
zero_pages.pdf         a well-formed page tree with ``/Count 0``           ``no_pages``
not_a_pdf.pdf          a PNG image with a .pdf name                        ``not_pdf``
empty.pdf              0 bytes                                             ``empty_file``
huge_page.pdf          one page of 200,000 x 200,000 pt                    indexed at the pixel budget
image_bomb.pdf         a 25,000 x 25,000 px image (625 MB raw) in 0.6 MB  indexed or ``timeout``
render_bomb.pdf        forms nested 3 deep x 1000: 1e9 fills from ~25 KB  ``timeout`` or ``memory_limit``
long_document.pdf      ``long_pages`` small pages                          indexed, page by page
flood.pdf              ~2M unknown operators (a warning each) + a         ``timeout``, ``memory_limit``
                       20,000 x 20,000 px image                           or indexed
absurd_box.pdf         a letter page and a 3 x 2,000,000 pt page          page 2 ``invalid_page_size``
count_overflow.pdf     page tree ``/Count 99999999999999999999``          indexed (pdfium)
count_self_ref.pdf     ``/Count 2 0 R`` (a reference to its own object)   indexed (pdfium)
length_self_ref.pdf    a content stream whose ``/Length`` is itself       indexed
root_misdirected.pdf   trailer ``/Root`` names the page, catalog intact   indexed (``/Root`` repaired)
empty_cropbox.pdf      zero-area ``/CropBox``, valid ``/MediaBox``        indexed at the MediaBox
binary_header.pdf      binary comment then ``1 0 obj``, no ``%PDF-``      indexed (poppler)
=====================  ==================================================  ==========================

\\* poppler reconstructs what it can of a truncated file; either outcome is fine, losing it silently is not.
The last six are false rejections of earlier versions: each has one page reading "Hello hostile" on a
blue box (:data:`MARKER_TEXT`).

``python -m pipelines.testing.hostile OUT_DIR`` writes them all.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import random
import zlib
from collections.abc import Sequence

from PIL import Image
from reportlab.lib.pagesizes import A4
from reportlab.lib.pdfencrypt import StandardEncryption
from reportlab.pdfgen.canvas import Canvas

#: file name -> the error types it may end as (empty: it must be indexed).
EXPECTED = {
    "truncated.pdf": {"corrupt", ""},
    "garbage.pdf": {"corrupt"},
    "encrypted.pdf": {"encrypted"},
    "zero_pages.pdf": {"no_pages", "corrupt"},
    "not_a_pdf.pdf": {"not_pdf"},
    "empty.pdf": {"empty_file"},
    "huge_page.pdf": {""},
    "image_bomb.pdf": {"", "timeout"},
    "render_bomb.pdf": {"timeout", "memory_limit"},  # whichever bound the renderer hits first
    "long_document.pdf": {""},
    "flood.pdf": {"", "timeout", "memory_limit"},
    "count_overflow.pdf": {""},
    "count_self_ref.pdf": {""},
    "length_self_ref.pdf": {""},
    "root_misdirected.pdf": {""},
    "empty_cropbox.pdf": {""},
    "binary_header.pdf": {""},
    "absurd_box.pdf": {""},
}
#: Files a renderer reads although an earlier version rejected them; each page shows this text.
FALSE_REJECTIONS = (
    "count_overflow.pdf",
    "count_self_ref.pdf",
    "length_self_ref.pdf",
    "root_misdirected.pdf",
    "empty_cropbox.pdf",
    "binary_header.pdf",
)
MARKER_TEXT = "Hello hostile"
#: A page's content stream: a blue box and :data:`MARKER_TEXT` (how tests recognize a page that was drawn).
MARKER_CONTENT = b"0 0 1 rg 50 50 500 300 re f BT /F1 48 Tf 72 600 Td (%s) Tj ET" % MARKER_TEXT.encode()


def pdf_file(objects: list[bytes], root: int = 1, header: bytes = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n") -> bytes:
    """A well-formed PDF from object bodies (object ``root`` is named the catalog), with a correct xref."""
    out = io.BytesIO()
    out.write(header)
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref))
    return out.getvalue()


def pdf_stream(data: bytes, extra: bytes = b"", compress: bool = False) -> bytes:
    """A stream object's body: ``data`` (Flate-compressed when ``compress``), its ``/Length`` and ``extra`` keys."""
    if compress:
        data = zlib.compress(data, 9)
        extra += b" /Filter /FlateDecode"
    return b"<< /Length %d%s >>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def _one_page(media_box: bytes, content: bytes, resources: bytes = b"<< >>", extra: list[bytes] = ()) -> bytes:
    return pdf_file(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox %s /Contents 4 0 R /Resources %s >>" % (media_box, resources),
            pdf_stream(content),
            *extra,
        ]
    )


def text_pdf(pages: int = 1, text: str = "Hello", page_size=A4, password: str | None = None) -> bytes:
    """A plain reportlab PDF with ``pages`` numbered pages (optionally encrypted with a user password)."""
    out = io.BytesIO()
    encrypt = StandardEncryption(password, canPrint=0) if password else None
    canvas = Canvas(out, pagesize=page_size, invariant=1, encrypt=encrypt)
    for number in range(1, pages + 1):
        canvas.setFont("Helvetica", 14)
        canvas.drawString(72, page_size[1] - 72, f"{text} - page {number}")
        canvas.showPage()
    canvas.save()
    return out.getvalue()


def constant_flate(value: int, size: int, chunk: int = 1 << 20) -> bytes:
    """A zlib stream of ``size`` bytes all equal to ``value`` (~1000:1), without compressing ``size`` bytes.

    One ``chunk`` is deflated once and its blocks repeated: a full flush ends them byte-aligned with no
    reference to earlier data, so copies can follow each other (as pigz joins its blocks); an empty final block
    and the Adler-32 of the whole (in closed form for constant bytes) end the stream.
    """

    def blocks(length: int) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: no header, no checksum
        return compressor.compress(bytes([value]) * length) + compressor.flush(zlib.Z_FULL_FLUSH)

    count, rest = divmod(size, chunk)
    body = blocks(chunk) * count + (blocks(rest) if rest else b"")
    # Adler-32 of n bytes v: A = 1 + n*v, B = sum of A after each byte = n + v*n*(n+1)/2 (mod 65521).
    a = (1 + size * value) % 65521
    b = (size + value * size * (size + 1) // 2) % 65521
    return b"\x78\xda" + body + b"\x03\x00" + ((b << 16) | a).to_bytes(4, "big")


def image_bomb(pixels: int = 25_000) -> bytes:
    """One page drawing a ``pixels`` x ``pixels`` 8-bit grey image of zeros, Flate-compressed ~1000:1."""
    data = constant_flate(0, pixels * pixels)
    image = b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray " % (pixels, pixels)
    image += b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
    return _one_page(
        b"[0 0 612 792]", b"q 612 0 0 792 0 0 cm /Im0 Do Q", b"<< /XObject << /Im0 5 0 R >> >>", extra=[image]
    )


def render_bomb(fan_out: int = 1000, levels: int = 3, seed: int = 0) -> bytes:
    """One page that draws a form that draws a form ... ``levels`` deep, each ``fan_out`` times, the
    innermost filling ``fan_out`` triangles: ``fan_out ** levels`` fills (1e9 by default) from a few KB.
    No renderer finishes it; only a killed process ends it."""
    rng = random.Random(seed)
    triangles = []
    for _ in range(fan_out):
        x, y = rng.uniform(0, 600), rng.uniform(0, 780)
        triangles.append(f"{x:.1f} {y:.1f} m {x + 9:.1f} {y + 1:.1f} l {x + 4:.1f} {y + 9:.1f} l f")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /XObject << /F 5 0 R >> >> >>",
        pdf_stream(b"/F Do"),
    ]
    form = b"/Type /XObject /Subtype /Form /BBox [0 0 612 792]"
    for level in range(levels - 1):  # object 5 + level draws object 6 + level fan_out times
        content = b"\n".join([b"/F Do"] * fan_out)
        objects.append(
            pdf_stream(content, b" " + form + b" /Resources << /XObject << /F %d 0 R >> >>" % (6 + level), True)
        )
    objects.append(pdf_stream("\n".join(triangles).encode(), b" " + form, True))
    return pdf_file(objects)


def marker_pdf(
    pages: bytes = b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    page_extra: bytes = b"",
    content: bytes | None = None,
    **pdf_kwargs,
) -> bytes:
    """One letter page with :data:`MARKER_TEXT` on a blue box, with parts replaced to break it in one way."""
    marker = MARKER_CONTENT
    return pdf_file(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            pages,
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] %s /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>" % page_extra,
            content if content is not None else pdf_stream(marker),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        ],
        **pdf_kwargs,
    )


def absurd_box() -> bytes:
    """Two pages: a letter page and one of 3 x 2,000,000 pt, the kind of page box that stopped every run: the
    pixel budget rendered it a pixel wide and hundreds of thousands of pixels tall, which the JPEG encoder refused
    ("Maximum supported image dimension is 65500 pixels"). Now its second page is an ``invalid_page_size`` row."""
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox %s /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>"
    marker = MARKER_CONTENT
    return pdf_file(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R 6 0 R] /Count 2 >>",
            page % b"[0 0 612 792]",
            pdf_stream(marker),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            page % b"[0 0 3 2000000]",
        ]
    )


def false_rejections() -> dict[str, bytes]:
    """Files an earlier version rejected as ``corrupt``/``not_pdf``/``invalid_page_size`` that a renderer reads."""
    marker = MARKER_CONTENT
    return {
        "count_overflow.pdf": marker_pdf(pages=b"<< /Type /Pages /Kids [3 0 R] /Count 99999999999999999999 >>"),
        "count_self_ref.pdf": marker_pdf(pages=b"<< /Type /Pages /Kids [3 0 R] /Count 2 0 R >>"),
        "length_self_ref.pdf": marker_pdf(content=b"<< /Length 4 0 R >>\nstream\n" + marker + b"\nendstream"),
        "root_misdirected.pdf": marker_pdf(root=3),
        "empty_cropbox.pdf": marker_pdf(page_extra=b"/CropBox [100 100 100 500]"),
        "binary_header.pdf": marker_pdf(header=b"%\xe2\xe3\xcf\xd3\xff\xfe binary comment, no version\n"),
    }


def flood(operators: int = 2_000_000, pixels: int = 20_000) -> bytes:
    """One page whose content is ``operators`` unknown operators (a warning each, without ``-q``) and then a
    ``pixels`` x ``pixels`` grey image, all Flate-compressed into a few hundred KB."""
    data = constant_flate(0x80, pixels * pixels)
    image = b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray " % (pixels, pixels)
    image += b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
    content = b"zz " * operators + b"q 612 0 0 792 0 0 cm /Im0 Do Q"
    return pdf_file(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /XObject << /Im0 5 0 R >> >> >>",
            pdf_stream(content, compress=True),
            image,
        ]
    )


def hostile_files(long_pages: int = 300, bomb_pixels: int = 25_000) -> dict[str, bytes]:
    """Every hostile file by name (see the module docstring)."""
    valid = text_pdf(pages=3, text="Truncated document")
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(png, format="PNG")
    return {
        "truncated.pdf": valid[: int(len(valid) * 0.6)],
        "garbage.pdf": b"%PDF-1.7\n" + random.Random(7).randbytes(20_000),
        "encrypted.pdf": text_pdf(text="Secret", password="hunter2"),
        "zero_pages.pdf": pdf_file([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]),
        "not_a_pdf.pdf": png.getvalue(),
        "empty.pdf": b"",
        "huge_page.pdf": _one_page(b"[0 0 200000 200000]", b"BT /F1 2000 Tf 1000 1000 Td (Huge) Tj ET"),
        "image_bomb.pdf": image_bomb(bomb_pixels),
        "render_bomb.pdf": render_bomb(),
        "long_document.pdf": text_pdf(pages=long_pages, text="Long document", page_size=(200, 200)),
        "flood.pdf": flood(),
        "absurd_box.pdf": absurd_box(),
        **false_rejections(),
    }


def write_files(out_dir: str | pathlib.Path, files: dict[str, bytes]) -> list[pathlib.Path]:
    """Write ``{name: bytes}`` into ``out_dir`` (created if missing); returns the paths written."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    return paths


def write_hostile_corpus(out_dir: str | pathlib.Path, **kwargs) -> list[pathlib.Path]:
    """Write :func:`hostile_files` into ``out_dir``; returns the paths written."""
    return write_files(out_dir, hostile_files(**kwargs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--long-pages", type=int, default=300)
    args = parser.parse_args(argv)
    for path in write_hostile_corpus(args.out_dir, long_pages=args.long_pages):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
