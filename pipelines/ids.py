"""Deterministic identifiers: ids come from content, so re-runs overwrite instead of duplicating."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

DOC_ID_HEX_CHARS = 32  # 128 bits of sha256: collision-free at any corpus size we will see


def doc_id_from_bytes(data: bytes) -> str:
    """Document id: the first 128 bits of the sha256 of the file's bytes, as hex."""
    return doc_id_from_sha256(hashlib.sha256(data).hexdigest())


def doc_id_from_sha256(hexdigest: str) -> str:
    """Document id from a file's full sha256 hex digest (e.g. hashed while streaming)."""
    return hexdigest[:DOC_ID_HEX_CHARS]


def page_id(doc_id: str, page_number: int) -> str:
    """Page id from a document id and a 1-based page number; also the Vespa document id."""
    if page_number < 1:
        msg = f"page numbers are 1-based, got {page_number}"
        raise ValueError(msg)
    return f"{doc_id}-p{page_number}"


def config_hash(settings: dict[str, Any]) -> str:
    """Short stable hash of the settings that change a page's vectors (model, render budget, pooling).

    Two indexes with different config hashes hold vectors that must not be mixed.
    """
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def affects_vectors(
    key: str | None = None, when: Callable[[Any], bool] | None = None, omit_default: bool = False
) -> dict[str, Any]:
    """Metadata for a config dataclass field whose value changes a page's vectors.

    Such fields make up the config hash (:func:`vector_settings`): ``key`` names the field there
    (default: its own name); with ``when``, the value counts only when ``when(config)`` is true (it
    is recorded as None otherwise, e.g. a JPEG quality while pages are PNG). With ``omit_default``
    the field is left out while it has its default value, so adding such a field keeps the hash of
    every existing index.
    """
    return {"affects_vectors": True, "hash_key": key, "hash_when": when, "hash_omit_default": omit_default}


def vector_settings(*configs: Any) -> dict[str, Any]:
    """The values of every field marked with :func:`affects_vectors` in the given config dataclasses."""
    out: dict[str, Any] = {}
    for config in configs:
        for spec in dataclasses.fields(config):
            if not spec.metadata.get("affects_vectors"):
                continue
            when = spec.metadata.get("hash_when")
            value = getattr(config, spec.name) if when is None or when(config) else None
            if spec.metadata.get("hash_omit_default") and value == spec.default:
                continue
            out[spec.metadata.get("hash_key") or spec.name] = value
    return out
