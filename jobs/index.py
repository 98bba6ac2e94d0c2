"""Index PDFs into a visual retrieval index.

    python -m jobs.index source.location=/data/pdfs output.location=/data/index [model=tiny] [key=value ...]

Reruns are incremental: only new and changed files are processed, and a run that was killed is
resumed (its finished documents are kept). ``source.sync=true`` also removes files gone from the
source; ``output.mode=overwrite`` rebuilds from scratch.

Exit status: 0 when every input file is accounted for (indexed, unchanged, duplicate or recorded as
an error); 1 when some file is unaccounted for (or, feeding Vespa inline, some pages failed to feed);
2 on bad configuration or a missing/denied location; 3 when Vespa blocked the feed (507):
``python -m jobs.feed index=<output.location>`` resumes it; 4 when more than ``max_error_rate`` of the
listed files failed; 5 when another run writes the same index (its lease is held; see ``lease`` in
conf/index.yaml), or took it over while this run worked; 6 when, feeding Vespa inline, Vespa answered
nothing for more than ``vespa.feed.max_outage_s``: the pages are committed to the index, and a rerun
or ``python -m jobs.feed index=<output.location>`` feeds those not yet fed; 7 when the source could not
be listed completely (a directory or prefix that fails to list; nothing was planned) or ``source.sync``
would remove more than ``source.sync_max_removed`` of the index (``source.sync_force=true`` removes them
anyway).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from jobs._common import error, setup_logging
from jobs.feed import EXIT_BLOCKED, EXIT_UNAVAILABLE, blocked_help, unavailable_help
from pipelines.driver import run_index
from pipelines.errors import ConfigError
from pipelines.index.lease import IndexLocked, LeaseLost
from pipelines.index.ledger import SyncRefused
from pipelines.io import ListingIncomplete

logger = logging.getLogger("jobs.index")


EXIT_TOO_MANY_ERRORS = 4
EXIT_LOCKED = 5
EXIT_SOURCE_INCOMPLETE = 7


def print_summary(report: dict) -> None:
    test_note = "  (TEST MODEL: random weights, scores are meaningless)" if report["is_test_model"] else ""
    run = report["files_this_run"]
    lines = [
        f"index: {report['index']}",
        f"model: {report['model']}{test_note}  config_hash: {report['config_hash']}  backend: {report['backend']}",
        f"files: {report['files_listed']} listed: {run['indexed']} indexed, {run['unchanged']} unchanged (skipped), "
        f"{run['duplicate']} duplicates of indexed files, {run['failed']} failed, {run['unaccounted']} unaccounted; "
        f"{len(report['files_skipped_by_suffix'])} other files skipped (not {'/'.join(report['suffixes'])})",
        f"index now: {report['files_indexed']} files indexed, {report['files_failed_entirely']} failed"
        + (f" {report['files_failed_by_reason']}" if report["files_failed_by_reason"] else "")
        + f", {report['documents_in_index']} documents, "
        f"{report['pages_indexed']} pages; {report['files_removed']} files removed (sync), "
        f"{report['files_missing_from_source']} recorded files missing from the source"
        + (" (source.sync=true removes them)" if report["files_missing_from_source"] else ""),
        f"this run: {report['pages_embedded']} pages embedded in {report['wall_seconds']:.1f}s "
        f"({report['pages_per_second']} pages/s); vectors in index: {report['vectors_before_pooling']} -> "
        f"{report['vectors_stored']} after pooling",
    ]
    if report["recovered_runs"]:
        kept = sum(r["recorded"] for r in report["recovered_runs"])
        lines.append(
            f"resumed {len(report['recovered_runs'])} interrupted run(s): {kept} files they finished were kept"
        )
    if report["errors"]:
        lines.append(
            f"files with errors ({report['files_with_errors']}; error rows by type {report['errors_by_type']}):"
        )
        for error in report["errors"][:20]:
            pages = f" ({error['page_errors']} pages)" if error["status"] == "indexed" else ""
            lines.append(f"  {error['source_uri']}: [{error['type']}{pages}] {error['message'][:160]}")
        if len(report["errors"]) > 20:
            lines.append(f"  ... {len(report['errors']) - 20} more in {report['index']}/errors and ledger")
    vespa = report.get("vespa")
    if vespa:
        inline = vespa.get("inline", {})
        lines.append(
            f"vespa {vespa['target']['url']}: {inline.get('vespa_acked', 0)} pages fed inline, "
            f"{vespa['puts_acked']} more at the end, {vespa['removes_acked']} stale pages removed, "
            f"{vespa['puts_failed'] + vespa['removes_failed']} failed, "
            f"{vespa['puts_remaining'] + vespa['removes_remaining']} remaining"
        )
    print("\n".join(lines))


def run(cfg: DictConfig) -> int:
    """Run the index job in this process: print the summary, return the exit status (see the module docstring)."""
    try:
        report = run_index(cfg)
    except (ConfigError, FileNotFoundError, PermissionError) as exc:
        return error(str(exc))
    except (IndexLocked, LeaseLost) as exc:
        return error(str(exc), code=EXIT_LOCKED)
    except (ListingIncomplete, SyncRefused) as exc:
        return error(str(exc), code=EXIT_SOURCE_INCOMPLETE)
    print_summary(report)
    return exit_status(report)


def exit_status(report: dict) -> int:
    """The job's exit status for a run report, printing why it is not 0."""
    if report["files_unaccounted"]:
        return error(f"{len(report['files_unaccounted'])} input files are unaccounted for", code=1)
    vespa = report.get("vespa")
    if vespa and vespa["unavailable"]:
        return error(unavailable_help(vespa, index=report["index"]), code=EXIT_UNAVAILABLE)
    if vespa and vespa["blocked"]:
        return error(blocked_help(vespa), code=EXIT_BLOCKED)
    if vespa and not vespa["complete"]:
        return error(
            f"{vespa['failures_total']} Vespa operations failed; run jobs.feed on this index to retry them", code=1
        )
    if report["error_rate_exceeded"]:
        return error(
            f"{report['files_failed_entirely']} of {report['files_listed']} files failed "
            f"({report['failed_rate']:.1%}), "
            f"over max_error_rate={report['max_error_rate']}; see the errors above",
            code=EXIT_TOO_MANY_ERRORS,
        )
    return 0


@hydra.main(config_path="../conf", config_name="index", version_base="1.3")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.log_level)
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
