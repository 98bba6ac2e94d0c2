"""Checks for the sample-corpus generator: determinism, page geometry, text layers and query targets.

Uses poppler (pdfinfo via pdf2image, pdftotext) as an independent reader of the generated PDFs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from pdf2image import convert_from_path, pdfinfo_from_path

from pipelines.testing.corpus import (
    CORPUS_PAGES,
    EXPECTED_PAGE_COUNTS,
    QUERIES_FILE_NAME,
    SampleQuery,
    generate_sample_corpus,
    load_queries,
)

# fmt: off
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "by", "did", "do", "does", "for", "from", "how", "in", "is", "it", "many", "much", "of",
    "on", "or", "per", "the", "to", "what", "which", "why", "with",
})
# fmt: on


def _sha256_tree(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _normalise(text: str) -> str:
    # a keyword such as "Asia Pacific" may be split across a line break by the layout
    return " ".join(text.lower().split())


def _contains(text: str, phrase: str) -> bool:
    """Whole-word, case- and whitespace-insensitive phrase match ("tart" must not match "started")."""
    return re.search(rf"(?<!\w){re.escape(_normalise(phrase))}(?!\w)", _normalise(text)) is not None


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    paths = generate_sample_corpus(out)
    assert paths == sorted(out / name for name in EXPECTED_PAGE_COUNTS)
    return out


@pytest.fixture(scope="module")
def page_texts(corpus_dir: Path) -> dict[tuple[str, int], str]:
    """(file name, 1-based page) -> pdftotext output for that page."""
    texts = {}
    for name, n_pages in EXPECTED_PAGE_COUNTS.items():
        out = subprocess.run(
            ["pdftotext", "-enc", "UTF-8", str(corpus_dir / name), "-"], check=True, capture_output=True, text=True
        ).stdout
        # pdftotext ends every page with a form feed, so n pages give n + 1 chunks (the last one empty)
        chunks = out.split("\f")
        assert len(chunks) == n_pages + 1, name
        texts.update({(name, i): chunk for i, chunk in enumerate(chunks[:n_pages], 1)})
    return texts


def test_byte_for_byte_deterministic_and_idempotent(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # reportlab's timestamp honours SOURCE_DATE_EPOCH even in invariant mode; the generator must pin it
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    other = tmp_path / "nested" / "second"
    generate_sample_corpus(str(other))
    expected = _sha256_tree(corpus_dir)
    assert set(expected) == {*EXPECTED_PAGE_COUNTS, QUERIES_FILE_NAME}
    assert _sha256_tree(other) == expected

    # regenerating into a populated directory rewrites the same bytes and leaves no temporary files behind
    generate_sample_corpus(other)
    assert _sha256_tree(other) == expected


def test_page_counts_and_sizes(corpus_dir: Path) -> None:
    all_sizes = set()
    orientations = set()
    for name, specs in CORPUS_PAGES.items():
        n = EXPECTED_PAGE_COUNTS[name]
        assert len(specs) == n
        info = pdfinfo_from_path(str(corpus_dir / name), first_page=1, last_page=n)
        assert info["Pages"] == n, name
        for page, spec in enumerate(specs, 1):
            m = re.match(r"([\d.]+) x ([\d.]+) pts", info[f"Page {page:4d} size"])
            assert m, info
            actual = (float(m[1]), float(m[2]))
            assert actual == pytest.approx(spec.size, abs=0.01), (name, page)
            all_sizes.add((round(actual[0]), round(actual[1])))
            orientations.add(spec.orientation)

    assert orientations == {"portrait", "landscape"}
    assert len({tuple(sorted(s)) for s in all_sizes}) >= 3, all_sizes  # >= 3 distinct paper sizes, not just rotations
    assert (960, 540) in all_sizes
    assert any(len({s.size for s in specs}) > 1 for specs in CORPUS_PAGES.values()), "no document mixes page sizes"
    assert 1 in EXPECTED_PAGE_COUNTS.values(), "no one-page document"
    assert 15 <= sum(EXPECTED_PAGE_COUNTS.values()) <= 25
    kinds = Counter(s.kind for specs in CORPUS_PAGES.values() for s in specs)
    assert {"text", "table", "chart", "image"} <= set(kinds), kinds


def test_text_layers(corpus_dir: Path, page_texts: dict[tuple[str, int], str]) -> None:
    for name, specs in CORPUS_PAGES.items():
        for page, spec in enumerate(specs, 1):
            text = page_texts[name, page]
            if spec.kind == "image":
                assert spec.keywords == ()
                assert text.strip() == "", (name, page, text[:200])
                # ...yet the page is not blank: the scan carries the content visually
                [img] = convert_from_path(str(corpus_dir / name), dpi=20, first_page=page, last_page=page)
                dark = sum(img.convert("L").histogram()[:128])
                assert dark > 0.005 * img.width * img.height, (name, page)
            else:
                assert spec.keywords, (name, page)
                missing = [k for k in spec.keywords if not _contains(text, k)]
                assert not missing, (name, page, missing)


def test_distinct_page_vocabulary(page_texts: dict[tuple[str, int], str]) -> None:
    """Each page's keywords are distinctive: none of them appears on a page of a different document."""
    for name, specs in CORPUS_PAGES.items():
        for page, spec in enumerate(specs, 1):
            for keyword in spec.keywords:
                elsewhere = [k for k, t in page_texts.items() if k[0] != name and _contains(t, keyword)]
                assert not elsewhere, (name, page, keyword, elsewhere)


def test_queries_target_existing_pages_with_matching_words(
    corpus_dir: Path, page_texts: dict[tuple[str, int], str]
) -> None:
    queries = load_queries(corpus_dir / QUERIES_FILE_NAME)
    assert len(queries) == len(set(queries)) >= sum(EXPECTED_PAGE_COUNTS.values())
    covered = {(q.file_name, q.page_number) for q in queries}
    assert covered == set(page_texts), "every page should be the answer to at least one query"

    # A small BM25 over the text layer: a text-only retriever must be able to find every text-layer target.
    docs = {key: Counter(_words(t)) for key, t in page_texts.items()}
    avg_len = sum(sum(c.values()) for c in docs.values()) / len(docs)
    df = Counter(w for c in docs.values() for w in c)

    def bm25(terms: list[str], counts: Counter[str]) -> float:
        length = sum(counts.values())
        score = 0.0
        for w in terms:
            tf = counts[w]
            idf = math.log(1 + (len(docs) - df[w] + 0.5) / (df[w] + 0.5))
            score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / avg_len))
        return score

    for q in queries:
        assert q.file_name in EXPECTED_PAGE_COUNTS, q
        assert 1 <= q.page_number <= EXPECTED_PAGE_COUNTS[q.file_name], q
        if CORPUS_PAGES[q.file_name][q.page_number - 1].kind == "image":
            continue  # no text layer: only a visual model can find these
        terms = [w for w in _words(q.query) if w not in _STOPWORDS]
        target = (q.file_name, q.page_number)
        assert set(terms) & set(docs[target]), q
        ranking = sorted(docs, key=lambda k: bm25(terms, docs[k]), reverse=True)
        assert target in ranking[:3], (q, ranking[:3])


def test_load_queries_round_trip_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"query": "lemon tart", "file_name": "recipe_booklet.pdf", "page_number": 3, "extra": 1}\n\n', "utf-8"
    )
    assert load_queries(path) == [SampleQuery("lemon tart", "recipe_booklet.pdf", 3)]

    for bad in (
        "not json",
        "[1, 2]",
        json.dumps({"query": "x", "file_name": "a.pdf"}),
        json.dumps({"query": "x", "file_name": "a.pdf", "page_number": 0}),
        json.dumps({"query": "x", "file_name": "a.pdf", "page_number": True}),
        json.dumps({"query": " ", "file_name": "a.pdf", "page_number": 1}),
    ):
        path.write_text(bad + "\n", "utf-8")
        with pytest.raises(ValueError, match=r"q\.jsonl:1"):
            load_queries(path)
