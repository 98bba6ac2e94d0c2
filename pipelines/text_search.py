"""BM25 over the pages' title and text layer, scored as Vespa's ``bm25`` rank feature, and rank fusion.

:class:`TextIndex` keeps one BM25 index per field (bm25s), like Vespa's per-field ``bm25(title)`` and
``bm25(text)``: each field has its own document frequencies and average length. Vespa's formula
(docs.vespa.ai, "The BM25 rank feature") is

    sum over query terms of  idf(t) * f(t, D) * (k1 + 1) / (f(t, D) + k1 * (1 - b + b * |D| / avg|D|))
    with idf(t) = log(1 + (N - n(t) + 0.5) / (n(t) + 0.5)), k1 = 1.2, b = 0.75,

which is bm25s's ``atire`` term-frequency part with its ``lucene`` idf. Tokens here are lowercased Unicode word
runs without stemming or stop words; Vespa's linguistics (OpenNLP tokenizer, stemming) may split and normalise some
words differently, so scores agree exactly only on plain words.

The ``hybrid`` profile (local and Vespa) adds ``HYBRID_BM25_WEIGHT * (bm25(title) + bm25(text))`` to the exact
MaxSim of the re-ranked pages; :func:`reciprocal_rank_fusion` is the rank-based alternative.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

#: Weight of the BM25 sum in the ``hybrid`` second phase: the Vespa profile's (``vespa.app.hybrid_bm25_weight``).
HYBRID_BM25_WEIGHT = 2.0
#: Vespa's bm25 defaults.
BM25_K1 = 1.2
BM25_B = 0.75
#: Reciprocal rank fusion's constant (Vespa's ``reciprocal_rank_fusion`` and the RRF paper use 60).
RRF_K = 60
#: Pages a text query contributes to the candidates (Vespa's weakAnd keeps about this many best text matches).
TEXT_TARGET_HITS = 100
FIELDS = ("title", "text")

_WORD = re.compile(r"\w+")


def tokenize(text: str | None) -> list[str]:
    """Lowercased word tokens of ``text`` (Unicode ``\\w+`` runs)."""
    return _WORD.findall((text or "").lower())


class TextIndex:
    """Per-field BM25 over a table's ``title`` and ``text`` values (None counts as empty), one row per page."""

    def __init__(self, titles: Sequence[str | None], texts: Sequence[str | None]):
        if len(titles) != len(texts):
            msg = f"{len(titles)} titles but {len(texts)} texts"
            raise ValueError(msg)
        self.n_pages = len(texts)
        self._fields = {name: _field_index(values) for name, values in zip(FIELDS, (titles, texts), strict=True)}

    def field_scores(self, query: str | None) -> dict[str, np.ndarray]:
        """``{field: bm25 score of every page (float64)}`` for the query's words."""
        tokens = tokenize(query)
        out = {}
        for name, index in self._fields.items():
            if index is None:
                out[name] = np.zeros(self.n_pages)
                continue
            ids = index.get_tokens_ids(tokens)
            out[name] = np.asarray(index.get_scores(ids), dtype=np.float64) if ids else np.zeros(self.n_pages)
        return out

    def scores(self, query: str | None) -> np.ndarray:
        """``bm25(title) + bm25(text)`` of every page."""
        return sum(self.field_scores(query).values(), np.zeros(self.n_pages))

    def candidates(self, query: str | None, target_hits: int = TEXT_TARGET_HITS) -> np.ndarray:
        """The up to ``target_hits`` pages with the highest positive BM25 sum (ties by page order), sorted."""
        return top_matches(self.scores(query), target_hits)


def top_matches(scores: np.ndarray, target_hits: int = TEXT_TARGET_HITS) -> np.ndarray:
    """The up to ``target_hits`` pages with the highest positive ``scores`` (ties by page order), sorted."""
    matched = np.flatnonzero(scores > 0)
    if len(matched) > target_hits:
        order = np.lexsort((matched, -scores[matched]))
        matched = matched[order[:target_hits]]
    return np.sort(matched)


def _field_index(values: Sequence[str | None]):
    """A bm25s index of one field (None when no page has a word in it)."""
    import bm25s

    corpus = [tokenize(v) for v in values]
    if not any(corpus):
        return None
    index = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="atire", idf_method="lucene")
    index.index(corpus, show_progress=False)
    return index


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each entry by descending score (ties by position)."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))
    out = np.empty(len(scores), dtype=np.int64)
    out[order] = np.arange(1, len(scores) + 1)
    return out


def reciprocal_rank_fusion(*scores: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """``sum_i 1 / (k + rank_i)`` over the score arrays (same items, same order), as Vespa's
    ``reciprocal_rank_fusion``: each list contributes by rank, whatever its score scale."""
    if not scores:
        msg = "reciprocal_rank_fusion needs at least one score array"
        raise ValueError(msg)
    return sum((1.0 / (k + ranks(s)) for s in scores), np.zeros(len(scores[0])))
