"""Against a real Vespa: deploy the package, feed the sample corpus, and rank pages by their own vectors.

Skipped unless ``VESPA_URL`` (container, e.g. http://localhost:8080) and ``VESPA_CONFIG_SERVER_URL``
(deploy API, e.g. http://localhost:19071) are set; ``infra/vespa/README.md`` shows how to start one.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipelines import index, schema
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
            (schema.decode_embedding(buf).astype(np.float32), None) for buf in pages.column("embedding").to_pylist()
        ]
        for profile in ("two_phase", "two_phase_unpacked", "float"):
            results = query.search(endpoint, queries, profile, 3, query.VespaQuerySettings(target_hits=50))
            for page_id, hits in zip(page_ids, results, strict=True):
                assert hits and hits[0]["page_id"] == page_id, (profile, page_id, hits[:3])
    finally:
        for doc_id in set(pages.column("doc_id").to_pylist()):
            remove.delete_where(endpoint, "doc_id", doc_id, FeedSettings())
