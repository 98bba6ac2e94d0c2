"""An independent, literal evaluation of the schema's rank expressions, the way Vespa defines them.

Works on the JSON that goes over the wire (feed documents with hex tensors, query bodies with list
tensors), cell by cell with plain Python loops, so it shares no code with ``pipelines.search`` or
``pipelines.vespa``:

* ``hamming(a, b)``  number of differing bits of two int8 cells (Vespa ranking-expressions reference);
* ``unpack_bits(t)`` int8 ``v[16]`` -> ``v[128]`` of 0/1, most significant bit first (default ``big``);
* ``sum(t, d)`` / ``reduce(t, max, d)`` reduce dimension ``d``; ``1 / (1 + x)`` is elementwise;
* ``sum(query(qm) * cell_cast(attribute(f), float))`` over a dense ``x[n]`` field: the dot product.

Also a stand-in for the ``/search/`` endpoint (:func:`search_handler`) that retrieves with exact
per-token nearest neighbours and ranks with these functions, for the fake Vespa server in tests.
"""

from __future__ import annotations

import re
import struct

# The expressions this module implements, verbatim; tests assert the schema uses exactly these.
MAX_SIM_BINARY = "sum(reduce(1 / (1 + sum(hamming(query(qtb), attribute(embedding)), v)), max, patch), querytoken)"
MAX_SIM_UNPACKED = "sum(reduce(sum(query(qt) * unpack_bits(attribute(embedding)), v), max, patch), querytoken)"
MAX_SIM_FLOAT = "sum(reduce(sum(query(qt) * cell_cast(attribute(embedding_float), float), v), max, patch), querytoken)"
MUVERA_SIMILARITY = "sum(query(qm) * cell_cast(attribute(muvera_embedding), float))"
PAGE_SIMILARITY = "sum(query(qp) * cell_cast(attribute(page_embedding), float))"
#: The one-vector-per-page profiles: the dense field their nearestNeighbor and first phase read, the query input, and
#: whether a second phase (``max_sim_float``) follows.
SINGLE_VECTOR_PROFILES = {
    "muvera": ("muvera_embedding", "qm", True),
    "page_vector": ("page_embedding", "qp", True),
    "similar_pages": ("page_embedding", "qp", False),
}


def int8_cells_from_hex(text: str) -> list[int]:
    raw = bytes.fromhex(text)
    return list(struct.unpack(f"{len(raw)}b", raw))


def bfloat16_cells_from_hex(text: str) -> list[float]:
    out = []
    for i in range(0, len(text), 4):
        bits = int(text[i : i + 4], 16) << 16
        out.append(struct.unpack(">f", bits.to_bytes(4, "big"))[0])
    return out


def mapped_int8_tensor(cells: dict) -> dict[str, list[int]]:
    return {label: int8_cells_from_hex(v) if isinstance(v, str) else [int(x) for x in v] for label, v in cells.items()}


def mapped_bfloat16_tensor(cells: dict) -> dict[str, list[float]]:
    return {
        label: bfloat16_cells_from_hex(v) if isinstance(v, str) else [float(x) for x in v]
        for label, v in cells.items()
    }


def dense_bfloat16_tensor(value: dict) -> list[float]:
    """Cells of a dense ``tensor<bfloat16>(x[n])`` feed value ``{"values": hex | [floats]}``."""
    values = value["values"]
    return bfloat16_cells_from_hex(values) if isinstance(values, str) else [float(x) for x in values]


def dot(a: list[float], b: list[float]) -> float:
    """``sum(a * b)`` of two dense vectors."""
    return sum(x * y for x, y in zip(a, b, strict=True))


def hamming(a: int, b: int) -> int:
    return bin((a ^ b) & 0xFF).count("1")


def unpack_bits(cells: list[int]) -> list[int]:
    out = []
    for cell in cells:
        byte = cell & 0xFF
        out.extend((byte >> (7 - bit)) & 1 for bit in range(8))
    return out


def max_sim_binary(qtb: dict[str, list[int]], embedding: dict[str, list[int]]) -> float:
    total = 0.0
    for q in qtb.values():
        best = float("-inf")
        for d in embedding.values():
            distance = sum(hamming(x, y) for x, y in zip(q, d, strict=True))
            best = max(best, 1 / (1 + distance))
        total += best
    return total


def max_sim_unpacked(qt: dict[str, list[float]], embedding: dict[str, list[int]]) -> float:
    total = 0.0
    unpacked = [unpack_bits(d) for d in embedding.values()]
    for q in qt.values():
        total += max(sum(x * y for x, y in zip(q, bits, strict=True)) for bits in unpacked)
    return total


def max_sim_float(qt: dict[str, list[float]], embedding_float: dict[str, list[float]]) -> float:
    total = 0.0
    for q in qt.values():
        total += max(sum(x * y for x, y in zip(q, d, strict=True)) for d in embedding_float.values())
    return total


# The similarity-map profiles' functions (summary feature ``quantized``, as in Vespa's ColPali sample app), verbatim.
SIMILARITIES_FLOAT = "sum(query(qt) * cell_cast(attribute(embedding_float), float), v)"
SIMILARITIES_UNPACKED = "sum(query(qt) * unpack_bits(attribute(embedding)), v)"
NORMALIZED = (
    "(similarities - reduce(similarities, min)) / reduce(similarities - reduce(similarities, min), max) * 2 - 1"
)
QUANTIZED = "cell_cast(normalized * 127.999, int8)"
#: Similarity-map profile -> whether its similarities are over the float vectors (else the unpacked bits).
SIMILARITY_MAP_PROFILES = {"similarity_map": True, "similarity_map_unpacked": False}


def quantized_similarities(qt: dict[str, list[float]], patches: dict[str, list[float]]) -> list[dict]:
    """``quantized`` cell by cell: every query token x patch dot product, shifted by their min, divided by the
    shifted max, mapped to -1..1, times 127.999, then ``cell_cast`` to int8, which (C++ ``Int8Float``) narrows the
    value to float and truncates toward zero. Cells in Vespa's tensor JSON form."""
    similarities = {
        (t, p): sum(x * y for x, y in zip(q, d, strict=True)) for t, q in qt.items() for p, d in patches.items()
    }
    low = min(similarities.values())
    high = max(value - low for value in similarities.values())
    cells = []
    for (t, p), value in similarities.items():
        scaled = ((value - low) / high * 2 - 1) * 127.999
        cells.append(
            {
                "address": {"patch": p, "querytoken": t},
                "value": float(int(struct.unpack("f", struct.pack("f", scaled))[0])),
            }
        )
    return cells


_NN = re.compile(r"\{targetHits:(\d+)[^}]*\}nearestNeighbor\(embedding,(rq\d+)\)")
_PAGE_IDS = re.compile(r"page_id in \(([^)]*)\)")
_DENSE_NN = re.compile(r"\{targetHits:(\d+)[^}]*\}nearestNeighbor\((muvera_embedding|page_embedding),(q[mp])\)")
_EXCLUDE = re.compile(r'!\(page_id contains "([^"]*)"\)')


def search_handler(documents: dict[str, dict], rerank_count_default: int = 100):
    """A ``/search/`` implementation over ``documents`` (full id -> fields) for the fake server.

    Retrieval: for each ``nearestNeighbor(embedding, rqN)`` the ``targetHits`` documents whose closest
    patch has the smallest hamming distance to ``query(rqN)`` (exact, where Vespa's HNSW is
    approximate), every document for ``where true``, or the pages of ``page_id in ("...", ...)``; for
    ``nearestNeighbor(muvera_embedding, qm)`` / ``nearestNeighbor(page_embedding, qp)`` the ``targetHits`` documents
    with the largest dot product (the order of both dotproduct and prenormalized-angular distances) among those
    ``!(page_id contains "...")`` does not exclude. The one-vector profiles rank by that dot product, then (``muvera``,
    ``page_vector``) re-rank with ``max_sim_float``. Ranking: the
    profile's phases above (``two_phase`` and ``hybrid`` re-rank with ``max_sim_float``, ``two_phase_unpacked`` with
    ``max_sim_unpacked``; ``hybrid``'s BM25 is not modelled). The similarity-map profiles rank by ``max_sim_binary``
    (inherited) and return ``summaryfeatures.quantized`` (:func:`quantized_similarities`).
    """

    def handle(body: dict) -> dict:
        profile = body["ranking.profile"]
        qt = {k: [float(x) for x in v] for k, v in body.get("input.query(qt)", {}).items()}
        qtb = {k: [int(x) for x in v] for k, v in body.get("input.query(qtb)", {}).items()}
        docs = {doc_id: fields for doc_id, fields in documents.items()}
        binary = {doc_id: mapped_int8_tensor(f["embedding"]) for doc_id, f in docs.items()}
        dense = _DENSE_NN.search(body["yql"])
        if dense:
            target_hits, field, name = dense.groups()
            excluded = set(_EXCLUDE.findall(body["yql"]))
            vector = [float(x) for x in body[f"input.query({name})"]]
            similarity = {
                d: dot(vector, dense_bfloat16_tensor(f[field]))
                for d, f in docs.items()
                if field in f and f["page_id"] not in excluded
            }
            matched = set(sorted(similarity, key=lambda d: (-similarity[d], d))[: int(target_hits)])
        elif "where true" in body["yql"]:
            matched = set(docs)
        elif _PAGE_IDS.search(body["yql"]):
            wanted = set(re.findall(r'"([^"]*)"', _PAGE_IDS.search(body["yql"]).group(1)))
            matched = {d for d, fields in docs.items() if fields["page_id"] in wanted}
        else:
            matched = set()
            for target_hits, name in _NN.findall(body["yql"]):
                token = [int(x) for x in body[f"input.query({name})"]]
                distance = {
                    doc_id: min(sum(hamming(x, y) for x, y in zip(token, d, strict=True)) for d in cells.values())
                    for doc_id, cells in binary.items()
                }
                matched.update(sorted(distance, key=lambda d: (distance[d], d))[: int(target_hits)])
        features = {}
        if profile in SINGLE_VECTOR_PROFILES:
            field, name, reranked = SINGLE_VECTOR_PROFILES[profile]
            vector = [float(x) for x in body[f"input.query({name})"]]
            scores = {d: dot(vector, dense_bfloat16_tensor(docs[d][field])) for d in matched}
            rerank = int(body.get("ranking.rerankCount", rerank_count_default)) if reranked else 0
            chosen = sorted(scores, key=lambda d: (-scores[d], d))[:rerank]
            for d in chosen:
                scores[d] = max_sim_float(qt, mapped_bfloat16_tensor(docs[d]["embedding_float"]))
            rest = set(scores) - set(chosen)
            if chosen and rest:
                # As the content nodes do: hits left with their first-phase score are shifted (one constant, their
                # order kept) to rank below every re-ranked hit.
                shift = min(min(scores[d] for d in chosen) - max(scores[d] for d in rest) - 1, 0)
                scores.update({d: scores[d] + shift for d in rest})
        elif profile in SIMILARITY_MAP_PROFILES:
            scores = {d: max_sim_binary(qtb, binary[d]) for d in matched}  # the first phase they inherit
            for d in matched:
                if SIMILARITY_MAP_PROFILES[profile]:
                    patches = mapped_bfloat16_tensor(docs[d]["embedding_float"])
                else:
                    patches = {label: [float(b) for b in unpack_bits(cells)] for label, cells in binary[d].items()}
                cells = quantized_similarities(qt, patches)
                features[d] = {"quantized": {"type": "tensor<int8>(patch{},querytoken{})", "cells": cells}}
        elif profile == "float":
            scores = {d: max_sim_float(qt, mapped_bfloat16_tensor(docs[d]["embedding_float"])) for d in matched}
        else:
            scores = {d: max_sim_binary(qtb, binary[d]) for d in matched}
            if profile in ("two_phase", "hybrid", "two_phase_unpacked"):
                rerank = int(body.get("ranking.rerankCount", rerank_count_default))
                for d in sorted(scores, key=lambda d: (-scores[d], d))[:rerank]:
                    if profile == "two_phase_unpacked":
                        scores[d] = max_sim_unpacked(qt, binary[d])
                    else:
                        scores[d] = max_sim_float(qt, mapped_bfloat16_tensor(docs[d]["embedding_float"]))
        order = sorted(scores, key=lambda d: (-scores[d], d))[: int(body.get("hits", 10))]
        children = [
            {"id": d, "relevance": scores[d], "fields": {k: v for k, v in docs[d].items() if "embedding" not in k}}
            for d in order
        ]
        for child in children:
            if child["id"] in features:
                child["fields"]["summaryfeatures"] = features[child["id"]]
        return {"root": {"id": "toplevel", "fields": {"totalCount": len(matched)}, "children": children}}

    return handle
