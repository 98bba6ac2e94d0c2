"""Feeding Vespa while the index is written (``vespa.inline=true``): a block writer the driver
composes around the index's :class:`~pipelines.index.writer.PartWriter`, and the reconcile at the
end of the run.

Pages are put right after their part file is durably written; the end-of-run reconcile
(:func:`pipelines.vespa.replay.replay` in ``resume`` mode) feeds whatever was not acknowledged
(a killed run included) and removes stale pages.
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
from pipelines.vespa.feed import FeedSettings


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
        report = replay.replay(
            location, self.endpoint, self.documents, self.feed, mode="resume", delete_missing=delete_missing
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
            feed = self.inline
            counts.update(
                replay.feed_pages(
                    self.location, feed.endpoint, feed.documents, feed.feed, pages, self.index_writer.run_id
                )
            )
        failpoints.hit("after_write_block")
        return counts
