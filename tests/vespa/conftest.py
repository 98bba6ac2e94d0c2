"""Fixtures for the Vespa tests: a fake /document/v1 server with the schema's validator, and small indexes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipelines import index, schema
from pipelines.index.writer import PartWriter
from pipelines.stages.compress import binarize
from tests.vespa.fake_vespa import FakeVespa
from tests.vespa.schema_check import validator

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake():
    with FakeVespa(validator=validator()) as server:
        yield server
        assert not server.errors, server.errors


def doc_rows(source_uri: str, n_pages: int, version: int = 0, seed: int = 0) -> list[dict]:
    """Page records of one synthetic document; ``version`` changes its content (and so its ids)."""
    doc_id = hashlib.sha256(f"{source_uri}|{version}".encode()).hexdigest()[:32]
    rng = np.random.default_rng(int(doc_id[:8], 16) + seed)
    rows = []
    for number in range(1, n_pages + 1):
        n = int(rng.integers(4, 24))
        vectors = rng.normal(size=(n, 128)).astype(np.float16)
        rows.append(
            {
                "page_id": f"{doc_id}-p{number}",
                "doc_id": doc_id,
                "source_uri": source_uri,
                "page_number": number,
                "page_count": n_pages,
                "title": Path(source_uri).stem,
                "text": f"text of page {number} of {source_uri}",
                "thumbnail": b"\xff\xd8\xff\xe0 not really a jpeg",
                "n_vectors_raw": n,
                "n_vectors": n,
                "embedding": vectors.astype("<f2").tobytes(),
                "binary": binarize(vectors.astype(np.float32)).tobytes(),
            }
        )
    return rows


def write_index(location: Path, documents: dict[str, tuple[int, int]], config_hash: str = "cfg1") -> list[str]:
    """(Over)write an index of ``{source_uri: (n_pages, version)}``; returns its page ids."""
    target = index.IndexLocation(str(location))
    target.clear_tables()
    target.write_text(index.CONFIG_FILE, "model:\n  name: tiny\n")
    page_ids = []
    for uri, (n_pages, version) in documents.items():
        rows = doc_rows(uri, n_pages, version)
        PartWriter(target, "tiny", config_hash).write(schema.rows_to_table(rows))
        page_ids += [r["page_id"] for r in rows]
    return page_ids


def vespa_id(page_id: str) -> str:
    return f"id:pdf_page:pdf_page::{page_id}"
