"""Index PDFs into a visual retrieval index.

    python -m jobs.index source.location=/data/pdfs output.location=/data/index [model=tiny] [key=value ...]

Exit status: 0 when every input file is accounted for (indexed or recorded as an error),
1 when some file is unaccounted for (or, feeding Vespa inline, some pages failed to feed),
2 on bad configuration or a missing input location, 3 when Vespa blocked the feed (507):
``python -m jobs.feed index=<output.location>`` resumes it.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from jobs._common import fail, setup_logging
from jobs.feed import EXIT_BLOCKED, blocked_help
from pipelines.pipeline import ConfigError, run_index

logger = logging.getLogger("jobs.index")


def print_summary(report: dict) -> None:
    test_note = "  (TEST MODEL: random weights, scores are meaningless)" if report["is_test_model"] else ""
    lines = [
        f"index: {report['index']}",
        f"model: {report['model']}{test_note}  config_hash: {report['config_hash']}  backend: {report['backend']}",
        f"files: {report['files_listed']} listed, {report['files_indexed']} indexed, "
        f"{report['files_failed_entirely']} failed, {len(report['files_unaccounted'])} unaccounted; "
        f"{len(report['files_skipped_by_suffix'])} other files skipped (not {'/'.join(report['suffixes'])})",
        f"pages: {report['pages_indexed']} indexed in {report['wall_seconds']:.1f}s "
        f"({report['pages_per_second']} pages/s); vectors: {report['vectors_before_pooling']} -> "
        f"{report['vectors_stored']} after pooling",
    ]
    if report["errors"]:
        lines.append(f"errors ({report['error_rows']} rows, by type {report['errors_by_type']}):")
        for error in report["errors"][:20]:
            lines.append(f"  {error['source_uri']}: [{error['stage']}/{error['type']}] {error['message'][:160]}")
        if len(report["errors"]) > 20:
            lines.append(f"  ... {len(report['errors']) - 20} more in {report['index']}/errors")
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


@hydra.main(config_path="../conf", config_name="index", version_base="1.3")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.log_level)
    try:
        report = run_index(cfg)
    except (ConfigError, FileNotFoundError) as exc:
        fail(str(exc))
    print_summary(report)
    if report["files_unaccounted"]:
        fail(f"{len(report['files_unaccounted'])} input files are unaccounted for", code=1)
    vespa = report.get("vespa")
    if vespa and vespa["blocked"]:
        fail(blocked_help(vespa), code=EXIT_BLOCKED)
    if vespa and not vespa["complete"]:
        fail(f"{vespa['failures_total']} Vespa operations failed; run jobs.feed on this index to retry them", code=1)


if __name__ == "__main__":
    sys.exit(main())
