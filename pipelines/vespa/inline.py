"""Feeding Vespa while the index is written (``vespa.inline=true``): a block writer the driver
composes around the index's :class:`~pipelines.index.writer.PartWriter`, and the reconcile at the
end of the run.

Pages are put right after their part file is durably written; the end-of-run reconcile
(:func:`pipelines.vespa.replay.replay` in ``resume`` mode) feeds whatever was not acknowledged
(a killed run included) and removes stale pages.

A Vespa outage longer than ``vespa.feed.max_outage_s`` does not hold the index run: the block feed
that waited it out gives up and says so in the feed log directory, every later block of the run (in
any process) is written to the index without being fed, and the reconcile tries once more (one round
of requests) before it gives up too; the run then commits and reports ``unavailable`` (exit 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from omegaconf import OmegaConf

from pipelines.index.location import IndexLocation
from pipelines.index.writer import PartWriter
from pipelines.testing import failpoints
from pipelines.vespa import config, replay
from pipelines.vespa.client import VespaEndpoint
from pipelines.vespa.documents import DocumentSettings
from pipelines.vespa.feed import FeedSettings, OutageClock

#: (feed log root, run id) of the runs this process has seen give up on an outage: their later blocks are
#: not fed. Per process, because a Ray worker runs many write tasks, each with its own unpickled writer.
_GAVE_UP: set[tuple[str, str]] = set()


@dataclass
class InlineFeed:
    """Where and how pages are fed inline."""

    endpoint: VespaEndpoint
    documents: DocumentSettings
    feed: FeedSettings

    @classmethod
    def from_config(cls, vespa: Mapping[str, Any]) -> InlineFeed | None:
        """The inline feed the ``vespa`` config node asks for, or None when ``inline`` is off.
        Raises :class:`~pipelines.errors.ConfigError` on bad settings or a missing endpoint."""
        if not vespa.get("inline", False):
            return None
        root = OmegaConf.create({"vespa": dict(vespa)})
        return cls(config.endpoint(root).resolved(), config.settings(root, "documents"), config.settings(root, "feed"))

    def writer(self, index_writer: PartWriter, location: IndexLocation) -> FeedingWriter:
        return FeedingWriter(index_writer, self, location)

    def reconcile(self, location: IndexLocation, delete_missing: bool, inline_totals: Mapping[str, Any]) -> dict:
        """Feed what the inline pass did not get acknowledged and remove stale pages (with
        ``delete_missing``, also pages of documents gone from the source); returns the feed report."""
        # After the inline feed gave up on an outage, one round of requests finds out whether Vespa is back.
        clock = OutageClock(self.feed.max_outage_s, probe=bool(inline_totals.get("vespa_unavailable")))
        report = replay.replay(
            location, self.endpoint, self.documents, self.feed, "resume", delete_missing, clock=clock
        )
        report["inline"] = {k: v for k, v in inline_totals.items() if k.startswith("vespa_")}
        return report


@dataclass
class FeedingWriter:
    """Block writer: write the block to the index, then put its pages to Vespa and log the outcomes."""

    index_writer: PartWriter
    inline: InlineFeed
    location: IndexLocation

    def __call__(self, block: pa.Table) -> dict[str, int]:
        counts, pages = self.index_writer.write(block)
        if pages.num_rows:
            counts.update(self.feed(pages))
        failpoints.hit("after_write_block")
        return counts

    def feed(self, pages: pa.Table) -> dict[str, int]:
        """Put ``pages``, unless this run already gave up on a Vespa outage; returns the feed counts."""
        feed, run_id = self.inline, self.index_writer.run_id
        log = replay.FeedLog(self.location, feed.endpoint)
        key = (log.root, run_id)
        if key not in _GAVE_UP:
            clock = OutageClock(feed.feed.max_outage_s, peer_gave_up=lambda: log.gave_up(run_id))
            result, counts = replay.feed_pages(
                self.location, feed.endpoint, feed.documents, feed.feed, pages, run_id, clock
            )
            if not result.unavailable:
                return counts
            log.record_outage(run_id, result.outage_s)
            _GAVE_UP.add(key)
            return counts
        n = pages.num_rows
        return {"vespa_acked": 0, "vespa_failed": 0, "vespa_not_fed": n, "vespa_unavailable": n}
