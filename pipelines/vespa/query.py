"""Search the Vespa application with query token vectors, ranked server-side.

Retrieval is one ``nearestNeighbor`` operator per query token (Vespa's ``nearestNeighbor`` takes a
tensor with exactly one indexed dimension), OR-ed together, over the binary HNSW index; the rank
profile then scores the retrieved pages with every query token:

* ``query(qt)``   ``tensor<float>(querytoken{}, v[dim])`` the float query tokens;
* ``query(qtb)``  ``tensor<int8>(querytoken{}, v[dim / 8])`` their packed sign bits;
* ``query(rqN)``  ``tensor<int8>(v[dim / 8])`` token N's bits, the target of the N-th ``nearestNeighbor``.

``dim`` is the model's vector width (the deployed schema's, :class:`pipelines.vespa.app.TensorTypes`); the
bodies take it from the query vectors themselves.

The one-vector-per-page profiles retrieve with one ``nearestNeighbor`` over a dense page field instead
(``page_target_hits`` pages per content node), then re-rank with ``query(qt)``:

* ``muvera``       ``query(qm)`` ``tensor<float>(x[muvera dim])``, the query's MUVERA encoding
  (:mod:`pipelines.muvera`, with the index's ``pooling.muvera`` settings), against ``muvera_embedding``;
* ``page_vector``  ``query(qp)`` ``tensor<float>(x[dim])``, the query's normalised mean vector, against
  ``page_embedding``; :func:`similar_pages` sends a page's own ``page_embedding`` there ("pages like this page").

``hybrid`` adds ``userQuery()`` (the query's words, ``model.type=weakAnd``) to the retrieval.

Query tensors go as JSON lists (hex is not accepted for every query tensor type on older Vespa).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.muvera import MuveraSettings, query_vector
from pipelines.redaction import redact_text
from pipelines.search import HIT_FIELDS
from pipelines.stages.compress import binarize
from pipelines.vespa.app import (
    BINARY_FIELD,
    MUVERA_FIELD,
    MUVERA_INPUT,
    PAGE_INPUT,
    PAGE_VECTOR_FIELD,
    SIMILAR_PAGES_PROFILE,
    token_input,
)
from pipelines.vespa.client import VespaEndpoint

PROFILES = ("two_phase", "two_phase_unpacked", "hybrid", "binary", "float", "muvera", "page_vector")
#: The one-vector-per-page profiles: the field each retrieves with and its query input.
SINGLE_VECTOR_PROFILES = {"muvera": (MUVERA_FIELD, MUVERA_INPUT), "page_vector": (PAGE_VECTOR_FIELD, PAGE_INPUT)}
RETRIEVALS = ("nearest_neighbor", "all")
#: The page fields a query returns: those of a search hit, from either backend.
SUMMARY_FIELDS = HIT_FIELDS


class VespaQueryError(RuntimeError):
    """Vespa answered a query with an error (bad profile, missing input, timeout...)."""


@dataclass
class VespaQuerySettings:
    """Hydra group ``vespa.query``."""

    # Candidates per query token and content node from the HNSW index: the speed/recall knob.
    target_hits: int = 20
    explore_additional_hits: int = 300
    # nearest_neighbor: HNSW retrieval (production). all: rank every page (exact, for evaluation).
    retrieval: str = "nearest_neighbor"
    # Query tokens that get a nearestNeighbor operator (must not exceed the app's max_query_tokens).
    max_query_tokens: int = 64
    # muvera / page_vector: pages per content node from their single nearestNeighbor (the page field's HNSW).
    page_target_hits: int = 200
    timeout: str = "10s"

    def __post_init__(self) -> None:
        if self.retrieval not in RETRIEVALS:
            msg = f"vespa.query.retrieval must be one of {RETRIEVALS}, got {self.retrieval!r}"
            raise ValueError(msg)
        if self.target_hits < 1 or self.max_query_tokens < 1 or self.page_target_hits < 1:
            msg = "vespa.query.target_hits, max_query_tokens and page_target_hits must be >= 1"
            raise ValueError(msg)


def build_query_body(
    vectors: np.ndarray,
    profile: str,
    top_k: int,
    settings: VespaQuerySettings,
    schema: str,
    rerank_count: int | None = None,
    text: str | None = None,
    muvera: MuveraSettings | None = None,
) -> dict[str, Any]:
    """The ``/search/`` JSON body for one query's token vectors ``(q, dim)``.

    ``muvera`` are the index's MUVERA settings (the ``muvera`` profile encodes the query with them; default:
    :class:`~pipelines.muvera.MuveraSettings`).
    """
    if profile not in PROFILES:
        msg = f"profile must be one of {PROFILES}, got {profile!r}"
        raise ValueError(msg)
    vectors = np.asarray(vectors, dtype=np.float32)
    bits = binarize(vectors).view(np.int8)
    fields = ", ".join(SUMMARY_FIELDS)
    body: dict[str, Any] = {
        "hits": top_k,
        "ranking.profile": profile,
        "timeout": settings.timeout,
        "input.query(qt)": {str(i): row.tolist() for i, row in enumerate(vectors)},
    }
    if profile in SINGLE_VECTOR_PROFILES:
        field, name = SINGLE_VECTOR_PROFILES[profile]
        body[f"input.query({name})"] = query_vector(profile, vectors, muvera).tolist()
        where = "true" if settings.retrieval == "all" else _nearest(field, name, settings.page_target_hits, settings)
        if rerank_count is not None:
            body["ranking.rerankCount"] = rerank_count
        body["yql"] = f"select {fields} from {schema} where {where}"
        return body
    body["input.query(qtb)"] = {str(i): row.tolist() for i, row in enumerate(bits)}
    if settings.retrieval == "all":
        where = "true"
    else:
        n_tokens = min(len(bits), settings.max_query_tokens)
        operators = [_nearest(BINARY_FIELD, token_input(i), settings.target_hits, settings) for i in range(n_tokens)]
        for i in range(n_tokens):
            body[f"input.query({token_input(i)})"] = bits[i].tolist()
        if profile == "hybrid" and text:
            operators.append("userQuery()")
        where = " OR ".join(operators)
    if profile == "hybrid" and text:
        # weakAnd: pages with any of the words, its best matches kept (the local hybrid's TEXT_TARGET_HITS).
        body["query"] = text
        body["model.type"] = "weakAnd"
    if rerank_count is not None:
        body["ranking.rerankCount"] = rerank_count
    body["yql"] = f"select {fields} from {schema} where {where}"
    return body


def _nearest(field: str, query_input: str, target_hits: int, settings: VespaQuerySettings) -> str:
    """One ``nearestNeighbor`` operator with its HNSW annotations."""
    annotations = f"targetHits:{target_hits},hnsw.exploreAdditionalHits:{settings.explore_additional_hits}"
    return f"({{{annotations}}}nearestNeighbor({field},{query_input}))"


def build_similar_pages_body(
    page_vector: np.ndarray,
    top_k: int,
    settings: VespaQuerySettings,
    schema: str,
    exclude_page_id: str | None = None,
) -> dict[str, Any]:
    """The ``/search/`` body for "pages like this page": the ``top_k`` pages whose ``page_embedding`` is nearest
    (cosine) to ``page_vector`` (a page's own ``page_embedding``), that page itself left out."""
    vector = np.asarray(page_vector, dtype=np.float32).reshape(-1)
    where = _nearest(PAGE_VECTOR_FIELD, PAGE_INPUT, max(settings.page_target_hits, top_k + 1), settings)
    if exclude_page_id is not None:
        where += f" and !(page_id contains {json.dumps(str(exclude_page_id))})"
    return {
        "hits": top_k,
        "ranking.profile": SIMILAR_PAGES_PROFILE,
        "timeout": settings.timeout,
        f"input.query({PAGE_INPUT})": vector.tolist(),
        "yql": f"select {', '.join(SUMMARY_FIELDS)} from {schema} where {where}",
    }


def parse_hits(response_json: dict[str, Any]) -> list[dict[str, Any]]:
    """Hits of a ``/search/`` answer as dicts (summary fields plus ``score``), best first.

    Raises :class:`VespaQueryError` when the answer carries errors.
    """
    root = response_json.get("root", {})
    if root.get("errors"):
        messages = "; ".join(f"{e.get('summary', '')}: {e.get('message', '')}" for e in root["errors"])
        raise VespaQueryError(messages)
    hits = []
    for child in root.get("children", []) or []:
        fields = child.get("fields", {})
        if "page_id" not in fields:
            continue
        hits.append({**{k: fields.get(k) for k in SUMMARY_FIELDS}, "score": float(child.get("relevance", 0.0))})
    return hits


async def _search_all(endpoint: VespaEndpoint, bodies: list[dict[str, Any]], timeout_s: float) -> list[dict]:
    app = endpoint.connect()
    try:
        async with app.asyncio(connections=1, timeout=timeout_s) as session:
            responses = [await session.query(body=body) for body in bodies]
    except Exception as exc:  # no answer: the HTTP client's error, or tenacity's RetryError after pyvespa's retries
        last_attempt = getattr(exc, "last_attempt", None)
        cause = last_attempt.exception() if last_attempt is not None else exc
        reason = redact_text(f"{type(cause).__name__}: {cause}", endpoint.secrets())
        msg = f"no answer from Vespa at vespa.endpoint.url={endpoint.safe_url!r} ({reason})"
        raise VespaQueryError(msg) from exc
    out = []
    for response in responses:
        payload = response.json if isinstance(response.json, dict) else {}
        if response.status_code != 200 and not payload.get("root", {}).get("errors"):
            message = redact_text(str(payload)[:500], endpoint.secrets())
            msg = f"Vespa query failed with HTTP {response.status_code}: {message}"
            raise VespaQueryError(msg)
        out.append(payload)
    return out


def search(
    endpoint: VespaEndpoint,
    queries: list[tuple[np.ndarray, str | None]],
    profile: str,
    top_k: int,
    settings: VespaQuerySettings,
    rerank_count: int | None = None,
    timeout_s: float = 30.0,
    muvera: MuveraSettings | None = None,
) -> list[list[dict[str, Any]]]:
    """Hits for each ``(vectors, text)`` query, in order. Raises :class:`VespaQueryError`."""
    bodies = [
        build_query_body(vectors, profile, top_k, settings, endpoint.schema, rerank_count, text, muvera)
        for vectors, text in queries
    ]
    return [parse_hits(payload) for payload in asyncio.run(_search_all(endpoint, bodies, timeout_s))]


def similar_pages(
    endpoint: VespaEndpoint,
    page_vector: np.ndarray,
    top_k: int,
    settings: VespaQuerySettings,
    exclude_page_id: str | None = None,
    timeout_s: float = 30.0,
) -> list[dict[str, Any]]:
    """Pages like the page whose ``page_embedding`` is ``page_vector`` (:func:`build_similar_pages_body`)."""
    body = build_similar_pages_body(page_vector, top_k, settings, endpoint.schema, exclude_page_id)
    return parse_hits(asyncio.run(_search_all(endpoint, [body], timeout_s))[0])
