"""Tests for the tiny random-weight ColQwen2 TEST model (pipelines/models/tiny.py).

The model is loaded exactly as production loads real checkpoints (``from_pretrained`` on a local directory) with
the Hugging Face hub forced offline, so any attempt to reach the network fails the test instead of hanging.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.models import tiny

colpali_models = pytest.importorskip("colpali_engine.models")
ColQwen2 = colpali_models.ColQwen2
ColQwen2Processor = colpali_models.ColQwen2Processor

LETTER = (612, 792)  # (width, height): a US-letter page at 72 dpi


def _force_offline(mp: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    # huggingface_hub reads the env var once at import time, which has already happened.
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _load(path):
    processor = ColQwen2Processor.from_pretrained(str(path))
    model = ColQwen2.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, processor


def _noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _embed(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch)


def _expected_image_tokens(processor, image: Image.Image) -> int:
    """Image tokens predicted from the pixel budget: (H/28) * (W/28) after smart_resize."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    size = processor.image_processor.size
    h, w = smart_resize(
        image.height, image.width, factor=28, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]
    )
    assert h * w <= tiny.TINY_MAX_PIXELS
    return (h // 28) * (w // 28)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        _force_offline(mp)
        path = tiny.build_tiny_colqwen2(tmp_path_factory.mktemp("tiny") / "model", seed=0)
        model, processor = _load(path)
        yield path, model, processor


@pytest.fixture(scope="module")
def images():
    return [_noise_image(*LETTER, seed=1), _noise_image(300, 200, seed=2), _noise_image(1000, 400, seed=3)]


def test_build_layout_marker_and_size(built):
    path, _, _ = built
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", tiny.README_NAME):
        assert (path / name).is_file(), name
    assert "RANDOM-WEIGHT TEST MODEL" in (path / tiny.README_NAME).read_text()
    marker = json.loads((path / tiny.MARKER_NAME).read_text())
    assert marker["seed"] == 0
    assert marker["random_weights"] is True
    assert marker["name"] == tiny.TINY_MODEL_NAME == "tiny"
    assert sum(f.stat().st_size for f in path.iterdir()) < 20 * 1024 * 1024
    # No staging leftovers next to the published directory.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_config_and_tokenizer_agree(built):
    _, model, processor = built
    tok = processor.tokenizer
    cfg = model.config
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny.QWEN2_VL_SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(ids)
    assert tok.unk_token_id not in ids.values()  # every special token is really in the vocab
    assert cfg.image_token_id == ids["<|image_pad|>"] == processor.image_token_id
    assert cfg.video_token_id == ids["<|video_pad|>"] == processor.video_token_id
    assert cfg.vision_start_token_id == ids["<|vision_start|>"]
    assert cfg.vision_end_token_id == ids["<|vision_end|>"]
    assert cfg.text_config.pad_token_id == tok.pad_token_id == ids["<|endoftext|>"]
    assert cfg.text_config.eos_token_id == tok.eos_token_id == ids["<|im_end|>"]
    assert cfg.text_config.vocab_size == len(tok)
    assert tok.padding_side == "left"
    # Special tokens must survive the save/load round trip as single, unsplit tokens.
    assert tok.tokenize(processor.visual_prompt_prefix) == [
        "<|im_start|>",
        "user",
        "Ċ",
        "<|vision_start|>",
        "<|image_pad|>",
        "<|vision_end|>",
        "Describe",
        "Ġthe",
        "Ġimage",
        ".",
        "<|im_end|>",
        "<|endoftext|>",
    ]
    # Byte-level: arbitrary text round-trips.
    text = "What was the revenue in 2023? Crème brûlée, 日本"
    assert tok.decode(tok(text).input_ids) == text
    assert model.dim == 128
    assert processor.image_processor.size["longest_edge"] == tiny.TINY_MAX_PIXELS
    assert processor.image_processor.size["shortest_edge"] == tiny.TINY_MIN_PIXELS


def test_image_embeddings_shape_norms_and_token_counts(built, images):
    _, model, processor = built
    batch = processor.process_images(images)
    out = _embed(model, batch)
    mask = batch["attention_mask"].bool()
    assert out.shape == (len(images), batch["input_ids"].shape[1], 128)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    norms = out.norm(dim=-1)
    torch.testing.assert_close(norms[mask], torch.ones_like(norms[mask]), atol=1e-5, rtol=0)
    assert (out[~mask] == 0).all()
    assert (~mask).any()  # the batch really is padded (on the left)
    assert mask[:, -1].all()

    n_prompt_tokens = len(processor.tokenizer.tokenize(processor.visual_prompt_prefix)) - 1
    for i, image in enumerate(images):
        n_image_tokens = int((batch["input_ids"][i] == processor.image_token_id).sum())
        expected = _expected_image_tokens(processor, image)
        assert n_image_tokens == expected
        assert n_image_tokens == int(batch["image_grid_thw"][i].prod()) // 4
        n_x, n_y = processor.get_n_patches((image.width, image.height), model.spatial_merge_size)
        assert n_x * n_y == expected
        assert int(mask[i].sum()) == expected + n_prompt_tokens

    # Letter page: 792x612 -> smart_resize -> 504x392 -> 18x14 = 252 image tokens, plus the 11 prompt tokens.
    assert _expected_image_tokens(processor, images[0]) == 252
    assert int(mask[0].sum()) == 263


def test_batch_matches_single_image(built, images):
    _, model, processor = built
    batch = processor.process_images(images[1:])  # different sizes -> the smaller one is left-padded
    out = _embed(model, batch)
    for i, image in enumerate(images[1:]):
        single = processor.process_images([image])
        alone = _embed(model, single)[0][single["attention_mask"][0].bool()]
        in_batch = out[i][batch["attention_mask"][i].bool()]
        assert in_batch.shape == alone.shape
        cos = torch.nn.functional.cosine_similarity(in_batch, alone, dim=-1)
        assert cos.min() >= 0.999, f"image {i}: min cosine {cos.min():.6f}"


def test_query_embeddings_and_scoring(built, images):
    _, model, processor = built
    q1 = processor.process_queries(["what is the revenue in 2023?"])
    e1 = _embed(model, q1)
    assert e1.shape == (1, q1["input_ids"].shape[1], 128)
    torch.testing.assert_close(e1.norm(dim=-1), torch.ones(e1.shape[:2]), atol=1e-5, rtol=0)

    qs = processor.process_queries(["what is the revenue in 2023?", "show the table"])
    eq = _embed(model, qs)
    assert torch.isfinite(eq).all()
    # The long query is unpadded in the batch; the short one's left padding must not change its vectors.
    short = processor.process_queries(["show the table"])
    alone = _embed(model, short)[0]
    cos = torch.nn.functional.cosine_similarity(eq[1][qs["attention_mask"][1].bool()], alone, dim=-1)
    assert cos.min() >= 0.999

    docs = _embed(model, processor.process_images(images))
    scores = processor.score_multi_vector(list(eq), list(docs))
    assert scores.shape == (2, len(images))
    assert torch.isfinite(scores).all()
    # MaxSim of unit vectors: each query token contributes at most 1.
    n_query_tokens = qs["attention_mask"].sum(dim=1, keepdim=True)
    assert (scores <= n_query_tokens + 1e-4).all()


def test_deterministic_given_seed(built, tmp_path, images):
    from safetensors.torch import load_file

    path0, model0, processor0 = built
    path0b = tiny.build_tiny_colqwen2(tmp_path / "again", seed=0)
    path1 = tiny.build_tiny_colqwen2(tmp_path / "seed1", seed=1)
    w0, w0b, w1 = (load_file(str(p / "model.safetensors")) for p in (path0, path0b, path1))
    assert w0.keys() == w0b.keys() == w1.keys()
    assert all(torch.equal(w0[k], w0b[k]) for k in w0)
    assert not all(torch.equal(w0[k], w1[k]) for k in w0)
    # The tokenizer does not depend on the seed.
    assert (path0 / "tokenizer.json").read_bytes() == (path1 / "tokenizer.json").read_bytes()

    with pytest.MonkeyPatch.context() as mp:
        _force_offline(mp)
        model0b, processor0b = _load(path0b)
    batch = processor0.process_images(images[:1])
    torch.testing.assert_close(_embed(model0, batch), _embed(model0b, processor0b.process_images(images[:1])))


def test_build_leaves_global_rng_untouched(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.build_tiny_colqwen2(tmp_path / "m", seed=7)
    torch.testing.assert_close(torch.rand(3), expected)


def test_idempotent_second_call_does_not_rebuild(built):
    path, _, _ = built
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert tiny.build_tiny_colqwen2(path, seed=0) == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    with pytest.raises(ValueError, match="seed"):
        tiny.build_tiny_colqwen2(path, seed=1)


def test_refuses_foreign_nonempty_directory(tmp_path):
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "precious.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        tiny.build_tiny_colqwen2(target)
    assert (target / "precious.txt").read_text() == "not ours"


def test_ensure_tiny_model_builds_once(tmp_path):
    cache = tmp_path / "cache"  # does not exist yet
    path = tiny.ensure_tiny_model(cache)
    assert path == cache / tiny.TINY_MODEL_DIRNAME
    assert (path / tiny.MARKER_NAME).is_file()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure_tiny_model(cache) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime


def test_ensure_tiny_model_loses_rename_race_gracefully(tmp_path, monkeypatch, built):
    """Simulate another process publishing its build while ours is in progress: ours must yield to the winner."""
    winner_src, _, _ = built
    cache = tmp_path / "cache"
    target = cache / tiny.TINY_MODEL_DIRNAME
    real_build_model = tiny._build_model

    def build_model_while_other_process_wins(tokenizer, seed):
        shutil.copytree(winner_src, target)
        os.utime(target / "model.safetensors", ns=(0, 0))  # tag the winner's files
        return real_build_model(tokenizer, seed)

    monkeypatch.setattr(tiny, "_build_model", build_model_while_other_process_wins)
    assert tiny.ensure_tiny_model(cache) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == 0  # the winner's build was kept
    assert [p.name for p in cache.iterdir()] == [tiny.TINY_MODEL_DIRNAME]  # our staging dir was cleaned up


def test_budget_constants():
    assert tiny.TINY_MAX_PIXELS == 256 * 28 * 28
    assert tiny.TINY_MIN_PIXELS == 4 * 28 * 28
    assert math.isqrt(tiny.TINY_MIN_PIXELS) ** 2 == tiny.TINY_MIN_PIXELS  # 56 * 56, Qwen2-VL's default
