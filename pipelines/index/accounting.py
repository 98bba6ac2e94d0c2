"""Run accounting: what happened to every listed file in a committed run, and totals of the index.

Every listed file is unchanged, indexed, a duplicate, failed (by reason) or unaccounted (which should
never happen: the job exits 1 when it does).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow.compute as pc

from pipelines import io
from pipelines.index import ledger
from pipelines.index.location import IndexLocation
from pipelines.index.storage import ERRORS_DIR


def summarize(location: IndexLocation, files: list[io.SourceFile], plan: ledger.Plan) -> dict[str, Any]:
    """Accounting of a committed run: every listed file is unchanged, indexed, a duplicate, failed (by
    reason) or unaccounted (which should never happen); plus totals of the whole index."""
    state = location.ledger.state()
    processed = {f.uri for f in plan.process}
    duplicates = {f.uri for f, _ in plan.aliases}
    unchanged = set(plan.unchanged)
    this_run: Counter = Counter()
    failed_by_reason: Counter = Counter()
    file_errors = []
    unaccounted = []
    for file in files:
        row = state.get(file.uri)
        if (
            row is None
            or row["status"] not in ledger.LIVE
            or (row["run_id"] != plan.run_id and file.uri not in unchanged)
        ):
            unaccounted.append(file.uri)
            continue
        if file.uri in unchanged:
            this_run["unchanged"] += 1
        elif file.uri in duplicates:
            this_run["duplicate"] += 1
        elif file.uri in processed:
            this_run[row["status"]] += 1
        if row["status"] == ledger.FAILED:
            failed_by_reason[row["error_type"]] += 1
        if row["status"] == ledger.FAILED or row["page_errors"]:
            file_errors.append(
                {
                    "source_uri": file.uri,
                    "status": row["status"],
                    "type": row["error_type"],
                    "page_errors": row["page_errors"],
                    "message": row["error_message"] or "",
                }
            )
    statuses = Counter(state[f.uri]["status"] for f in files if f.uri in state)
    pages = location.read_pages(["doc_id", "n_vectors", "n_vectors_raw"])
    errors = location.read_table(ERRORS_DIR, ["error_type"])
    return {
        "files_listed": len(files),
        "files_this_run": {
            "unchanged": this_run["unchanged"],
            "indexed": this_run[ledger.INDEXED],
            "duplicate": this_run["duplicate"],
            "failed": this_run[ledger.FAILED],
            "unaccounted": len(unaccounted),
        },
        "files_indexed": statuses[ledger.INDEXED],
        "files_failed_entirely": statuses[ledger.FAILED],
        "files_with_errors": len(file_errors),
        "files_failed_by_reason": dict(sorted(failed_by_reason.items())),
        "files_unaccounted": sorted(unaccounted),
        "files_removed": len(plan.removes),
        "files_missing_from_source": len(plan.missing),
        "documents_in_index": len(set(pages.column("doc_id").to_pylist())),
        "pages_indexed": pages.num_rows,
        "vectors_stored": int(pc.sum(pages.column("n_vectors")).as_py() or 0),
        "vectors_before_pooling": int(pc.sum(pages.column("n_vectors_raw")).as_py() or 0),
        "error_rows": errors.num_rows,
        "errors_by_type": dict(sorted(Counter(errors.column("error_type").to_pylist()).items())),
        "errors": file_errors[:1000],
    }
