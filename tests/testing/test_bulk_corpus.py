"""The bulk corpus: exact page counts, mixed lengths and layouts, byte-for-byte deterministic."""

from __future__ import annotations

import json
from collections import Counter

import pypdfium2 as pdfium

from pipelines.testing.bulk_corpus import MANIFEST_NAME, generate_bulk_corpus, plan_bulk_corpus


def test_a_thousand_page_plan_mixes_lengths_sizes_and_layouts():
    docs = plan_bulk_corpus(1000, seed=0)
    lengths = [len(doc.pages) for doc in docs]
    assert sum(lengths) == 1000
    assert min(lengths) == 1 and max(lengths) >= 30  # one-page memos next to long reports and booklets
    assert len({doc.archetype for doc in docs}) >= 5
    layouts = Counter(page.layout for doc in docs for page in doc.pages)
    assert {"text", "table", "chart", "slide", "scan"} <= set(layouts)
    sizes = {(page.width, page.height) for doc in docs for page in doc.pages}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes) and len(sizes) >= 4
    assert plan_bulk_corpus(1000, seed=0) == docs  # deterministic
    assert plan_bulk_corpus(1000, seed=1) != docs


def test_generated_files_match_the_plan_and_are_identical_across_runs(tmp_path):
    first = generate_bulk_corpus(tmp_path / "a", pages=60, seed=3)
    second = generate_bulk_corpus(tmp_path / "b", pages=60, seed=3)
    assert [p.name for p in first] == [p.name for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    planned = {doc["file_name"]: doc["pages"] for doc in manifest["documents"]}
    total = 0
    for path in first:
        pdf = pdfium.PdfDocument(str(path))
        try:
            assert len(pdf) == len(planned[path.name])
            for page, spec in zip(pdf, planned[path.name], strict=True):
                assert page.get_size() == (spec["width"], spec["height"])
                has_text = page.get_textpage().count_chars() > 20
                assert has_text == (spec["layout"] != "scan"), (path.name, spec)  # scans have no text layer
            total += len(pdf)
        finally:
            pdf.close()
    assert total == 60
