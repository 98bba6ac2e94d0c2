"""Feed an index to Vespa (replay/backfill), or delete a document from Vespa.

    python -m jobs.feed index=/data/index vespa.endpoint.url=http://vespa:8080 [mode=full] [delete_missing=true]
    python -m jobs.feed index=/data/index vespa.endpoint.url=http://vespa:8080 delete.doc_id=<doc_id>

Exit status (no expected failure prints a traceback):

* 0 every operation was acknowledged;
* 1 some operations failed (listed, and retried by the next run), or a selection delete failed;
* 2 nothing was sent: bad configuration (the message names the key), no index at ``index``, an index location
  that cannot be read or written, or a Vespa endpoint that does not answer or refuses the credentials (one
  ``/ApplicationStatus`` request before any work: :func:`pipelines.vespa.config.check_reachable`);
* 3 Vespa blocked the feed (507: resource limits): rerun to resume;
* 6 Vespa answered nothing for more than ``vespa.feed.max_outage_s`` seconds once the feed had started (down or
  unreachable): rerun once it is up, the feed resumes (acknowledged pages are not sent again).

The feed takes no lease: it reads the index as searches do (each page once, whatever a writer does meanwhile)
and its only writes, the feed log's part files, are append-only.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from jobs._common import error, setup_logging
from pipelines import index
from pipelines.errors import ConfigError, require_int
from pipelines.vespa import config, remove, replay
from pipelines.vespa.client import VespaEndpoint
from pipelines.vespa.feed import FeedSettings, Outcome

logger = logging.getLogger("jobs.feed")

EXIT_FAILED = 1
EXIT_BLOCKED = 3
EXIT_UNAVAILABLE = 6


def blocked_help(report: dict) -> str:
    return (
        f"Vespa blocked the feed (HTTP 507: {report['blocked_message']}). Content nodes are at their disk or "
        "memory limit: add content nodes or free space (see infra/vespa/README.md), then rerun the same "
        f"command; it resumes with the {report['puts_remaining']} pages and {report['removes_remaining']} "
        "removals not yet acknowledged (python -m jobs.feed index=<index> resumes an inline feed too)."
    )


def unavailable_help(report: dict, index: str | None = None) -> str:
    """Why a feed gave up on a Vespa outage and what to run; ``index``: said by the index job, whose
    pages are committed."""
    waiting = f"{report['puts_remaining']} pages waiting to be fed"
    if report["removes_remaining"]:
        waiting += f" and {report['removes_remaining']} stale pages waiting to be removed"
    head = f"Vespa unavailable for more than vespa.feed.max_outage_s ({report['max_outage_s']:g} s)"
    if index is not None:
        return f"{head}; pages committed to the index, {waiting}: rerun or python -m jobs.feed index={index}"
    return f"{head}; {waiting}: rerun the same command once Vespa answers (acknowledged pages are not sent again)"


def print_report(report: dict) -> None:
    target = report["target"]
    print(f"target: {target['url']} schema={target['schema']} namespace={target['namespace']} auth={target['auth']}")
    print(
        f"pages: {report['pages_in_index']} in index, {report['pages_already_fed']} already fed, "
        f"{report['puts_acked']}/{report['puts_planned']} put now ({report['puts_per_second']} pages/s), "
        f"{report['puts_failed']} failed, {report['puts_remaining']} remaining"
    )
    print(
        f"stale pages: {report['removes_acked']}/{report['removes_planned']} removed, "
        f"{report['removes_failed']} failed; {report['retried_operations']} operations needed retries"
    )
    for failure in report["failures"][:20]:
        print(f"  failed {failure['op']} {failure['page_id']}: HTTP {failure['status']} {failure['message'][:200]}")


def delete_document(cfg: DictConfig, endpoint: VespaEndpoint, feed_settings: FeedSettings) -> int:
    """Delete one document's pages from Vespa (selection delete); returns the exit status."""
    field, value = ("doc_id", cfg.delete.doc_id) if cfg.delete.doc_id else ("source_uri", cfg.delete.source_uri)
    try:
        removed = remove.delete_where(endpoint, field, str(value), feed_settings)
    except remove.DeleteError as exc:
        return error(str(exc), code=EXIT_FAILED)
    print(f"removed {removed} pages where {field} == {value!r} from {endpoint.safe_url}")
    # Keep the feed log in step: a resumed replay must not put these pages back (mode=full does).
    location = index.IndexLocation(str(cfg.index), OmegaConf.to_container(cfg.storage_options))
    log = replay.FeedLog(location, endpoint)
    if location.fs.exists(log.root):
        gone = [
            Outcome(pid, "delete", "acked", 200, 1, f"deleted on request: {field} == {value!r}", row)
            for pid, row in log.acked_state().items()
            if row["op"] == "put" and row[field] == value
        ]
        log.append(gone, run_id="delete")
    return 0


def run(cfg: DictConfig) -> int:
    """Replay the index into Vespa (or delete a document) in this process; returns the exit status."""
    try:
        endpoint = config.endpoint(cfg)
        doc_settings = config.settings(cfg, "documents")
        feed_settings = config.settings(cfg, "feed")
        deleting = bool(cfg.delete.doc_id or cfg.delete.source_uri)
        if not deleting:
            if cfg.mode not in replay.MODES:
                msg = f"mode must be one of {replay.MODES}, got {cfg.mode!r}"
                raise ConfigError(msg)
            checkpoint_every = require_int("checkpoint_every", cfg.checkpoint_every)
            location = index.IndexLocation(str(cfg.index), OmegaConf.to_container(cfg.storage_options))
            if not location.fs.exists(location.path(index.CONFIG_FILE)):
                msg = f"no index at {cfg.index!r}; run jobs.index first or set index=<path>"
                raise ConfigError(msg)
        config.check_reachable(endpoint, feed_settings.request_timeout_s)
        if deleting:
            return delete_document(cfg, endpoint, feed_settings)
        report = replay.replay(
            location,
            endpoint,
            doc_settings,
            feed_settings,
            mode=str(cfg.mode),
            delete_missing=bool(cfg.delete_missing),
            checkpoint_every=checkpoint_every,
        )
    except (ConfigError, ValueError) as exc:
        return error(str(exc))
    except (FileNotFoundError, PermissionError) as exc:  # the index's storage (missing, denied)
        return error(f"index={cfg.index!r} cannot be used: {exc} (check index and storage_options)")
    print_report(report)
    if report["unavailable"]:
        return error(unavailable_help(report), code=EXIT_UNAVAILABLE)
    if report["blocked"]:
        return error(blocked_help(report), code=EXIT_BLOCKED)
    if not report["complete"]:
        return error(f"{report['failures_total']} operations failed; rerun to retry them", code=EXIT_FAILED)
    return 0


@hydra.main(config_path="../conf", config_name="feed", version_base="1.3")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.log_level)
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
