"""Last-resort repair of a document neither renderer opens: a trailer ``/Root`` that does not point at the catalog.

Some writers leave the trailer's ``/Root`` pointing at another object (a page, an info dictionary) while an
intact ``/Type /Catalog`` object is in the file; poppler and pdfium then find no page tree. Pointing the last
``/Root`` at that catalog (same offsets: only the trailer or xref-stream dictionary changes) lets them read it.
"""

from __future__ import annotations

import re

_OBJ_RE = re.compile(rb"(?<![\d])(\d{1,10})\s+(\d{1,5})\s+obj\s*<<")
_CATALOG_RE = re.compile(rb"/Type\s*/Catalog\b")
_ROOT_RE = re.compile(rb"/Root\s+(\d{1,10})\s+(\d{1,5})\s+R")
#: How far into an object's dictionary to look for ``/Type /Catalog``.
_DICT_WINDOW = 4096


def catalog_objects(data: bytes) -> list[tuple[int, int]]:
    """``(number, generation)`` of every object whose dictionary says ``/Type /Catalog``, in file order."""
    out = []
    for match in _OBJ_RE.finditer(data):
        head = data[match.end() : match.end() + _DICT_WINDOW]
        end = head.find(b"endobj")
        if _CATALOG_RE.search(head if end < 0 else head[:end]):
            out.append((int(match[1]), int(match[2])))
    return out


def repair_root(data: bytes) -> bytes | None:
    """``data`` with its last ``/Root`` pointed at the (last) catalog object; None when there is nothing to repair."""
    roots = list(_ROOT_RE.finditer(data))
    catalogs = catalog_objects(data)
    if not roots or not catalogs:
        return None
    root = roots[-1]
    number, generation = catalogs[-1]
    if (int(root[1]), int(root[2])) in catalogs:
        return None
    return data[: root.start()] + b"/Root %d %d R" % (number, generation) + data[root.end() :]
