"""Preprocessing on CPU workers, forward passes in the model's actor: same vectors as embedding in one place.

Also the throughput-only random-weights path (``model.random_weights``): the real architecture's processor,
token ids and model class from the repository's architecture file, at a shrunken width so it runs here.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from pipelines import schema
from pipelines.models import inputs, random_weights
from pipelines.models.registry import ModelConfig, get_spec
from pipelines.stages.embed import EmbedStage
from pipelines.stages.preprocess import PreprocessStage


def _png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x, y = int(rng.integers(0, width - 30)), int(rng.integers(0, height - 10))
        draw.rectangle([x, y, x + 28, y + 8], fill=(20, 20, int(rng.integers(0, 255))))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _pages(sizes: list[tuple[int, int]]) -> pa.Table:
    rows = [
        {"source_uri": f"file:///doc{i}.pdf", "page_number": 1, "image": _png(w, h, i), "image_width": w,
         "image_height": h}
        for i, (w, h) in enumerate(sizes)
    ]  # fmt: skip
    rows.append({"source_uri": "file:///broken.pdf", "page_number": 1, "image": b"not an image"})
    return schema.rows_to_table(rows)


@pytest.fixture(scope="module")
def stages(tiny_model_dir):
    # a token budget that splits the three pages into two forward passes
    model = ModelConfig(name="tiny", micro_batch_size=8, batch_tokens=600)
    embed = EmbedStage(model=model)
    embed.setup()
    return PreprocessStage(model=model), embed


def test_embedding_preprocessed_pages_equals_embedding_each_image_alone(stages):
    preprocess, embed = stages
    batch = _pages([(400, 520), (520, 400), (300, 390)])
    prepared = preprocess.apply(batch)
    assert prepared.column("n_tokens").to_pylist()[:3] == [
        inputs.n_tokens(inputs.decode(b)) for b in prepared.column("model_inputs").to_pylist()[:3]
    ]
    # the undecodable image is a preprocess error row; it never reaches the model
    assert prepared.column("error_type").to_pylist() == [None, None, None, "image_decode"]
    assert prepared.column("error_stage").to_pylist()[3] == "preprocess"

    out = embed.apply(prepared)
    assert out.column("model_inputs").null_count == out.num_rows  # megabytes per page, dropped after use
    encoder = embed.encoder
    for i, row in enumerate(out.to_pylist()[:3]):
        alone = encoder.embed_images([Image.open(io.BytesIO(batch.column("image")[i].as_py()))])[0]
        stored = schema.decode_embedding(row["embedding"], row["embedding_dim"]).astype(np.float32)
        assert stored.shape == alone.shape == (row["n_vectors"], 128)
        cos = (stored * alone).sum(1) / (np.linalg.norm(stored, axis=1) * np.linalg.norm(alone, axis=1))
        assert cos.min() >= 0.999

    # the stage on its own (no preprocess stage before it) preprocesses in the actor: the same vectors
    direct = embed.apply(batch)
    assert direct.column("error_type").to_pylist() == [None, None, None, "image_decode"]
    assert direct.column("error_stage").to_pylist()[3] == "embed"
    for a, b in zip(direct.column("embedding").to_pylist()[:3], out.column("embedding").to_pylist()[:3], strict=True):
        np.testing.assert_allclose(schema.decode_embedding(a, 128), schema.decode_embedding(b, 128), atol=2e-3)


def _shrunken(arch: dict) -> dict:
    """A repository architecture at test width (same processor, classes and token plumbing)."""
    arch = copy.deepcopy(arch)
    arch["config"]["text_config"].update(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    )  # fmt: skip
    arch["config"]["vision_config"].update(
        depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[0]
    )
    return arch


def test_random_weights_run_the_registry_architecture_through_the_same_stages(model_cache, monkeypatch):
    name = "colqwen2.5-v0.2"
    full = random_weights.architecture(name)
    assert full["config"]["text_config"]["num_hidden_layers"] == 36  # the real 3B layout is what is kept
    spec = get_spec(name)
    processor = random_weights.build_processor(spec)
    # the image processor is the checkpoint's: 768 visual tokens at most (the registry's budget)
    assert processor.image_processor.size["longest_edge"] == spec.max_pixels
    monkeypatch.setattr(random_weights, "architecture", lambda n, full=random_weights.architecture: _shrunken(full(n)))

    model = ModelConfig(name=name, random_weights=True, micro_batch_size=2)
    preprocess, embed = PreprocessStage(model=model), EmbedStage(model=model)
    out = embed.apply(preprocess.apply(_pages([(900, 1160), (1160, 900)])))  # above the budget: resized to it
    rows = out.to_pylist()
    assert [r["error_type"] for r in rows] == [None, None, "image_decode"]
    for row in rows[:2]:
        vectors = schema.decode_embedding(row["embedding"], row["embedding_dim"]).astype(np.float32)
        assert 700 < vectors.shape[0] == row["n_tokens"] <= 768 + 11  # up to 768 image tokens plus the prompt
        assert np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-2)
    assert embed.encoder.model.config.image_token_id == embed.encoder.processor.image_token_id


def test_random_weights_refuse_a_model_without_an_architecture_file():
    with pytest.raises(ValueError, match="architecture config"):
        EmbedStage(model=ModelConfig(name="tiny", random_weights=True))
