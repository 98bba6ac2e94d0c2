"""Our Vespa application package, feed documents and rank expressions, checked by Vespa's own Java code.

One run of ``infra/vespa/verify`` (Vespa's config model, document JSON reader and ranking-expression
evaluation, pinned in its pom.xml) per session does everything: it builds the generated packages
(``infra/vespa/app``, ``infra/vespa/multinode``) and a deliberately broken one as a config server
prepares them, reads the feed operations our code writes for an index of the sample corpus (TEST model)
with the document types derived from our schema, and evaluates every rank profile's phases on those
documents and the query bodies our code sends. The scores must equal the local search's.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines import schema
from pipelines.index import IndexLocation
from pipelines.search import LocalIndex, Searcher
from pipelines.vespa import app, documents, query, remove
from tests.helpers import compose_config
from tests.vespa import vespa_java
from tests.vespa.conftest import vespa_id

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = f"schemas/{app.SCHEMA_NAME}.sd"
#: Values for the features no document or query tensor provides (the hybrid profile's BM25 terms).
FEATURES = {"bm25(title)": 1.5, "bm25(text)": 0.25}
#: Sample queries scored (each costs the JVM several seconds: Java evaluates unpack_bits slowly).
QUERIES = 2
#: Pages also fed in the list form, to see what Vespa stores for it.
LIST_FORM_PAGES = 2
#: A source URI the selection's string literal must escape.
QUOTED_URI = 'file:///no/such "quoted" \\ path.pdf'
#: A mismatched join: float query tokens (v[128]) against the packed bytes (v[16]) without unpack_bits.
BROKEN_MAX_SIM = app.MAX_SIM_UNPACKED.replace(
    f"unpack_bits(attribute({app.BINARY_FIELD}))", f"attribute({app.BINARY_FIELD})"
)


def query_vectors(index: Path, queries_file: Path) -> list[np.ndarray]:
    """Sample queries encoded by the TEST model."""
    cfg = compose_config("search", [f"index={index}"])
    texts = [json.loads(line)["query"] for line in queries_file.read_text().splitlines()]
    return Searcher.from_config(cfg).encode(texts[:QUERIES])


def long_query() -> np.ndarray:
    """70 random unit tokens: more than the 64 ``query(rqN)`` inputs."""
    vectors = np.random.default_rng(5).normal(size=(70, 128))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def bfloat16_cells(vectors: np.ndarray, rounding: str) -> dict[str, list[float]]:
    """Per-patch cells as float values of bfloat16: our round-to-nearest-even bits, or the float32 truncated."""
    if rounding == "nearest":
        values = documents.from_bfloat16_bits(documents.to_bfloat16_bits(vectors))
    else:
        bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
        values = bits.view(np.float32)
    return {str(i): row.astype(np.float64).tolist() for i, row in enumerate(values)}


def put_operation(fields: dict, page_id: str, binary: np.ndarray, vectors: np.ndarray, rounding: str) -> dict:
    return {
        "op": "put",
        "id": vespa_id(page_id),
        # The exact body pyvespa's feed_data_point POSTs to /document/v1.
        "body": json.dumps({"fields": fields}),
        "expected": {
            app.BINARY_FIELD: {"cells": {str(i): row.view(np.int8).tolist() for i, row in enumerate(binary)}},
            app.FLOAT_FIELD: {
                "cells": bfloat16_cells(vectors, rounding),
                "original": {str(i): row.astype(np.float64).tolist() for i, row in enumerate(vectors)},
            },
        },
    }


def rerank_vectors(row: dict) -> np.ndarray:
    """The page's float re-ranking vectors as the index stores them (unpooled with the default pooling)."""
    return schema.decode_embedding(documents.rerank_vectors(row), schema.row_dim(row))


def broken_package(root: Path) -> Path:
    files = app.package_files(app.VespaAppSettings())
    assert app.MAX_SIM_UNPACKED in files[SCHEMA_FILE]
    files[SCHEMA_FILE] = files[SCHEMA_FILE].replace(app.MAX_SIM_UNPACKED, BROKEN_MAX_SIM)
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


@pytest.fixture(scope="session")
def verified(sample_index, sample_corpus, tmp_path_factory):
    """One run of the Java program over everything, with the local data it was given (the session's sample
    index: the tiny TEST model's vectors of the sample corpus)."""
    work = tmp_path_factory.mktemp("vespa-java")
    pages = IndexLocation(str(sample_index[0])).read_pages()
    local = LocalIndex(pages)
    queries = query_vectors(sample_index[0], sample_corpus / "queries.jsonl")

    # Copies: preparing a package writes next to it (.preprocessed), and infra/ must stay as generated.
    packages = {name: work / name for name in ("app", "multinode")}
    for name, path in packages.items():
        shutil.copytree(REPO / "infra" / "vespa" / name, path)
    packages["broken"] = broken_package(work / "broken")
    # The package for a 320-d model (ColQwen3): its tensor types follow the width (#14).
    app.write_package(app.VespaAppSettings(embedding_dim=320), work / "dim320")
    packages["dim320"] = work / "dim320"

    settings = documents.DocumentSettings()
    operations, ranked = [], []
    for row, doc in zip(pages.to_pylist(), documents.iter_documents(pages, settings), strict=True):
        binary, vectors = schema.decode_binary(row["binary"], schema.row_dim(row)), rerank_vectors(row)
        operations.append(put_operation(doc["fields"], doc["id"], binary, vectors.astype(np.float32), "nearest"))
        ranked.append(vespa_id(doc["id"]))
    list_settings = documents.DocumentSettings(form="list")
    for row in pages.to_pylist()[:LIST_FORM_PAGES]:
        doc = documents.page_document(row, list_settings)
        binary, vectors = schema.decode_binary(row["binary"], schema.row_dim(row)), rerank_vectors(row)
        page_id = f"{doc['id']}-list"
        operations.append(put_operation(doc["fields"], page_id, binary, vectors.astype(np.float32), "truncated"))
    operations += [{"op": "remove", "id": vespa_id(p)} for p in pages.column("page_id").to_pylist()[:2]]
    first_doc = pages.column("doc_id")[0].as_py()
    selections = [
        remove.selection(app.SCHEMA_NAME, "doc_id", first_doc),
        remove.selection(app.SCHEMA_NAME, "source_uri", QUOTED_URI),
    ]
    bodies = [json.dumps(ranking_body(q)) for q in [*queries, long_query()]]
    request = {
        "packages": {name: str(path) for name, path in packages.items()},
        "feed": {"package": "app", "operations": operations, "selections": selections},
        "rank": {
            "package": "app",
            "queries": bodies[:-1],
            "inputs_only": bodies[-1:],  # 70 tokens: only its inputs (a scored one costs the JVM many seconds)
            "documents": ranked,
            "features": FEATURES,
        },
    }
    try:
        result = vespa_java.run(request, work / "run")
    except vespa_java.VespaJavaError as exc:
        pytest.fail(str(exc), pytrace=False)
    return {"result": result, "pages": pages, "local": local, "queries": queries, "first_doc": first_doc}


def ranking_body(q: np.ndarray) -> dict:
    """One body with every query input our builder sends: ``two_phase``'s, plus the ``query(qm)`` and ``query(qp)``
    of the one-vector profiles (every profile declares them all), so each profile's phases are scored from it."""
    settings = query.VespaQuerySettings()
    body = query.build_query_body(q, "two_phase", 10, settings, app.SCHEMA_NAME)
    for profile in ("muvera", "page_vector"):
        single = query.build_query_body(q, profile, 10, settings, app.SCHEMA_NAME)
        body |= {k: v for k, v in single.items() if k.startswith("input.")}
    return body


def profile_names(schema_text: str) -> set[str]:
    return set(re.findall(r"^\s*rank-profile (\w+)", schema_text, re.M))


@pytest.mark.parametrize("name", ["app", "multinode"])
def test_generated_packages_build_in_vespas_config_model(verified, name):
    report = verified["result"]["packages"][name]
    assert report["ok"], report.get("error")
    assert report["document_types_by_cluster"] == {"pages": [app.SCHEMA_NAME]}
    # Only the warnings no package can avoid here: no C++ rank-setup verifier, and placeholder host names.
    unexpected = [
        line
        for line in report["deploy_log"]
        if line.startswith("WARNING")
        and "vespa-verify-ranksetup-bin" not in line
        and "Unable to lookup IP address" not in line
    ]
    assert not unexpected
    assert profile_names(app.package_files(app.VespaAppSettings())[SCHEMA_FILE]) <= set(report["rank_profiles"])


def test_multinode_indexes_on_the_feed_cluster(verified):
    report = verified["result"]["packages"]["multinode"]
    assert report["indexing_cluster"] == {"pages": "feed"}
    assert report["hosts"] == 11 and set(report["container_clusters"]) == {"feed", "default"}


def test_embedding_attributes_are_derived_as_intended(verified):
    attributes = {a["name"]: a for a in verified["result"]["packages"]["app"]["attributes"]}
    binary, floats = attributes[app.BINARY_FIELD], attributes[app.FLOAT_FIELD]
    tensors = app.VespaAppSettings().tensors
    assert binary["tensortype"] == tensors.binary.replace(" ", "") and binary["distancemetric"] == "HAMMING"
    assert binary["index"]["hnsw"]["enabled"] and binary["index"]["hnsw"]["maxlinkspernode"] == 32
    assert not binary["paged"]
    assert floats["tensortype"] == tensors.float.replace(" ", "") and floats["paged"]
    assert not floats["index"]["hnsw"]["enabled"]
    # One vector per page: in memory with HNSW, dot-product metrics (normalised means: prenormalized-angular).
    settings = app.VespaAppSettings()
    for field, dim, metric in (
        (app.PAGE_VECTOR_FIELD, tensors.dim, "PRENORMALIZED_ANGULAR"),
        (app.MUVERA_FIELD, settings.muvera_tensor_dim, "DOTPRODUCT"),
    ):
        attribute = attributes[field]
        assert attribute["tensortype"] == f"tensor<bfloat16>(x[{dim}])" and attribute["distancemetric"] == metric
        assert attribute["index"]["hnsw"]["enabled"] and not attribute["paged"]


def test_a_320_dim_package_builds_with_its_own_tensor_types(verified):
    report = verified["result"]["packages"]["dim320"]
    assert report["ok"], report.get("error")
    attributes = {a["name"]: a for a in report["attributes"]}
    assert attributes[app.BINARY_FIELD]["tensortype"] == "tensor<int8>(patch{},v[40])"
    assert attributes[app.BINARY_FIELD]["distancemetric"] == "HAMMING"
    assert attributes[app.FLOAT_FIELD]["tensortype"] == "tensor<bfloat16>(patch{},v[320])"
    props = dict(reversed(report["rank_profiles"]["two_phase"]))
    assert props["vespa.type.query.qt"] == "tensor<float>(querytoken{},v[320])"
    assert props["vespa.type.query.qtb"] == "tensor<int8>(querytoken{},v[40])"
    assert props["vespa.type.query.rq0"] == "tensor<int8>(v[40])"


def test_rank_profiles_compile_with_inheritance_and_declared_inputs(verified):
    profiles = {
        name: dict(reversed(props)) for name, props in verified["result"]["packages"]["app"]["rank_profiles"].items()
    }
    for name in ("binary", "two_phase", "two_phase_unpacked", "hybrid", "float"):
        props = profiles[name]
        # Inherited inputs: all 64 per-token query tensors, and both MaxSim inputs.
        assert props["vespa.type.query.qt"] == app.VespaAppSettings().tensors.query_float.replace(" ", "")
        assert props["vespa.type.query.qtb"] == app.VespaAppSettings().tensors.query_binary.replace(" ", "")
        assert sum(k.startswith("vespa.type.query.rq") for k in props) == 64
        assert "rankingExpression(max_sim_unpacked).rankingScript" in props  # inherited functions
        assert "rankingExpression(max_sim_float).rankingScript" in props
    for name in ("two_phase", "two_phase_unpacked"):
        assert profiles[name]["vespa.rank.firstphase"] == "rankingExpression(max_sim_binary)"
        assert profiles[name]["vespa.hitcollector.heapsize"] == "200"  # rerank-count
    for name, similarity in (("muvera", "muvera_similarity"), ("page_vector", "page_similarity")):
        # two_phase's second phase and rerank-count, inherited; their own first phase.
        assert profiles[name]["vespa.rank.firstphase"] == f"rankingExpression({similarity})"
        assert profiles[name]["vespa.rank.secondphase"] == "rankingExpression(max_sim_float)"
        assert profiles[name]["vespa.hitcollector.heapsize"] == "200"
    assert profiles["similar_pages"]["vespa.rank.firstphase"] == "rankingExpression(page_similarity)"
    assert "vespa.rank.secondphase" not in profiles["similar_pages"]
    assert profiles["two_phase"]["vespa.rank.secondphase"] == "rankingExpression(max_sim_float)"
    assert profiles["two_phase_unpacked"]["vespa.rank.secondphase"] == "rankingExpression(max_sim_unpacked)"
    assert profiles["float"]["vespa.rank.firstphase"] == "rankingExpression(max_sim_float)"
    assert "vespa.rank.secondphase" not in profiles["float"] and "vespa.rank.secondphase" not in profiles["binary"]
    # unpack_bits compiles to big-endian bit extraction: most significant bit first, numpy packbits' order.
    assert "7-(v % 8)" in profiles["binary"]["rankingExpression(max_sim_unpacked).rankingScript"]


def test_a_rank_expression_with_mismatched_tensor_types_fails_with_vespas_message(verified):
    report = verified["result"]["packages"]["broken"]
    assert not report["ok"]
    message = report["error"]
    assert "rank profile 'binary'" in message and "max_sim" in message, message
    assert "v[128]" in message and "v[16]" in message, message


def test_feed_documents_are_read_by_vespas_json_reader_with_the_cells_we_started_from(verified):
    operations = verified["result"]["feed"]["operations"]
    failed = [(o["id"], o.get("error")) for o in operations if not o["ok"]]
    assert not failed
    puts = [o for o in operations if o["op"] == "put"]
    assert len(puts) == len(verified["pages"]) + LIST_FORM_PAGES
    assert sum(o["op"] == "remove" for o in operations) == 2
    pages = verified["pages"]
    n_vectors = pages.column("n_vectors").to_pylist()
    # The default pooling stores unpooled re-ranking vectors apart from the pooled candidates (pool factor 3).
    n_rerank = pages.column("n_rerank_vectors").to_pylist()
    assert all(r > n for r, n in zip(n_rerank, n_vectors, strict=True))
    sizes = list(zip(n_vectors, n_rerank, strict=True))
    tensors = app.VespaAppSettings(embedding_dim=schema.table_dim(pages)).tensors
    for op, (n, n_float) in zip(puts, sizes + sizes[:LIST_FORM_PAGES], strict=True):
        binary, floats = op["fields"][app.BINARY_FIELD], op["fields"][app.FLOAT_FIELD]
        assert binary["type"] == tensors.binary.replace(" ", "") and floats["type"] == tensors.float.replace(" ", "")
        assert binary["subspaces"] == n and floats["subspaces"] == n_float
        assert binary["mismatches"] == 0 and binary["cells"] == n * schema.binary_bytes(tensors.dim)
        # hex: exactly our round-to-nearest-even bfloat16 bits; list: Vespa truncates the floats to bfloat16.
        assert floats["mismatches"] == 0, floats.get("first_mismatch")
        bound = 2**-7 if op["id"].endswith("-list") else 2**-8  # truncation: one unit, rounding: half a unit
        assert floats["max_relative_error_vs_original"] <= bound


def test_selection_deletes_match_exactly_the_documents_pages(verified):
    selections = verified["result"]["feed"]["selections"]
    page_ids, doc_ids = verified["pages"]["page_id"].to_pylist(), verified["pages"]["doc_id"].to_pylist()
    first = verified["first_doc"]
    expected = {vespa_id(p) for p, d in zip(page_ids, doc_ids, strict=True) if d == first}
    expected |= {
        vespa_id(f"{p}-list") for p, d in zip(page_ids[:LIST_FORM_PAGES], doc_ids, strict=False) if d == first
    }
    by_doc = selections[remove.selection(app.SCHEMA_NAME, "doc_id", first)]
    assert "error" not in by_doc and set(by_doc["matched"]) == expected
    quoted = selections[remove.selection(app.SCHEMA_NAME, "source_uri", QUOTED_URI)]
    assert "error" not in quoted and quoted["matched"] == []


def test_query_bodies_convert_to_the_declared_input_types(verified):
    profile = verified["result"]["rank"]["profiles"]["two_phase"]
    # query(qt), query(qtb), query(qm), query(qp) and one query(rqN) per token, up to the 64 the profile declares.
    assert profile["inputs_converted"] == [4 + min(len(q), 64) for q in verified["queries"]]
    assert profile["inputs_only_converted"] == [4 + 64]


def test_vespa_scores_equal_local_search_scores_for_every_profile(verified):
    rank = verified["result"]["rank"]["profiles"]
    assert all(p["ok"] for p in rank.values()), {k: p.get("error") for k, p in rank.items()}
    assert set(rank) == profile_names(app.package_files(app.VespaAppSettings())[SCHEMA_FILE])
    local: LocalIndex = verified["local"]
    every_page = np.arange(len(local))
    bm25 = app.VespaAppSettings().hybrid_bm25_weight * sum(FEATURES.values())
    for i, q in enumerate(verified["queries"]):
        hamming = local.hamming_maxsim(q)
        unpacked = local.unpacked_maxsim(q, every_page)
        # Vespa holds bfloat16, the local index float16: equal within bfloat16 precision.
        exact = local.float_maxsim_of(q, every_page)
        expected = {
            ("binary", "firstphase"): (hamming, 1e-12),
            ("two_phase", "firstphase"): (hamming, 1e-12),
            ("two_phase", "secondphase"): (exact, 1e-2),
            ("two_phase_unpacked", "firstphase"): (hamming, 1e-12),
            ("two_phase_unpacked", "secondphase"): (unpacked, 1e-5),
            ("hybrid", "firstphase"): (hamming, 1e-12),
            ("hybrid", "secondphase"): (exact + bm25, 1e-2),
            ("float", "firstphase"): (local.float_maxsim(q), 1e-2),
            # Similarity maps: the first phase inherited from binary (their summary feature is checked by the fake).
            ("similarity_map", "firstphase"): (hamming, 1e-12),
            ("similarity_map_unpacked", "firstphase"): (hamming, 1e-12),
        }
        for (profile, phase), (scores, rtol) in expected.items():
            np.testing.assert_allclose(
                rank[profile][phase]["scores"][i], scores, rtol=rtol, err_msg=f"{profile} {phase}"
            )
        assert len(set(np.round(hamming, 6))) > 3, "scores must vary for the comparison to mean anything"
        # One vector per page: dot products over bfloat16 cells (Vespa) and float16 (local); MUVERA's sums of
        # positive and negative terms can nearly cancel, so the bound is relative to the largest score.
        muvera, page = local.single_vector_scores(q, "muvera"), local.single_vector_scores(q, "page_vector")
        for (profile, phase), scores in {
            ("muvera", "firstphase"): muvera,
            ("muvera", "secondphase"): exact,
            ("page_vector", "firstphase"): page,
            ("page_vector", "secondphase"): exact,
            ("similar_pages", "firstphase"): page,
        }.items():
            np.testing.assert_allclose(
                rank[profile][phase]["scores"][i],
                scores,
                rtol=1e-2,
                atol=1e-2 * np.abs(scores).max(),
                err_msg=f"{profile} {phase}",
            )
        assert len(set(np.round(muvera, 3))) > 3 and len(set(np.round(page, 4))) > 3
    assert {p: sorted(k for k in v if k.endswith("phase")) for p, v in rank.items()} == {
        "binary": ["firstphase"],
        "two_phase": ["firstphase", "secondphase"],
        "two_phase_unpacked": ["firstphase", "secondphase"],
        "hybrid": ["firstphase", "secondphase"],
        "float": ["firstphase"],
        "similarity_map": ["firstphase"],
        "similarity_map_unpacked": ["firstphase"],
        "muvera": ["firstphase", "secondphase"],
        "page_vector": ["firstphase", "secondphase"],
        "similar_pages": ["firstphase"],
    }


@pytest.mark.parametrize(("profile", "phase"), [("float", "firstphase"), ("two_phase", "secondphase")])
def test_float_phases_are_exact_maxsim_over_the_fed_bfloat16_cells(verified, profile, phase):
    rank = verified["result"]["rank"]["profiles"][profile][phase]["scores"]
    pages = verified["pages"]
    for i, q in enumerate(verified["queries"]):
        expected = []
        for row in pages.select(["embedding", "rerank_embedding"]).to_pylist():
            stored = documents.from_bfloat16_bits(documents.to_bfloat16_bits(rerank_vectors(row)))
            expected.append(float((q.astype(np.float64) @ stored.astype(np.float64).T).max(axis=1).sum()))
        np.testing.assert_allclose(rank[i], expected, rtol=1e-5)
