"""Similarity maps (pipelines.similarity_maps): geometry per model family, pooling, local and Vespa scores, the job.

The session's sample index (tiny TEST model: Qwen2-VL architecture, default pooling = candidates pooled by 3,
unpooled float re-ranking vectors) supplies real stored vectors and layouts; the Idefics3 tile layout is read off a
real ``ColIdefics3Processor`` built here with a word-level tokenizer (the processor's tokens are what matter).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipelines import schema
from pipelines.index import IndexLocation
from pipelines.search import LocalIndex, Searcher
from pipelines.similarity_maps import (
    PageRenderer,
    PatchLayout,
    SimilarityMapWriter,
    combined_map,
    decode_ints,
    hottest_cell,
    local_similarities,
    patch_layouts,
    read_record,
)
from tests.helpers import compose_config
from tests.vespa import rank_eval


@pytest.fixture(scope="module")
def pages(sample_index) -> pa.Table:
    return IndexLocation(str(sample_index[0])).read_pages()


@pytest.fixture(scope="module")
def unpooled(pages) -> LocalIndex:
    """The sample index as searched: float re-ranking vectors = the raw (unpooled) vectors."""
    local = LocalIndex(pages)
    assert local.separate_rerank
    return local


@pytest.fixture(scope="module")
def pooled(pages) -> LocalIndex:
    """The same pages with only the pooled candidates as float vectors (an index with rerank_pool_factor=null)."""
    blank = pages.drop_columns(["rerank_embedding", "n_rerank_vectors"])
    local = LocalIndex(blank)
    assert not local.separate_rerank and len(local.embedding) < len(LocalIndex(pages).embedding)
    return local


def raw_vectors(local: LocalIndex, page: int) -> np.ndarray:
    return local.embedding[local.float_offsets[page] : local.float_offsets[page + 1]].astype(np.float32)


def cell_of(layout: PatchLayout, raw: int) -> tuple[int, int]:
    return divmod(int(layout.cells[raw]), layout.cols)


def test_pool_groups_are_the_poolers_clusters(pages, unpooled):
    """Each pooled candidate vector is the normalized mean of the raw vectors its group says went into it."""
    spans = 0
    for page, row in enumerate(pages.select(["embedding", "embedding_dim", "pool_groups"]).to_pylist()):
        pooled = schema.decode_embedding(row["embedding"], schema.row_dim(row)).astype(np.float32)
        groups = decode_ints(row["pool_groups"])
        raw = raw_vectors(unpooled, page)
        assert len(groups) == len(raw) and set(groups) == set(range(len(pooled)))
        for k in range(len(pooled)):
            mean = raw[groups == k].mean(axis=0)
            np.testing.assert_allclose(pooled[k], mean / np.linalg.norm(mean), atol=2e-3)
        spans += int((np.bincount(groups) > 1).sum())
    assert spans > 100, "pooling must merge patches for the pooled maps to mean anything"


def test_pool_stage_records_each_pooled_vectors_members_for_both_poolings():
    """A page pooled twice (candidates by 4, re-ranking vectors by 2): each grouping names, per raw vector, the
    pooled row that is the normalized mean of its members."""
    from pipelines.stages.compress import PoolStage

    rng = np.random.default_rng(3)
    raw = rng.normal(size=(40, 16)).astype(np.float32)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    row = {"source_uri": "x.pdf", "embedding": raw.astype("<f2").tobytes(), "n_vectors": 40, "embedding_dim": 16}
    out = PoolStage(pool_factor=4, rerank_pool_factor=2, page_vector=False, muvera=None).process_batch(
        schema.rows_to_table([row])
    )
    [page] = out.to_pylist()
    for column, groups_column in (("embedding", "pool_groups"), ("rerank_embedding", "rerank_pool_groups")):
        pooled = schema.decode_embedding(page[column], 16).astype(np.float32)
        groups = decode_ints(page[groups_column])
        assert len(groups) == 40 and set(groups) == set(range(len(pooled))) and len(pooled) < 40
        for k, vector in enumerate(pooled):
            mean = raw.astype("<f2").astype(np.float32)[groups == k].mean(axis=0)
            np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=2e-3)


def test_hottest_cell_is_the_query_patch_on_every_variable_grid(pages, unpooled):
    """Unpooled: a one-token query made of a patch's own vector peaks on that patch (the sole peak wherever no
    other patch has a near-identical vector), on every page, with their several Qwen grid shapes."""
    grids, unique_hits = set(), 0
    for page, row in enumerate(unpooled.pages.to_pylist()):
        layout = PatchLayout.from_row(row)
        grids.add((layout.rows, layout.cols))
        raw = raw_vectors(unpooled, page)
        image = np.flatnonzero(layout.cells >= 0)
        gram = raw[image] @ raw[image].T
        np.fill_diagonal(gram, -np.inf)
        distinct = np.diag(raw[image] @ raw[image].T) - gram.max(axis=1) > 1e-3
        # All of the page's patches as one query: token t is patch image[t]'s own vector.
        maps = layout.spread(local_similarities(unpooled, page, raw[image], "float"))
        for t, r in enumerate(image):
            cell = cell_of(layout, r)
            # Near-duplicate patches (blank paper) tie with it, up to the float16 rounding of unit vectors.
            assert maps[t][cell] >= np.nanmax(maps[t]) - 1e-3
            if distinct[t]:
                assert hottest_cell(maps[t]) == cell
                unique_hits += 1
    assert {(18, 14), (14, 18), (19, 13), (12, 21)} <= grids
    assert unique_hits > 1000


def test_pooled_score_spreads_over_its_cluster_and_peaks_there(pages, pooled):
    """Pooled: a query made of a pooled vector lights up exactly the patches pooled into it."""
    checked = 0
    for page, row in enumerate(pooled.pages.to_pylist()):
        layout = PatchLayout.from_row(row)
        groups = decode_ints(row["pool_groups"])
        stored = pooled.embedding[pooled.float_offsets[page] : pooled.float_offsets[page + 1]].astype(np.float32)
        maps = layout.spread(local_similarities(pooled, page, stored, "float"), groups)
        cell_vector = layout.cell_vectors(groups).reshape(layout.rows, layout.cols)
        for k in range(len(stored)):
            members = cell_vector == k
            if not members.any():  # a cluster of prompt tokens only
                continue
            peak = np.nanmax(maps[k])
            assert np.all(maps[k][members] == maps[k][members][0]) and maps[k][members][0] >= peak - 1e-6
            others = np.delete(stored, k, axis=0) @ stored[k]
            if stored[k] @ stored[k] - others.max() > 1e-3:
                assert set(zip(*np.nonzero(maps[k] >= peak - 1e-6), strict=True)) == set(
                    zip(*np.nonzero(members), strict=True)
                )
                checked += int(members.sum() > 1)
    assert checked > 100


def test_qwen_layout_is_the_processors_grid_and_maps_equal_colpali_engines(pages, unpooled, tiny_model_dir):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from pipelines.models.colpali import _import, model_classes

    helpers = _import("colpali_engine.interpretability.similarity_map_utils")
    _, processor_class = model_classes("qwen2", "ColQwen2", "ColQwen2Processor")
    processor = processor_class.from_pretrained(tiny_model_dir)
    size, factor = processor.image_processor.size, 14 * 2
    for page in (0, 2, 4, 11):  # portrait 18x14, landscape 14x18, A4-ish 19x13, slide 12x21
        row = unpooled.pages.slice(page, 1).to_pylist()[0]
        layout = PatchLayout.from_row(row)
        height, width = smart_resize(
            row["image_height"], row["image_width"], factor, size.shortest_edge, size.longest_edge
        )
        assert (layout.rows, layout.cols) == (height // factor, width // factor)
        inputs = processor.process_images([Image.new("RGB", (row["image_width"], row["image_height"]))])
        image_mask = processor.get_image_mask(inputs)[0][inputs["attention_mask"][0].bool()]
        raw = raw_vectors(unpooled, page)
        query = raw[[5, 40, 100]]
        import torch

        theirs = helpers.get_similarity_maps_from_embeddings(
            torch.from_numpy(raw)[None], torch.from_numpy(query)[None], (layout.cols, layout.rows), image_mask[None]
        )[0]
        ours = layout.spread(local_similarities(unpooled, page, query, "float"))
        np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 1), rtol=1e-5, atol=1e-6)


def idefics3_processor():
    """A real ColIdefics3Processor (longest edge 192 px, 64-px tiles, 4x4 vectors per tile) with a word-level
    tokenizer that knows the tokens its prompts use."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Idefics3ImageProcessor, PreTrainedTokenizerFast

    from pipelines.models.colpali import model_classes

    _, processor_class = model_classes("idefics3", "ColIdefics3", "ColIdefics3Processor")
    tiles = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    special = ["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>", *tiles]
    vocab = {token: i for i, token in enumerate([*special, "<pad>", "<unk>", "User:", "Describe", "the", "image."])}
    vocab["Assistant:"] = len(vocab)
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", additional_special_tokens=special
    )
    images = Idefics3ImageProcessor(
        size={"longest_edge": 192}, max_image_size={"longest_edge": 64}, do_image_splitting=True
    )
    return processor_class(image_processor=images, tokenizer=tokenizer, image_seq_len=16)


def test_idefics3_tiles_land_on_their_page_regions_and_the_global_tile_is_left_out():
    import torch

    processor = idefics3_processor()
    inputs = processor.process_images([Image.new("RGB", (148, 192)), Image.new("RGB", (192, 100))])
    layouts = patch_layouts(processor, inputs)
    rng = np.random.default_rng(0)
    for i, layout in enumerate(layouts):
        ids = inputs["input_ids"][i][inputs["attention_mask"][i].bool()]
        tokens = processor.tokenizer.convert_ids_to_tokens(ids)
        # Independent reading of the prompt: image tokens after <row_r_col_c> belong to tile (r, c), 4x4 in raster
        # order; those after <global-img> have no place on the page.
        expected, tile, seen = {}, None, 0
        for position, token in enumerate(tokens):
            if token.startswith("<row_"):
                tile, seen = tuple(int(x) - 1 for x in token[5:-1].split("_col_")), 0
            elif token == "<global-img>":
                tile = None
            elif token == "<image>" and tile is not None:
                expected[position] = (tile[0] * 4 + seen // 4, tile[1] * 4 + seen % 4)
                seen += 1
        tiles = {t for t in tokens if t.startswith("<row_")}
        assert (layout.rows, layout.cols) == (4 * max(int(t[5]) for t in tiles), 4 * max(int(t[-2]) for t in tiles))
        placed = {p: cell_of(layout, p) for p in np.flatnonzero(layout.cells >= 0)}
        assert placed == expected
        assert tokens.count("<image>") == len(expected) + 16  # the global tile's 16 vectors are not placed
        vectors = rng.normal(size=(len(tokens), 32)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        positions = sorted(expected)
        query = vectors[positions]
        maps = layout.spread(query @ vectors.T)
        assert [hottest_cell(m) for m in maps] == [expected[p] for p in positions]
        # colpali-engine's own Idefics3 similarity maps (local tiles, spatial order) are the same maps.
        theirs = processor.get_similarity_maps_from_embeddings(
            torch.from_numpy(vectors)[None],
            torch.from_numpy(query)[None],
            (layout.cols, layout.rows),
            processor.get_local_image_mask(inputs)[i][inputs["attention_mask"][i].bool()][None],
        )[0]
        np.testing.assert_allclose(maps, theirs.numpy().transpose(0, 2, 1), rtol=1e-5, atol=1e-6)
    assert (layouts[0].rows, layouts[0].cols) != (layouts[1].rows, layouts[1].cols)


def test_re_rendered_page_is_the_indexed_page(pages):
    """The page drawn under the maps is the image the model saw: same renderer and size, same thumbnail."""
    from pipelines.stages.rasterize import RasterizeStage

    renderer = PageRenderer()
    try:
        row = pages.slice(11, 1).to_pylist()[0]
        image, how = renderer.render(row)
    finally:
        renderer.close()
    assert how == "rendered" and image.size == (row["image_width"], row["image_height"])
    # The thumbnail the rasterize stage would make of it is, byte for byte, the one the index stored.
    assert RasterizeStage(max_pixels=1)._thumbnail(image) == row["thumbnail"]
    # A source that is gone: the thumbnail stands in, at the page's size.
    image, how = PageRenderer().render({**row, "source_uri": row["source_uri"].replace(".pdf", "-gone.pdf")})
    assert how == "thumbnail" and image.size == (row["image_width"], row["image_height"])


def test_pages_indexed_without_a_layout_say_how_to_get_maps(pages, tmp_path):
    from pipelines.errors import ConfigError
    from pipelines.search import PageHit, QueryModel

    local = LocalIndex(pages.drop_columns(["patch_rows", "patch_cols", "patch_cells"]))
    searcher = Searcher(QueryModel("tiny"), local=local)
    row = local.pages.slice(0, 1).to_pylist()[0]
    hit = PageHit(1.0, row["page_id"], row["doc_id"], row["source_uri"], 1, None, None, "tiny", page_index=0)
    with pytest.raises(ConfigError, match="re-index it"):
        SimilarityMapWriter(searcher, tmp_path).write(["q"], [np.ones((1, local.dim), np.float32)], [[hit]], [["q"]])


def check_records(records, out_dir, layouts: dict[str, PatchLayout]):
    """Every hit has a PNG with the combined map and one panel per token, and a JSON whose maps peak where it says."""
    for query_records in records:
        for record in query_records:
            png = Image.open(out_dir / record["png"])
            assert png.width > 2 * 200 and png.height > 200
            saved = read_record(out_dir / record["png"].replace(".png", ".json"))
            layout = layouts[record["page_id"]]
            assert saved["maps"].shape == (len(saved["tokens"]), layout.rows, layout.cols)
            assert saved["grid"] == [layout.rows, layout.cols] and saved["page_image"] == "rendered"
            assert saved["combined"]["hottest_cell"] == list(hottest_cell(combined_map(saved["maps"])))
            for token, grid in zip(saved["tokens"], saved["maps"], strict=True):
                assert token["hottest_cell"] == list(hottest_cell(grid))


def test_search_job_writes_maps_for_the_demo_top_hits(sample_index, sample_corpus, tmp_path, unpooled):
    from jobs.search import run_search

    out = tmp_path / "maps"
    cfg = compose_config(
        "search",
        [
            f"index={sample_index[0]}",
            f"queries_file={sample_corpus / 'queries.jsonl'}",
            "limit_queries=1",
            "top_k=3",
            "explain=true",
            f"explain_dir={out}",
        ],
    )
    rows = run_search(cfg)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"q00-r{r['rank']:02d}-{r['page_id']}.{ext}" for r in rows for ext in ("png", "json")
    )
    layouts = {row["page_id"]: PatchLayout.from_row(row) for row in unpooled.pages.to_pylist()}
    records = [[json.loads((out / f"q00-r{r['rank']:02d}-{r['page_id']}.json").read_text()) for r in rows]]
    check_records(records, out, layouts)
    query = json.loads((sample_corpus / "queries.jsonl").read_text().splitlines()[0])["query"]
    first = records[0][0]
    assert first["query"] == query and first["vectors"] == "float" and first["backend"] == "local"
    # The labels are the query's tokens (the processor's own), one per query vector.
    searcher = Searcher.from_config(cfg)
    vectors = searcher.encode([query])[0]
    assert len(first["tokens"]) == len(vectors) and "".join(t["label"] for t in first["tokens"]).startswith(query)
    # The maps are the query tokens' dot products with the page's stored (unpooled) vectors, cell by cell.
    page = next(i for i, p in enumerate(unpooled.pages.column("page_id").to_pylist()) if p == first["page_id"])
    expected = layouts[first["page_id"]].spread(vectors @ raw_vectors(unpooled, page).T)
    np.testing.assert_allclose(read_record(out / first["png"].replace(".png", ".json"))["maps"], expected, atol=1e-4)
    assert rows[0]["similarity_map"] == str(out / first["png"])


@pytest.fixture(scope="module")
def fake_vespa(pages):
    """The fake Vespa endpoint fed the sample index through the production feed, answering /search/ (the
    similarity-map profiles included) from the fed documents."""
    from pipelines.vespa import documents, feed
    from pipelines.vespa.client import VespaEndpoint
    from tests.vespa.fake_vespa import FakeVespa

    server = FakeVespa().start()
    server.search_handler = lambda body: rank_eval.search_handler(server.documents)(body)
    endpoint = VespaEndpoint(url=server.url)
    operations = [
        feed.Operation(doc["id"], doc["fields"])
        for doc in documents.iter_documents(pages, documents.DocumentSettings())
    ]
    result = feed.run_operations(operations, endpoint, feed.FeedSettings())
    assert result.count("acked") == len(pages)
    yield server
    server.stop()


def test_vespa_maps_are_the_quantized_local_maps(sample_index, tmp_path, fake_vespa, unpooled):
    """What ``jobs.search ... explain=true`` does with a Vespa endpoint (one query encoder for the whole test)."""
    server = fake_vespa
    query = "dividend per share"
    cfg = compose_config(
        "search",
        [
            f"index={sample_index[0]}",
            f"vespa.endpoint.url={server.url}",
            "top_k=2",
            "rerank_count=2",
            f"explain_dir={tmp_path / 'vespa'}",
        ],
    )
    searcher = Searcher.from_config(cfg)
    vectors = searcher.encode([query])
    hits = searcher.search_vectors(vectors, texts=[query])
    writer = SimilarityMapWriter.from_config(cfg, searcher)
    [remote_records] = writer.write([query], vectors, hits)
    writer.close()
    bodies = [json.loads(r.body) for r in server.requests if r.path.startswith("/search")]
    assert bodies[-1]["ranking.profile"] == "similarity_map" and "page_id in (" in bodies[-1]["yql"]
    local = Searcher(searcher.model, local=unpooled, encoder=searcher.encoder, top_k=2, rerank_count=2)
    local_hits = local.search_vectors(vectors)
    assert [h.page_id for h in local_hits[0]] == [h.page_id for h in hits[0]]
    [local_records] = SimilarityMapWriter(local, tmp_path / "local").write([query], vectors, local_hits)
    layouts = {row["page_id"]: PatchLayout.from_row(row) for row in unpooled.pages.to_pylist()}
    for local_record, remote_record in zip(local_records, remote_records, strict=True):
        local_maps = read_record(tmp_path / "local" / local_record["json"])["maps"]
        remote = read_record(tmp_path / "vespa" / remote_record["json"])
        assert remote["backend"] == "vespa" and remote["grid"] == local_record["grid"]
        assert [t["label"] for t in remote["tokens"]] == [t["label"] for t in local_record["tokens"]]
        # Vespa's int8 is the same similarities scaled by the page's min..max over all its vectors (prompt tokens
        # included, which the map does not show): an increasing affine image of the local map, within the int8
        # truncation and bfloat16 (Vespa) vs float16 (local) rounding.
        covered = ~np.isnan(local_maps)
        slope, intercept = np.polyfit(local_maps[covered], remote["maps"][covered], 1)
        assert slope > 0 and np.abs(remote["maps"][covered] - (slope * local_maps[covered] + intercept)).max() < 2
        assert remote["maps"].max() <= 127 and remote["maps"].min() >= -127
    check_records([remote_records], tmp_path / "vespa", layouts)

    # A patch's own vector as the query, through Vespa: the map's hottest cell is that patch.
    page = 11
    row = unpooled.pages.slice(page, 1).to_pylist()[0]
    layout, raw = layouts[row["page_id"]], raw_vectors(unpooled, page)
    image = np.flatnonzero(layout.cells >= 0)
    gram = raw[image] @ raw[image].T
    np.fill_diagonal(gram, -np.inf)
    patch = image[int(np.argmax(1 - gram.max(axis=1)))]  # the most distinct patch of the slide
    hits = searcher.search_vectors([raw[patch : patch + 1]], top_k=1)
    assert hits[0][0].page_id == row["page_id"]
    writer = SimilarityMapWriter(searcher, tmp_path / "patch", unpooled.pages, kind="float")
    [[record]] = writer.write(["patch"], [raw[patch : patch + 1]], hits, labels=[["patch"]])
    writer.close()
    assert record["tokens"][0]["hottest_cell"] == list(cell_of(layout, patch))


def test_maps_of_s3_pages_read_sources_with_the_jobs_own_credentials_within_max_file_bytes(
    sample_index, sample_corpus, pages, tmp_path, caplog
):
    """The index stores its source's storage options redacted (``key: '***'``): rendering with those is refused, so
    the maps read the sources with the search job's own ``source.storage_options``. A source over the index's
    ``rasterize.max_file_bytes`` is never read (its size is asked, no GET): the thumbnail stands in, with the reason
    logged. Sources are cached within ``cache_bytes``."""
    import s3fs
    from omegaconf import OmegaConf

    from pipelines.index import CONFIG_FILE
    from pipelines.redaction import redact
    from tests.s3_server import FaultProxy, MotoS3, storage_options

    rows = {Path(r["source_uri"]).name: r for r in pages.to_pylist() if r["page_number"] == 1}
    small, large = sorted(rows, key=lambda name: (sample_corpus / name).stat().st_size)[:2]
    limit = (sample_corpus / large).stat().st_size - 1
    with MotoS3() as moto, FaultProxy(moto.url, access_key="job-key") as proxy:
        options = {**storage_options(proxy.url), "key": "job-key", "secret": "job-secret"}
        bucket = s3fs.S3FileSystem(**options)
        bucket.mkdir("sources")
        for name in (small, large):
            bucket.pipe(f"sources/{name}", (sample_corpus / name).read_bytes())
        # An index built from that bucket: its config records the source's options, redacted.
        index = tmp_path / "index"
        shutil.copytree(sample_index[0], index)
        stored = OmegaConf.create((index / CONFIG_FILE).read_text())
        OmegaConf.update(stored, "source.storage_options", redact(options), force_add=True)
        OmegaConf.update(stored, "rasterize.max_file_bytes", limit, force_add=True)
        (index / CONFIG_FILE).write_text(OmegaConf.to_yaml(stored))
        cfg = compose_config("search", [f"index={index}", f"explain_dir={tmp_path / 'maps'}"])
        OmegaConf.update(cfg, "source.storage_options", options, force_add=True)
        writer = SimilarityMapWriter.from_config(cfg, Searcher.from_config(cfg))
        proxy.requests.clear()
        try:
            image, how = writer.renderer.render({**rows[small], "source_uri": f"s3://sources/{small}"})
            assert how == "rendered" and image.size == (rows[small]["image_width"], rows[small]["image_height"])
            with caplog.at_level(logging.WARNING, logger="pipelines.similarity_maps"):
                _, how = writer.renderer.render({**rows[large], "source_uri": f"s3://sources/{large}"})
            assert how == "thumbnail" and "rasterize.max_file_bytes" in caplog.text
            assert not [r for r in proxy.requests if r[0] == "GET" and r[1].endswith(large)]
            # Cached: the small file's page again costs no request; a cache too small for it keeps nothing.
            before = len(proxy.requests)
            assert writer.renderer.render({**rows[small], "source_uri": f"s3://sources/{small}"})[1] == "rendered"
            assert len(proxy.requests) == before and writer.renderer.cached_bytes <= writer.renderer.cache_bytes
        finally:
            writer.close()
        tiny_cache = PageRenderer(options, cache_bytes=100)
        try:
            assert tiny_cache.render({**rows[small], "source_uri": f"s3://sources/{small}"})[1] == "rendered"
            assert tiny_cache.cached_bytes == 0
        finally:
            tiny_cache.close()
