"""Against a real Vespa: deploy the package, feed the sample corpus, and rank pages by their own vectors.

Skipped unless ``VESPA_URL`` (container, e.g. http://localhost:8080) and ``VESPA_CONFIG_SERVER_URL``
(deploy API, e.g. http://localhost:19071) are set; ``infra/vespa/README.md`` shows how to start one.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipelines import index, schema
from pipelines.search import LocalIndex
from pipelines.vespa import app, query, remove, replay
from pipelines.vespa import deploy as deploy_vespa
from pipelines.vespa.client import VespaEndpoint
from pipelines.vespa.documents import DocumentSettings
from pipelines.vespa.feed import FeedSettings

VESPA_URL = os.environ.get("VESPA_URL")
CONFIG_SERVER = os.environ.get("VESPA_CONFIG_SERVER_URL")

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not (VESPA_URL and CONFIG_SERVER), reason="set VESPA_URL and VESPA_CONFIG_SERVER_URL"),
]


@pytest.fixture(scope="module")
def live_index(sample_index):
    return sample_index[0]


def test_deploy_feed_and_self_ranking(live_index):
    settings = app.VespaAppSettings()
    deploy_vespa.deploy(settings, CONFIG_SERVER, "single", "default")
    assert deploy_vespa.wait_healthy(VESPA_URL, 600), f"{VESPA_URL} did not come up after deploying"
    endpoint = VespaEndpoint(url=VESPA_URL)
    location = index.IndexLocation(str(live_index))
    report = replay.replay(location, endpoint, DocumentSettings(), FeedSettings(), mode="full")
    assert report["complete"], report["failures"]
    pages = location.read_pages()
    try:
        page_ids = pages.column("page_id").to_pylist()
        queries = [
            (schema.decode_embedding(buf, schema.table_dim(pages)).astype(np.float32), None)
            for buf in pages.column("embedding").to_pylist()
        ]
        # The one-vector profiles retrieve every page here (page_target_hits >= pages): their exact rerank decides.
        settings = query.VespaQuerySettings(target_hits=50, page_target_hits=100)
        for profile in ("two_phase", "two_phase_unpacked", "float", "hybrid", "muvera", "page_vector"):
            results = query.search(endpoint, queries, profile, 3, settings)
            for page_id, hits in zip(page_ids, results, strict=True):
                assert hits and hits[0]["page_id"] == page_id, (profile, page_id, hits[:3])
        # Pages like page 0: the same pages, in the same order, as the local index finds by page-vector cosine.
        local = LocalIndex(pages)
        own = np.frombuffer(pages.column("page_embedding")[0].as_py(), "<f2").astype(np.float32)
        similar = query.similar_pages(endpoint, own, 5, settings, exclude_page_id=page_ids[0])
        assert [h["page_id"] for h in similar] == [page_ids[h.page_index] for h in local.similar_pages(0, 5)]
    finally:
        for doc_id in set(pages.column("doc_id").to_pylist()):
            remove.delete_where(endpoint, "doc_id", doc_id, FeedSettings())
