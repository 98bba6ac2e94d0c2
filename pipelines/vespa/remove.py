"""Delete a document's pages from Vespa by selection, server-side.

``DELETE /document/v1/<namespace>/<doctype>/docid?selection=...&cluster=...`` makes the content
cluster visit and remove every matching document; the answer carries a ``continuation`` until the
whole corpus has been visited, so :func:`delete_where` loops until there is none. This is the
operation for ``delete a document`` requests (by content id or by source URI); the routine removal of
stale pages during a feed goes by page id instead (see :mod:`pipelines.vespa.replay`), which needs no
visit.
"""

from __future__ import annotations

import asyncio
import logging

from vespa.retries import NO_RETRY

from pipelines.redaction import redact_text
from pipelines.vespa.client import VespaEndpoint
from pipelines.vespa.feed import FeedSettings, backoff_seconds, is_transient, response_message

logger = logging.getLogger(__name__)

SELECTABLE_FIELDS = ("doc_id", "source_uri")


class DeleteError(RuntimeError):
    """Vespa refused a selection delete for a reason retrying cannot fix."""


def selection(schema: str, field: str, value: str) -> str:
    """Document selection ``<schema>.<field>=="<value>"`` with the string literal escaped."""
    if field not in SELECTABLE_FIELDS:
        msg = f"can only delete by {SELECTABLE_FIELDS}, got {field!r}"
        raise ValueError(msg)
    literal = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{schema}.{field}=="{literal}"'


async def _delete_where(endpoint: VespaEndpoint, expression: str, settings: FeedSettings) -> int:
    app = endpoint.connect()
    url = f"{app.end_point}/document/v1/{endpoint.namespace}/{endpoint.schema}/docid"
    # Answer (with a continuation) well before the client's timeout, so long visits never look like hangs.
    time_chunk = max(1, int(settings.request_timeout_s / 3))
    params = {"selection": expression, "cluster": endpoint.content_cluster, "timeChunk": f"{time_chunk}s"}
    removed = 0
    async with app.asyncio(connections=1, timeout=settings.request_timeout_s, docv1_retry_policy=NO_RETRY) as session:
        attempt = 0
        while True:
            try:
                response = await session.httpr_client.delete(url, params=params)
                status, body = response.status_code, response.json() if response.content else {}
            except Exception as exc:
                status, body = None, {"message": f"{type(exc).__name__}: {exc}"}
            if status == 200:
                attempt = 0
                removed += int(body.get("documentCount", 0))
                if not body.get("continuation"):
                    return removed
                params["continuation"] = body["continuation"]
                continue
            attempt += 1
            message = redact_text(response_message(body), endpoint.secrets())
            if is_transient(status) and attempt <= settings.max_retries:
                await asyncio.sleep(backoff_seconds(attempt - 1, settings))
                continue
            msg = f"selection delete {expression!r} failed with status {status}: {message}"
            raise DeleteError(msg)


def delete_where(endpoint: VespaEndpoint, field: str, value: str, settings: FeedSettings) -> int:
    """Remove every document whose ``field`` equals ``value``; returns how many Vespa removed.

    Retries transient answers like the feed does; raises :class:`DeleteError` otherwise.
    """
    expression = selection(endpoint.schema, field, value)
    removed = asyncio.run(_delete_where(endpoint, expression, settings))
    logger.info("removed %d documents where %s", removed, expression)
    return removed
