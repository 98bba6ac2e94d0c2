"""BM25 scored as Vespa's bm25 rank feature (per field), and reciprocal rank fusion."""

import math

import numpy as np

from pipelines.text_search import TextIndex, reciprocal_rank_fusion, tokenize

TITLES = ["Annual report 2023", "Coral reef survey", None, "Espresso machine manual", "Report"]
TEXTS = [
    "Revenue grew in Europe; revenue in Asia fell.",
    "Bleaching of coral reefs, a field survey of reef health.",
    "",
    "Descale the espresso machine monthly. The machine needs water.",
    "The annual revenue report of the coral company.",
]


def vespa_bm25(query: str, values: list[str | None], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """docs.vespa.ai/en/ranking/bm25.html written out: per query term idf * f * (k1 + 1) / (f + k1 * norm)."""
    docs = [tokenize(v) for v in values]
    n_docs, average = len(docs), sum(len(d) for d in docs) / len(docs)
    scores = []
    for doc in docs:
        total = 0.0
        for term in tokenize(query):
            frequency, containing = doc.count(term), sum(term in d for d in docs)
            if frequency:
                idf = math.log(1 + (n_docs - containing + 0.5) / (containing + 0.5))
                total += idf * frequency * (k1 + 1) / (frequency + k1 * (1 - b + b * len(doc) / average))
        scores.append(total)
    return scores


def test_bm25_per_field_equals_vespas_formula():
    index = TextIndex(TITLES, TEXTS)
    for query in ("annual revenue report", "coral REEF", "machine", "nothing matches"):
        fields = index.field_scores(query)
        np.testing.assert_allclose(fields["title"], vespa_bm25(query, TITLES), rtol=1e-6)
        np.testing.assert_allclose(fields["text"], vespa_bm25(query, TEXTS), rtol=1e-6)
        np.testing.assert_allclose(index.scores(query), fields["title"] + fields["text"])
    assert index.scores("coral reef")[1] > index.scores("coral reef")[4] > 0


def test_text_candidates_are_the_best_positive_matches():
    index = TextIndex(TITLES, TEXTS)
    scores = index.scores("revenue report")
    assert index.candidates("revenue report").tolist() == [0, 4]
    assert index.candidates("revenue report", target_hits=1).tolist() == [int(np.argmax(scores))]
    assert index.candidates("zebra").tolist() == []


def test_reciprocal_rank_fusion_sums_reciprocal_ranks():
    first, second = np.array([3.0, 1.0, 2.0]), np.array([0.0, 5.0, 5.0])  # tie: earlier item ranks first
    expected = [1 / 61 + 1 / 63, 1 / 63 + 1 / 61, 1 / 62 + 1 / 62]
    np.testing.assert_allclose(reciprocal_rank_fusion(first, second), expected)
