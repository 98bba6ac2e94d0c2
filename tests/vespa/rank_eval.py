"""An independent, literal evaluation of the schema's rank expressions, the way Vespa defines them.

Works on the JSON that goes over the wire (feed documents with hex tensors, query bodies with list
tensors), cell by cell with plain Python loops, so it shares no code with ``pipelines.search`` or
``pipelines.vespa``:

* ``hamming(a, b)``  number of differing bits of two int8 cells (Vespa ranking-expressions reference);
* ``unpack_bits(t)`` int8 ``v[16]`` -> ``v[128]`` of 0/1, most significant bit first (default ``big``);
* ``sum(t, d)`` / ``reduce(t, max, d)`` reduce dimension ``d``; ``1 / (1 + x)`` is elementwise.

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


_NN = re.compile(r"\{targetHits:(\d+)[^}]*\}nearestNeighbor\(embedding,(rq\d+)\)")


def search_handler(documents: dict[str, dict], rerank_count_default: int = 100):
    """A ``/search/`` implementation over ``documents`` (full id -> fields) for the fake server.

    Retrieval: for each ``nearestNeighbor(embedding, rqN)`` the ``targetHits`` documents whose closest
    patch has the smallest hamming distance to ``query(rqN)`` (exact, where Vespa's HNSW is
    approximate), or every document for ``where true``. Ranking: the profile's phases above
    (``two_phase`` and ``hybrid`` re-rank with ``max_sim_float``, ``two_phase_unpacked`` with
    ``max_sim_unpacked``; ``hybrid``'s BM25 is not modelled).
    """

    def handle(body: dict) -> dict:
        profile = body["ranking.profile"]
        qt = {k: [float(x) for x in v] for k, v in body["input.query(qt)"].items()}
        qtb = {k: [int(x) for x in v] for k, v in body["input.query(qtb)"].items()}
        docs = {doc_id: fields for doc_id, fields in documents.items()}
        binary = {doc_id: mapped_int8_tensor(f["embedding"]) for doc_id, f in docs.items()}
        if "where true" in body["yql"]:
            matched = set(docs)
        else:
            matched = set()
            for target_hits, name in _NN.findall(body["yql"]):
                token = [int(x) for x in body[f"input.query({name})"]]
                distance = {
                    doc_id: min(sum(hamming(x, y) for x, y in zip(token, d, strict=True)) for d in cells.values())
                    for doc_id, cells in binary.items()
                }
                matched.update(sorted(distance, key=lambda d: (distance[d], d))[: int(target_hits)])
        if profile == "float":
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
        return {"root": {"id": "toplevel", "fields": {"totalCount": len(matched)}, "children": children}}

    return handle
