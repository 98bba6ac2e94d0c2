"""A seeded corpus of malformed-but-openable PDFs, for the fuzz test of per-document isolation.

:func:`fuzz_corpus` returns a few hundred small files (a few KB each, ~0.5 s to generate), the same bytes for
the same seed. Most open in at least one renderer; what each becomes (indexed, partly indexed, an error row)
is not fixed here: the test only asks that every one is accounted for and none stops the run. Families:

==========  =========================================================================================
box         absurd, inverted, zero, negative, non-numeric, short/long MediaBox, CropBox and the other
            boxes; inherited boxes; the page box that once stopped every run (``hostile.absurd_box``)
aspect      pages of aspect ratio 2:1 up to 10^6:1, both ways round, small and large
userunit    huge, tiny, zero, negative and non-numeric ``/UserUnit``
rotate      ``/Rotate`` of 90/180/270, negative, not a multiple of 90, huge, non-numeric; on odd boxes
count       page trees declaring giant, negative or non-integer ``/Count``; missing and repeated kids,
            a page tree that contains itself
font        broken font programs (random bytes as Type 1 / TrueType / CFF), missing descendants, absurd
            widths and sizes, a Type 3 font whose glyph draws itself
image       images with wrong sizes, depths, filters (random bytes as JPEG, JPEG 2000, JBIG2, CCITT,
            Flate), colour spaces, soft masks; broken inline images
content     garbage operators, unbalanced ``q``/``Q``, absurd matrices, a form that draws itself
structure   broken cross-reference tables and trailers, a bogus ``/Encrypt``, appended garbage
flip        random byte flips, insertions, deletions and truncations of two valid files
==========  =========================================================================================

``python -m tests.fuzz_pdfs OUT_DIR`` writes them.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import random
import re
from collections.abc import Sequence

from PIL import Image
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen.canvas import Canvas

from pipelines.testing import hostile
from pipelines.testing.hostile import absurd_box, pdf_file, pdf_stream, text_pdf

#: Content of most generated pages: a filled box and a line of text in the page's font.
CONTENT = b"0 0 1 rg 10 10 40 20 re f BT /F1 12 Tf 5 5 Td (Fuzz) Tj ET"
HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def page_pdf(
    page_keys: bytes = b"/MediaBox [0 0 612 792]",
    content: bytes = CONTENT,
    resources: bytes = b"<< /Font << /F1 5 0 R >> >>",
    font: bytes = HELVETICA,
    extra: Sequence[bytes] = (),
    pages: bytes = b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
) -> bytes:
    """One page (object 3) with ``page_keys`` in its dictionary, its content (4) and font (5); ``extra``
    objects are numbered from 6. ``pages`` (object 2) is the page tree."""
    return pdf_file(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            pages,
            b"<< /Type /Page /Parent 2 0 R %s /Contents 4 0 R /Resources %s >>" % (page_keys, resources),
            pdf_stream(content),
            font,
            *extra,
        ]
    )


def _num(value: float) -> bytes:
    return (b"%d" % value) if float(value).is_integer() and abs(value) < 1e18 else repr(float(value)).encode()


def _box(x0, y0, x1, y1) -> bytes:
    return b"[%s]" % b" ".join(_num(v) for v in (x0, y0, x1, y1))


def _boxes(rng: random.Random) -> dict[str, bytes]:
    fixed = {
        "huge": b"/MediaBox [0 0 1e30 1e30]",
        "inverted": b"/MediaBox [612 792 0 0]",
        "negative": b"/MediaBox [0 0 -612 -792]",
        "zero": b"/MediaBox [0 0 0 0]",
        "point": b"/MediaBox [5 5 5 5]",
        "line": b"/MediaBox [0 0 612 0]",
        "tiny": b"/MediaBox [0 0 1e-9 1e-9]",
        "tall": b"/MediaBox [0 0 3 200000]",
        "wide": b"/MediaBox [0 0 200000 3]",
        "spec-max": b"/MediaBox [0 0 14400 14400]",
        "billion": b"/MediaBox [-1e9 -1e9 1e9 1e9]",
        "short": b"/MediaBox [0 0 612]",
        "long": b"/MediaBox [0 0 612 792 5 6]",
        "names": b"/MediaBox [/a /b /c /d]",
        "empty": b"/MediaBox []",
        "strings": b"/MediaBox [0 0 (612) (792)]",
        "overflow": b"/MediaBox [0 0 1e400 792]",
        "bigint": b"/MediaBox [0 0 99999999999999999999 792]",
        "missing": b"",
        "dangling": b"/MediaBox 99 0 R",
        "not-array": b"/MediaBox 612",
        "crop-outside": b"/MediaBox [0 0 612 792] /CropBox [1000 1000 2000 2000]",
        "crop-inverted": b"/MediaBox [0 0 612 792] /CropBox [500 700 100 100]",
        "crop-zero": b"/MediaBox [0 0 612 792] /CropBox [0 0 0 0]",
        "crop-larger": b"/MediaBox [0 0 612 792] /CropBox [-1e6 -1e6 1e6 1e6]",
        "crop-sliver": b"/MediaBox [0 0 612 792] /CropBox [0 0 612 0.001]",
        "crop-names": b"/MediaBox [0 0 612 792] /CropBox [/x 0 1 1]",
        "crop-tall": b"/MediaBox [0 0 612 200000] /CropBox [0 0 2 200000]",
        "bleed-trim-art": b"/MediaBox [0 0 612 792] /BleedBox [0 0 -1 -1] /TrimBox [9e9 9e9 0 0] /ArtBox [1 2]",
    }
    out = {f"box-{name}": page_pdf(keys) for name, keys in fixed.items()}
    inherited = b"<< /Type /Pages /Kids [3 0 R] /Count 1 /MediaBox [0 0 1e25 0.5] /Rotate 90 >>"
    out["box-inherited"] = page_pdf(b"", pages=inherited)
    for i in range(30):  # random boxes over thirty orders of magnitude, either corner first
        values = [rng.choice([-1, 1]) * 10 ** rng.uniform(-6, 24) for _ in range(4)]
        key = rng.choice([b"/MediaBox", b"/CropBox"])
        base = b"/MediaBox [0 0 612 792] " if key == b"/CropBox" else b""
        out[f"box-random-{i:02d}"] = page_pdf(base + key + b" " + _box(*values))
    return out


def _aspects() -> dict[str, bytes]:
    out = {}
    for ratio in (2, 50, 100, 150, 199, 199.9, 200, 200.1, 201, 250, 1000, 1e4, 1e6):
        for short in (1, 72):
            for tall in (True, False):
                long = short * ratio
                width, height = (short, long) if tall else (long, short)
                name = f"aspect-{ratio:g}-{short}-{'tall' if tall else 'wide'}".replace("+", "")
                out[name] = page_pdf(b"/MediaBox " + _box(0, 0, width, height))
    return out


def _user_units() -> dict[str, bytes]:
    units = {"1e6": b"1e6", "75000": b"75000", "0": b"0", "neg": b"-1", "negbig": b"-1e6", "tiny": b"1e-9",
             "name": b"/Big", "string": b"(3)", "max": b"1e308", "ref": b"99 0 R"}  # fmt: skip
    boxes = {"letter": _box(0, 0, 612, 792), "max": _box(0, 0, 14400, 14400), "strip": _box(0, 0, 1, 14400)}
    return _each_box("userunit", b"/UserUnit", units, boxes)


def _rotations() -> dict[str, bytes]:
    rotations = {"90": b"90", "180": b"180", "270": b"270", "neg90": b"-90", "45": b"45", "450": b"450",
                 "huge": b"1000000000", "float": b"3.5", "name": b"/R", "overflow": b"2147483737"}  # fmt: skip
    boxes = {"letter": _box(0, 0, 612, 792), "strip": _box(0, 0, 4, 780), "inverted": _box(612, 792, 0, 0)}
    return _each_box("rotate", b"/Rotate", rotations, boxes)


def _each_box(family: str, key: bytes, values: dict[str, bytes], boxes: dict[str, bytes]) -> dict[str, bytes]:
    """One page per (value, box): ``/MediaBox <box> <key> <value>``, named ``<family>-<value>-<box>``."""
    return {
        f"{family}-{value_name}-{box_name}": page_pdf(b"/MediaBox %s %s %s" % (media, key, value))
        for value_name, value in values.items()
        for box_name, media in boxes.items()
    }


def _counts() -> dict[str, bytes]:
    out = {}
    counts = {"1e9": b"1000000000", "2pow31": b"2147483648", "2pow63": b"9223372036854775808", "neg": b"-1",
              "zero": b"0", "float": b"2.5", "name": b"/Many", "1e20": b"100000000000000000000"}  # fmt: skip
    kids = {"one": b"[3 0 R]", "missing": b"[3 0 R 99 0 R 98 0 R]", "repeated": b"[%s]" % b" ".join([b"3 0 R"] * 4)}
    for count, value in counts.items():
        for kind, array in kids.items():
            out[f"count-{count}-{kind}"] = page_pdf(pages=b"<< /Type /Pages /Kids %s /Count %s >>" % (array, value))
    out["count-self"] = page_pdf(pages=b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>")
    out["count-not-array"] = page_pdf(pages=b"<< /Type /Pages /Kids 3 0 R /Count 1 >>")
    return out


def _fonts(rng: random.Random) -> dict[str, bytes]:
    out = {}
    for kind in (b"FontFile", b"FontFile2", b"FontFile3"):
        for i in range(4):
            program = pdf_stream(
                rng.randbytes(rng.randint(16, 3000)), b" /Subtype /Type1C" if kind == b"FontFile3" else b""
            )
            subtype = b"TrueType" if kind == b"FontFile2" else b"Type1"
            descriptor = (
                b"<< /Type /FontDescriptor /FontName /Fz /Flags 32 /FontBBox [0 0 1000 1000] /%s 7 0 R >>" % kind
            )
            font = (
                b"<< /Type /Font /Subtype /%s /BaseFont /Fz /FontDescriptor 6 0 R /FirstChar 32 /LastChar 126 >>"
                % subtype
            )
            out[f"font-{kind.decode().lower()}-{i}"] = page_pdf(font=font, extra=[descriptor, program])
    fonts = {
        "type0-no-descendants": b"<< /Type /Font /Subtype /Type0 /BaseFont /Fz /Encoding /Identity-H >>",
        "type0-bad-descendant": b"<< /Type /Font /Subtype /Type0 /BaseFont /Fz /Encoding /Identity-H "
        b"/DescendantFonts [6 0 R] >>",
        "not-a-dict": b"42",
        "widths-huge": b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /FirstChar 0 /LastChar 2 "
        b"/Widths [1e30 -1e30 1e308] >>",
        "firstchar-huge": b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /FirstChar 1000000000 "
        b"/LastChar -5 /Widths [1 2 3] >>",
        "differences": b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding << /Differences "
        b"[-5 /a 1e9 /b /c (x) 3.5] >> >>",
        "no-subtype": b"<< /Type /Font >>",
        "unknown-subtype": b"<< /Type /Font /Subtype /Type9 /BaseFont /Helvetica >>",
    }
    descendant = b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /Fz /CIDSystemInfo 99 0 R /W [0 [1e9]] >>"
    for name, font in fonts.items():
        out[f"font-{name}"] = page_pdf(font=font, extra=[descendant])
    out["font-missing"] = page_pdf(resources=b"<< /Font << /F1 99 0 R >> >>")
    for size in (b"1e30", b"-1e30", b"0", b"1e-30"):
        out[f"font-size-{size.decode()}"] = page_pdf(content=b"BT /F1 %s Tf 5 5 Td (Fuzz) Tj ET" % size)
    out["font-scaling"] = page_pdf(content=b"BT /F1 12 Tf 1e9 Tz 1e9 TL 1e9 Tc 5 5 Td (Fuzz) Tj T* (Fuzz) ' ET")
    glyph = pdf_stream(b"0 0 d0 BT /F1 1 Tf (a) Tj ET")  # draws its own glyph with its own font
    type3 = (
        b"<< /Type /Font /Subtype /Type3 /FontBBox [0 0 1 1] /FontMatrix [1 0 0 1 0 0] /CharProcs << /a 6 0 R >> "
        b"/Encoding << /Differences [97 /a] >> /FirstChar 97 /LastChar 97 /Widths [1] "
        b"/Resources << /Font << /F1 5 0 R >> >> >>"
    )
    out["font-type3-recursive"] = page_pdf(content=b"BT /F1 12 Tf 5 5 Td (aaaa) Tj ET", font=type3, extra=[glyph])
    return out


def _image(keys: bytes, data: bytes) -> bytes:
    return b"<< /Type /XObject /Subtype /Image %s /Length %d >>\nstream\n" % (keys, len(data)) + data + b"\nendstream"


def _images(rng: random.Random) -> dict[str, bytes]:
    draw = b"q 100 0 0 100 10 10 cm /Im0 Do Q"
    resources = b"<< /XObject << /Im0 6 0 R >> >>"
    rgb = b"/ColorSpace /DeviceRGB /BitsPerComponent 8"
    cases = {
        "short-data": _image(b"/Width 64 /Height 64 " + rgb, b"\x80" * 100),
        "zero-size": _image(b"/Width 0 /Height 0 " + rgb, b""),
        "negative-size": _image(b"/Width -64 /Height 64 " + rgb, b"\x80" * 100),
        "declared-huge": _image(b"/Width 1000000000 /Height 1000000000 " + rgb, b"\x80" * 100),
        "declared-wide": _image(b"/Width 2147483647 /Height 1 " + rgb, b"\x80" * 100),
        "no-colorspace": _image(b"/Width 8 /Height 8 /BitsPerComponent 8", b"\x80" * 192),
        "unknown-colorspace": _image(b"/Width 8 /Height 8 /ColorSpace /Fizz /BitsPerComponent 8", b"\x80" * 192),
        "bad-icc": _image(b"/Width 8 /Height 8 /ColorSpace [/ICCBased 7 0 R] /BitsPerComponent 8", b"\x80" * 192),
        "short-palette": _image(
            b"/Width 8 /Height 8 /ColorSpace [/Indexed /DeviceRGB 255 <00ff>] /BitsPerComponent 8", bytes(range(64))
        ),
        "bad-decode": _image(b"/Width 8 /Height 8 " + rgb + b" /Decode [1 0 5]", b"\x80" * 192),
        "mask-depth": _image(b"/Width 8 /Height 8 /ImageMask true /BitsPerComponent 8", b"\x80" * 64),
        "bad-smask": _image(b"/Width 8 /Height 8 " + rgb + b" /SMask 5 0 R", b"\x80" * 192),
        "unknown-filter": _image(b"/Width 8 /Height 8 " + rgb + b" /Filter /FooDecode", b"\x80" * 192),
        "filter-chain": _image(
            b"/Width 8 /Height 8 " + rgb + b" /Filter [/FlateDecode /DCTDecode /LZWDecode]", rng.randbytes(300)
        ),
    }
    for depth in (0, 3, 7, 32, 64):
        cases[f"depth-{depth}"] = _image(b"/Width 8 /Height 8 /ColorSpace /DeviceRGB /BitsPerComponent %d" % depth,
                                         b"\x80" * 512)  # fmt: skip
    for name in (
        "DCTDecode",
        "JPXDecode",
        "JBIG2Decode",
        "CCITTFaxDecode",
        "FlateDecode",
        "LZWDecode",
        "RunLengthDecode",
    ):
        for i in range(2):
            keys = b"/Width 300 /Height 200 " + rgb + b" /Filter /" + name.encode()
            cases[f"garbage-{name[:-6].lower()}-{i}"] = _image(keys, rng.randbytes(rng.randint(8, 4000)))
    out = {f"image-{name}": page_pdf(content=draw, resources=resources, extra=[image, pdf_stream(b"icc")])
           for name, image in cases.items()}  # fmt: skip
    inline = {
        "inline-short": b"BI /W 64 /H 64 /CS /RGB /BPC 8 ID \x80\x80\x80 EI",
        "inline-no-ei": b"BI /W 4 /H 4 /CS /G /BPC 8 ID " + b"\x80" * 16,
        "inline-huge": b"BI /W 99999999 /H 99999999 /CS /RGB /BPC 8 ID \x80 EI",
        "inline-filter": b"BI /W 16 /H 16 /CS /RGB /BPC 8 /F /DCT ID " + rng.randbytes(200) + b" EI",
    }
    for name, content in inline.items():
        out[f"image-{name}"] = page_pdf(content=b"q 100 0 0 100 10 10 cm " + content + b" Q")
    return out


def _contents(rng: random.Random) -> dict[str, bytes]:
    operators = [
        b"q",
        b"Q",
        b"cm",
        b"re",
        b"f",
        b"m",
        b"l",
        b"S",
        b"BT",
        b"ET",
        b"Tj",
        b"Do",
        b"gs",
        b"sh",
        b"W",
        b"n",
    ]
    out = {}
    for i in range(6):  # random operators with random (often absurd) operands
        tokens = []
        for _ in range(rng.randint(20, 400)):
            tokens += [_num(rng.choice([-1, 1]) * 10 ** rng.uniform(-5, 30)) for _ in range(rng.randint(0, 6))]
            tokens.append(rng.choice(operators))
        out[f"content-random-{i}"] = page_pdf(content=b" ".join(tokens))
    cases = {
        "bytes": rng.randbytes(2000),
        "unbalanced-q": b"q " * 20000 + CONTENT,
        "unbalanced-Q": b"Q " * 1000 + CONTENT,
        "huge-matrix": b"1e30 0 0 1e30 1e30 1e30 cm " + CONTENT,
        "singular-matrix": b"0 0 0 0 0 0 cm " + CONTENT,
        "missing-xobject": b"/Nope Do /Nope gs /Nope sh " + CONTENT,
        "bad-dash": b"[1e30 -5 0] 1e30 d 1e30 w 0 0 m 600 700 l S",
        "text-outside-bt": b"/F1 12 Tf (Fuzz) Tj ET ET BT BT",
        "long-string": b"BT /F1 12 Tf 5 5 Td (" + b"A" * 60000 + b") Tj ET",
    }
    for name, content in cases.items():
        out[f"content-{name}"] = page_pdf(content=content)
    form = pdf_stream(
        b"/Fm Do", b" /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /XObject << /Fm 6 0 R >> >>"
    )
    out["content-self-drawing-form"] = page_pdf(
        content=b"/Fm Do " + CONTENT, resources=b"<< /Font << /F1 5 0 R >> /XObject << /Fm 6 0 R >> >>", extra=[form]
    )
    out["content-wrong-length"] = page_pdf().replace(b"/Length %d" % len(CONTENT), b"/Length 999999")
    out["content-bad-flate"] = page_pdf().replace(
        b"/Length %d" % len(CONTENT), b"/Length %d /Filter /FlateDecode" % len(CONTENT)
    )
    return out


def _structures() -> dict[str, bytes]:
    valid = page_pdf()
    xref = valid.rindex(b"xref")
    return {
        "structure-no-xref": valid[:xref] + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n",
        "structure-bad-startxref": valid.replace(b"startxref\n%d" % xref, b"startxref\n999999"),
        "structure-zero-offsets": valid[:xref] + re.sub(rb"\d{10} 00000 n", b"0000000000 00000 n", valid[xref:]),
        "structure-no-trailer": valid[: valid.rindex(b"trailer")],
        "structure-two-trailers": valid + b"trailer\n<< /Size 1 /Root 77 0 R >>\nstartxref\n0\n%%EOF\n",
        "structure-bogus-encrypt": valid.replace(b"/Root 1 0 R", b"/Root 1 0 R /Encrypt << /Filter /Nope /V 9 >>"),
        "structure-appended-garbage": valid + random.Random(5).randbytes(3000),
        "structure-bad-object-header": valid.replace(b"4 0 obj", b"4 0 jbo"),
        "structure-version-9": valid.replace(b"%PDF-1.7", b"%PDF-9.9"),
        "structure-catalog-no-pages": valid.replace(b"/Type /Catalog /Pages 2 0 R", b"/Type /Catalog"),
        "structure-page-not-dict": valid.replace(b"/Kids [3 0 R]", b"/Kids [4 0 R]"),
    }


def _flip_bases() -> dict[str, bytes]:
    out = io.BytesIO()
    canvas = Canvas(out, pagesize=(300, 300), invariant=1)
    image = Image.new("RGB", (32, 32))
    image.putdata([(x * 8 % 256, y * 8 % 256, 128) for y in range(32) for x in range(32)])
    for number in (1, 2):
        canvas.setFont("Times-Roman", 14)
        canvas.drawString(20, 260, f"Fuzz base page {number}")
        canvas.drawImage(ImageReader(image), 20, 20, 200, 200)
        canvas.showPage()
    canvas.save()
    return {"text": text_pdf(pages=2, text="Fuzz base", page_size=(300, 300)), "image": out.getvalue()}


def _flips(rng: random.Random, count: int) -> dict[str, bytes]:
    out = {}
    bases = _flip_bases()
    for i in range(count):
        base_name = rng.choice(sorted(bases))
        data = bytearray(bases[base_name])
        kind = rng.choice(["flip", "flip", "flip", "insert", "delete", "truncate"])
        if kind == "flip":
            for _ in range(rng.choice([1, 2, 4, 8, 16, 64])):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "insert":
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        elif kind == "delete":
            at = rng.randrange(len(data))
            del data[at : at + rng.randint(1, 256)]
        else:
            del data[rng.randint(len(data) // 4, len(data) - 1) :]
        out[f"flip-{i:03d}-{base_name}-{kind}"] = bytes(data)
    return out


def fuzz_corpus(seed: int = 0, flips: int = 120) -> dict[str, bytes]:
    """Every fuzz file by name (``<family>-<case>.pdf``, see the module docstring), distinct bytes each (a
    comment naming the case is appended: no two are duplicates of one document)."""
    rng = random.Random(seed)
    families = [
        {"box-absurd": absurd_box()},
        _boxes(rng),
        _aspects(),
        _user_units(),
        _rotations(),
        _counts(),
        _fonts(rng),
        _images(rng),
        _contents(rng),
        _structures(),
        _flips(rng, flips),
    ]
    return {
        f"{name}.pdf": data + b"\n%" + name.encode() + b"\n" for family in families for name, data in family.items()
    }


def write_fuzz_corpus(out_dir: str | pathlib.Path, **kwargs) -> list[pathlib.Path]:
    """Write :func:`fuzz_corpus` into ``out_dir``; returns the paths written."""
    return hostile.write_files(out_dir, fuzz_corpus(**kwargs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_fuzz_corpus(args.out_dir, seed=args.seed)
    print(f"{len(paths)} files, {sum(p.stat().st_size for p in paths)} bytes in {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
