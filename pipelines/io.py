"""Reading and listing through fsspec: local paths, ``file://`` and any fsspec URL (``s3://`` …)."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import fsspec


def filesystem_for(location: str, storage_options: Mapping[str, Any] | None = None):
    """Return ``(fs, path)`` for a location, with the protocol stripped from ``path``."""
    fs, path = fsspec.core.url_to_fs(location, **dict(storage_options or {}))
    return fs, path


def list_inputs(
    location: str,
    suffixes: tuple[str, ...] = (".pdf",),
    glob: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[tuple[str, int]], list[str]]:
    """List the input files under ``location``: ``([(uri, size_bytes)], [skipped_uri])``, both sorted.

    ``location`` may be a single file, a directory/prefix (searched recursively) or, with ``glob``,
    a directory plus a glob pattern relative to it. Suffixes match case-insensitively; files that do
    not match are returned as skipped so jobs can account for every file under the location. A single
    file named explicitly is taken whatever its suffix. URIs keep their protocol (``file://…``,
    ``s3://…``) so workers can reopen them with :func:`read_bytes`.

    Raises ``FileNotFoundError`` with the location when it does not exist, so a typo fails fast.
    """
    fs, path = filesystem_for(location, storage_options)
    if glob:
        pattern = posixpath.join(path.rstrip("/"), glob)
        found = {p: fs.info(p) for p in fs.glob(pattern)}
        infos = {p: info for p, info in found.items() if info.get("type") == "file"}
    elif not fs.exists(path):
        msg = f"input location does not exist: {location!r} (set source.location to a PDF file or directory)"
        raise FileNotFoundError(msg)
    elif fs.isfile(path):
        info = fs.info(path)
        return [(fs.unstrip_protocol(path), int(info.get("size") or 0))], []
    else:
        infos = fs.find(path, detail=True)
    return _split_by_suffix(fs, infos, suffixes)


def _split_by_suffix(fs, infos: Mapping[str, dict], suffixes: tuple[str, ...]):
    wanted = tuple(s.lower() for s in suffixes)
    files, skipped = [], []
    for p, info in infos.items():
        if info.get("type", "file") != "file":
            continue
        if p.lower().endswith(wanted):
            files.append((fs.unstrip_protocol(p), int(info.get("size") or 0)))
        else:
            skipped.append(fs.unstrip_protocol(p))
    return sorted(files), sorted(skipped)


class FileTooLarge(ValueError):
    """The object is larger than the configured limit; it was not read."""


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None, max_bytes: int | None = None) -> bytes:
    """Read a whole object. With ``max_bytes``, raise :class:`FileTooLarge` instead of reading a larger one."""
    fs, path = filesystem_for(uri, storage_options)
    if max_bytes is not None:
        size = fs.size(path)
        if size is not None and size > max_bytes:
            msg = f"file is {size} bytes, over the limit of {max_bytes} (rasterize.max_file_bytes)"
            raise FileTooLarge(msg)
    with fs.open(path, "rb") as handle:
        return handle.read()


def file_stem(uri: str) -> str:
    """The file name of a path or URL without its suffix (``s3://b/x/report.pdf`` -> ``report``)."""
    return posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]
