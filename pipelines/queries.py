"""Query files: the one reader behind ``jobs.search queries_file=``, the evaluation's ``queries.jsonl`` and the
sample corpus's queries.

A query file is UTF-8 text (a leading byte-order mark is allowed), one query per line; blank lines are skipped.
A line that starts with ``{`` is a JSON object, any other line the plain text of one query. The text of a JSON
line is its ``query`` (this project's format: the sample corpus writes ``{"query", "file_name",
"page_number"}``), else its ``text`` (BEIR: ``{"_id": "q1", "text": "..."}``, ``_id`` the query id).

Every problem raises :class:`QueryFileError` naming ``<file>:<line>``: bytes that are not UTF-8, a line that is
not the JSON object it starts as, a JSON line without a non-empty string ``query``/``text``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from pipelines.errors import ConfigError

#: The keys a JSON query line may carry its text under, in order of preference.
TEXT_KEYS = ("query", "text")


class QueryFileError(ConfigError):
    """A query file cannot be read as queries; the message names the file and line."""


@dataclass(frozen=True)
class Query:
    """One query of a file: its text, its line number and (BEIR lines) its ``_id``."""

    text: str
    lineno: int
    id: str | None = None


def read_lines(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """``(line number, line)`` of every non-blank line of ``path``, decoded as UTF-8, stripped.

    Raises :class:`QueryFileError` naming the first line that is not UTF-8, or the file when it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        msg = f"cannot read query file {os.fspath(path)!r}: {exc.strerror or exc}"
        raise QueryFileError(msg) from exc
    lines = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            msg = (
                f"{os.fspath(path)}:{lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                "save the query file as UTF-8"
            )
            raise QueryFileError(msg) from exc
        if line:
            lines.append((lineno, line))
    return lines


def read_objects(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, JSON object)`` of every non-blank line of a JSON-lines file; raises :class:`QueryFileError`
    naming the first line that is not UTF-8 or not a JSON object."""
    return [(lineno, _json_object(path, lineno, line)) for lineno, line in read_lines(path)]


def read_queries(path: str | os.PathLike[str]) -> list[Query]:
    """The queries of ``path`` in file order (see the module docstring for the line formats).

    Raises :class:`QueryFileError` naming the line of the first unusable query, or when the file holds none.
    """
    queries = []
    for lineno, line in read_lines(path):
        if not line.startswith("{"):
            queries.append(Query(line, lineno))
            continue
        record = _json_object(path, lineno, line)
        text = next((record[key] for key in TEXT_KEYS if key in record), None)
        if not isinstance(text, str) or not text.strip():
            msg = (
                f"{os.fspath(path)}:{lineno}: a JSON query line needs a non-empty string 'query' (or 'text', as in "
                f'BEIR\'s {{"_id": ..., "text": ...}}), got {line[:200]}'
            )
            raise QueryFileError(msg)
        query_id = record.get("_id")
        queries.append(Query(text, lineno, None if query_id is None else str(query_id)))
    if not queries:
        msg = f"query file {os.fspath(path)!r} holds no queries (one per line: plain text or JSON objects)"
        raise QueryFileError(msg)
    return queries


def _json_object(path: str | os.PathLike[str], lineno: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        msg = f"{os.fspath(path)}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno}): {line[:200]}"
        raise QueryFileError(msg) from exc
    if not isinstance(record, dict):
        msg = f"{os.fspath(path)}:{lineno}: expected a JSON object, got {type(record).__name__}"
        raise QueryFileError(msg)
    return record
