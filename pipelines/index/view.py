"""The visible view of an index: which rows of the part files belong to it, and compaction.

A page row belongs to the index iff its document is referenced by a live ledger row (the latest row
of its source, status ``indexed`` or ``failed``) whose ``commit_run`` is the run tag of the part
file holding the row; repeated rows of one page (a retried Ray write) count once. Error rows of a
failed source with no document id follow its source URI instead. An index without a ``ledger/``
directory (written by tools that bypass the run protocol) is read as is.

Compaction rewrites part files so they hold only visible rows. Readers apply the same rules
meanwhile, so the index is exactly-once at every moment, not only after compaction.

Readers never fail while a writer commits and compacts: a reader fixes the ledger state once and reads
the part files it lists under it. The parts compaction replaces are retired, not deleted
(:meth:`~pipelines.index.ledger.Ledger.retire`): they stay for ``output.compaction_grace_s``, so a read
that takes less sees exactly the index of the moment it started. A slower read that finds a part gone
re-resolves: it takes the ledger state and the listing anew and reads the parts it has not read,
skipping rows it already yielded, so each page still comes once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.index.ledger import LIVE, Ledger
from pipelines.index.storage import PAGES_DIR, TABLES, PartStore, part_tag
from pipelines.testing import failpoints


@dataclass
class Visibility:
    """Which rows of the part files make up the index (see the module docstring)."""

    doc_run: dict[str, str]  # doc_id -> run tag of the parts holding its rows
    failed_source_run: dict[str, str]  # source_uri -> run tag, for failed sources with no doc id
    canonical_uri: dict[str, str]  # doc_id -> a live source URI of it (first in sort order)
    live_uris: dict[str, set[str]]  # doc_id -> every live source URI of it


def visibility(ledger: Ledger) -> Visibility | None:
    """The rules readers apply, or None when the index has no ledger (read everything). Computed once per
    ledger state (:meth:`Ledger.derived`): every read and the compaction of a run share them."""
    if not ledger.exists():
        return None
    return ledger.derived("visibility", _rules)


def _rules(state: dict[str, dict]) -> Visibility:
    doc_run: dict[str, str] = {}
    failed_source_run: dict[str, str] = {}
    live_uris: dict[str, set[str]] = {}
    for uri, row in state.items():
        if row["status"] not in LIVE:
            continue
        if row["doc_id"]:
            doc_run[row["doc_id"]] = row["commit_run"]
            live_uris.setdefault(row["doc_id"], set()).add(uri)
        else:
            failed_source_run[uri] = row["commit_run"]
    canonical = {doc: min(uris) for doc, uris in live_uris.items()}
    return Visibility(doc_run, failed_source_run, canonical, live_uris)


def visible_mask(table: pa.Table, tag: str | None, rules: Visibility, seen: set, kind: str) -> pa.Array:
    """Boolean mask of the rows of one part file that belong to the index; updates ``seen`` (dedup keys)."""
    doc_ids = table.column("doc_id").to_pylist()
    if tag is None:  # written outside the run protocol (no run tag): never part of a ledgered index
        return pa.array([False] * table.num_rows, pa.bool_())
    if kind == PAGES_DIR:
        keys = table.column("page_id").to_pylist()
        candidates = [rules.doc_run.get(d) == tag for d in doc_ids]
    else:
        uris = table.column("source_uri").to_pylist()
        numbers = table.column("page_number").to_pylist()
        keys = [(d or u, n) for d, u, n in zip(doc_ids, uris, numbers, strict=True)]
        candidates = [
            (rules.doc_run.get(d) == tag) if d else (rules.failed_source_run.get(u) == tag)
            for d, u in zip(doc_ids, uris, strict=True)
        ]
    mask = []
    for key, candidate in zip(keys, candidates, strict=True):
        keep = candidate and key not in seen
        if keep:
            seen.add(key)
        mask.append(keep)
    return pa.array(mask, pa.bool_())


def with_canonical_uris(pages: pa.Table, rules: Visibility) -> pa.Table:
    """Pages whose stored ``source_uri`` is no longer a live path of their document get a live one
    (a moved file keeps its vectors but shows where it is now)."""
    if "source_uri" not in pages.column_names or "doc_id" not in pages.column_names:
        return pages
    uris = pages.column("source_uri").to_pylist()
    docs = pages.column("doc_id").to_pylist()
    fixed = [
        u if u in rules.live_uris.get(d, ()) else rules.canonical_uri.get(d, u)
        for u, d in zip(uris, docs, strict=True)
    ]
    if fixed == uris:
        return pages
    index = pages.column_names.index("source_uri")
    return pages.set_column(index, pages.schema.field(index), pa.array(fixed, pa.string()))


#: Re-resolutions in a row that read no part before a reader gives up (the parts vanish faster than it reads).
RESOLVE_ATTEMPTS = 5


def iter_visible(store: PartStore, ledger: Ledger, name: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The ``pages`` or ``errors`` table one part file at a time, holding only the rows that belong
    to the index (committed documents, each page once), also while a writer compacts (see the module
    docstring)."""
    table_schema, keys = TABLES[name]
    rules = visibility(ledger)
    if rules is None:
        yield from store.iter_parts(name, table_schema, columns)
        return
    read_columns = None if columns is None else list(dict.fromkeys([*columns, *keys]))
    seen: set = set()
    done: set[str] = set()
    idle = 0  # re-resolutions since a part was last read
    while True:
        for path in store.part_files(name):
            if path in done:
                continue
            try:
                table = store.read_part(path, table_schema, read_columns)
            except FileNotFoundError:
                break  # deleted since listed: re-resolve below
            done.add(path)
            idle = 0
            table = table.filter(visible_mask(table, part_tag(path), rules, seen, name))
            if name == PAGES_DIR:
                table = with_canonical_uris(table, rules)
            yield table.select(columns) if columns is not None else table
        else:
            return
        idle += 1
        if idle > RESOLVE_ATTEMPTS:
            msg = f"part files of {store.location!r} keep vanishing while read ({name}): is a writer deleting them?"
            raise FileNotFoundError(msg)
        # The ledger state that deleted it, and a listing that shows what replaced it (both ask the store:
        # every ledger and part listing goes through io.forget_listings).
        rules = visibility(ledger)
        if rules is None:  # the index was cleared (overwrite): nothing more of it to read
            return


def compact(store: PartStore, ledger: Ledger, tags: set[str] | None = None, grace_s: float = 0.0) -> dict[str, int]:
    """Rewrite part files so they hold only visible rows (drop half-written documents of killed runs,
    superseded and removed documents, repeated writes), and retire the parts they replace
    (:meth:`Ledger.retire`: deleted after ``grace_s`` seconds, at once for 0). Crash-safe: the rewritten part
    keeps its run tag and is written before the old one is retired, and readers drop the repeated rows meanwhile.

    ``tags`` limits the work to part files of those runs (a document's visible rows and their
    repeats all carry one tag, so nothing outside them can be a repeat); None looks at every part.
    Parts already retired are left alone.
    """
    rules = visibility(ledger)
    counts = {"parts_rewritten": 0, "parts_deleted": 0, "rows_dropped": 0}
    if rules is None:
        return counts
    retired = ledger.retired()
    superseded: list[str] = []
    for name, (table_schema, keys) in TABLES.items():
        seen: set = set()
        for path, table in store.iter_part_files(name, table_schema, keys, tags=tags, skip=retired):
            tag = part_tag(path)
            mask = visible_mask(table, tag, rules, seen, name)
            kept = pc.sum(mask).as_py() or 0
            if kept == table.num_rows:
                continue
            counts["rows_dropped"] += table.num_rows - kept
            if kept:
                full = store.read_part(path, table_schema)
                store.write_part(name, full.filter(mask), tag=tag)
                failpoints.hit("compact_between_write_and_delete")
                counts["parts_rewritten"] += 1
            else:
                counts["parts_deleted"] += 1
            superseded.append(path)
            failpoints.hit("compact_part_done")
    ledger.retire(superseded, grace_s)
    return counts
