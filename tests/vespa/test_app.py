"""The application package: schema, rank profiles, services topologies, files on disk, deploy API."""

from __future__ import annotations

import io
import json
import re
import threading
import xml.etree.ElementTree as ET
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipelines.errors import ConfigError
from pipelines.vespa import app, config
from pipelines.vespa import deploy as deploy_vespa
from tests.vespa import rank_eval

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def schema_text() -> str:
    return app.package_files(app.VespaAppSettings())["schemas/pdf_page.sd"]


def block(text: str, header: str) -> str:
    """The body of the ``header { ... }`` block in schema text (brace matched)."""
    start = text.index(header + " {")
    depth = 0
    for i in range(start + len(header), len(text)):
        depth += text[i] == "{"
        depth -= text[i] == "}"
        if depth == 0 and text[i] == "}":
            return text[start : i + 1]
    raise AssertionError(header)


def test_fields_and_tensor_types(schema_text):
    embedding = block(schema_text, "field embedding type tensor<int8>(patch{}, v[16])")
    assert "indexing: attribute | index" in embedding
    assert "distance-metric: hamming" in embedding
    assert "max-links-per-node: 32" in embedding
    assert "neighbors-to-explore-at-insert: 400" in embedding
    float_field = block(schema_text, "field embedding_float type tensor<bfloat16>(patch{}, v[128])")
    assert "indexing: attribute" in float_field and "paged" in float_field
    for name in ("title", "text"):
        field = block(schema_text, f"field {name} type string")
        assert "index: enable-bm25" in field and "summary" in field
    for name in ("page_id", "doc_id", "source_uri", "model", "config_hash"):
        assert "attribute" in block(schema_text, f"field {name} type string")
    for name in ("page_number", "page_count"):
        assert "attribute" in block(schema_text, f"field {name} type int")
    assert "summary" in block(schema_text, "field thumbnail type raw")
    assert "fields: title, text" in block(schema_text, "fieldset default")


def test_rank_profiles_use_the_independently_evaluated_expressions(schema_text):
    binary = block(schema_text, "rank-profile binary")
    assert rank_eval.MAX_SIM_BINARY in binary
    assert rank_eval.MAX_SIM_UNPACKED in binary
    assert rank_eval.MAX_SIM_FLOAT in binary
    assert re.search(r"first-phase \{\s*expression \{\s*max_sim_binary\s*\}", binary)
    assert "query(qt) tensor<float>(querytoken{}, v[128])" in binary
    assert "query(qtb) tensor<int8>(querytoken{}, v[16])" in binary
    assert len(re.findall(r"query\(rq\d+\) tensor<int8>\(v\[16\]\)", binary)) == 64

    two_phase = block(schema_text, "rank-profile two_phase inherits binary")
    assert re.search(r"second-phase \{\s*expression \{\s*max_sim_float\s*\}\s*rerank-count: 200", two_phase)
    unpacked = block(schema_text, "rank-profile two_phase_unpacked inherits binary")
    assert re.search(r"second-phase \{\s*expression \{\s*max_sim_unpacked\s*\}\s*rerank-count: 200", unpacked)
    hybrid = block(schema_text, "rank-profile hybrid inherits two_phase")
    assert "max_sim_float + 2.0 * (bm25(title) + bm25(text))" in hybrid
    float_profile = block(schema_text, "rank-profile float inherits binary")
    assert re.search(r"first-phase \{\s*expression \{\s*max_sim_float\s*\}", float_profile)


def test_one_vector_fields_and_profiles(schema_text):
    from pipelines.muvera import MuveraSettings

    dim = MuveraSettings().dim(128)
    page = block(schema_text, "field page_embedding type tensor<bfloat16>(x[128])")
    muvera = block(schema_text, f"field muvera_embedding type tensor<bfloat16>(x[{dim}])")
    assert "indexing: attribute | index" in page and "distance-metric: prenormalized-angular" in page
    assert "indexing: attribute | index" in muvera and "distance-metric: dotproduct" in muvera
    assert "paged" not in page + muvera  # HNSW needs the vectors in memory
    binary = block(schema_text, "rank-profile binary")
    assert f"query(qm) tensor<float>(x[{dim}])" in binary and "query(qp) tensor<float>(x[128])" in binary
    assert rank_eval.MUVERA_SIMILARITY in binary and rank_eval.PAGE_SIMILARITY in binary
    for name, similarity in (("muvera", "muvera_similarity"), ("page_vector", "page_similarity")):
        profile = block(schema_text, f"rank-profile {name} inherits two_phase")
        assert re.search(rf"first-phase \{{\s*expression \{{\s*{similarity}\s*\}}", profile)
        assert "second-phase" not in profile  # two_phase's exact MaxSim, inherited
    similar = block(schema_text, "rank-profile similar_pages inherits binary")
    assert re.search(r"first-phase \{\s*expression \{\s*page_similarity\s*\}", similar)
    wide = app.package_files(app.VespaAppSettings(embedding_dim=320, muvera_dim=1000))["schemas/pdf_page.sd"]
    assert "field muvera_embedding type tensor<bfloat16>(x[1000])" in wide
    assert "field page_embedding type tensor<bfloat16>(x[320])" in wide


def test_single_node_services():
    root = ET.fromstring(app.package_files(app.VespaAppSettings())["services.xml"].split("?>", 1)[1])
    container = root.find("container")
    assert container.get("id") == "default"
    assert container.find("document-api") is not None and container.find("search") is not None
    content = root.find("content")
    assert content.get("id") == "pages"
    assert content.find("documents/document").attrib == {"type": "pdf_page", "mode": "index"}
    assert content.findtext("min-redundancy") == "1"


def test_multinode_services_and_hosts():
    settings = app.VespaAppSettings()
    files = app.package_files(settings, "multinode")
    root = ET.fromstring(files["services.xml"].split("?>", 1)[1])
    hosts = ET.fromstring(files["hosts.xml"].split("?>", 1)[1])
    aliases = {h.findtext("alias"): h.get("name") for h in hosts.findall("host")}
    used = {e.get("hostalias") for e in root.iter() if e.get("hostalias")}
    assert used == set(aliases), "every host alias in services.xml is defined in hosts.xml and vice versa"
    assert len(root.findall("admin/configservers/configserver")) == 3
    containers = {c.get("id"): c for c in root.findall("container")}
    assert containers["feed"].find("document-api") is not None and containers["feed"].find("search") is None
    assert containers["default"].find("search") is not None
    content = root.find("content")
    groups = content.findall("group/group")
    assert len(groups) == 2 and content.findtext("min-redundancy") == "2"
    assert content.find("group/distribution").get("partitions") == "1|*"
    keys = [n.get("distribution-key") for n in content.iter("node")]
    assert sorted(keys, key=int) == [str(i) for i in range(4)]
    assert content.findtext("engine/proton/tuning/searchnode/requestthreads/persearch") == "4"


def test_committed_infra_package_is_the_generated_one():
    settings = app.VespaAppSettings()
    for topology, directory in deploy_vespa.DIRS.items():
        for relative, text in app.package_files(settings, topology).items():
            path = ROOT / "infra" / "vespa" / directory / relative
            assert path.read_text() == text, f"{path} is stale: run python -m jobs.deploy_vespa"


def test_package_zip_holds_every_file():
    settings = app.VespaAppSettings()
    with zipfile.ZipFile(io.BytesIO(app.package_zip(settings, "multinode"))) as archive:
        names = set(archive.namelist())
        assert names == {"services.xml", "hosts.xml", "schemas/pdf_page.sd"}
        assert archive.read("schemas/pdf_page.sd").decode() == app.package_files(settings)["schemas/pdf_page.sd"]


def test_bad_app_config_fails_fast():
    cfg = OmegaConf.create({"vespa": {"app": {"name": "my-app"}}})
    with pytest.raises(ConfigError, match="lowercase letters and digits"):
        config.settings(cfg, "app")
    cfg = OmegaConf.create({"vespa": {"app": {"rerank": 5}}})
    with pytest.raises(ConfigError, match=r"unknown keys vespa.app"):
        config.settings(cfg, "app")


class _ConfigServer(BaseHTTPRequestHandler):
    received: list = []  # noqa: RUF012
    answer_status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, self.headers["Content-Type"], body))
        status = type(self).answer_status
        payload = {"message": "Deploy successful"} if status == 200 else {"message": "Invalid application: bad"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def config_server():
    _ConfigServer.received = []
    _ConfigServer.answer_status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ConfigServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _ConfigServer
    server.shutdown()


def test_deploy_posts_the_zip_to_prepareandactivate(config_server):
    url, handler = config_server
    answer = deploy_vespa.deploy(app.VespaAppSettings(), url, "single", "default")
    assert answer["message"] == "Deploy successful"
    [(path, content_type, body)] = handler.received
    assert path == "/application/v2/tenant/default/prepareandactivate"
    assert content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert set(archive.namelist()) == {"services.xml", "schemas/pdf_page.sd"}


def test_deploy_rejection_is_a_clear_error(config_server):
    url, handler = config_server
    handler.answer_status = 400
    with pytest.raises(RuntimeError, match=r"rejected the package \(HTTP 400\).*Invalid application"):
        deploy_vespa.deploy(app.VespaAppSettings(), url, "single", "default")
