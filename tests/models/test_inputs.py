"""Model inputs between the CPU stage and the model: per-page encoding, collation, token-budget micro-batches."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines.models import inputs


def _page(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rng.integers(0, width - 20), rng.integers(0, height - 8)
        draw.rectangle([x, y, x + 18, y + 6], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from pipelines.models.encoder import page_processor

    return page_processor("tiny")


def test_pages_preprocessed_alone_and_collated_equal_the_processors_own_batch(processor):
    # different sizes and orientations: different patch grids and token counts, so padding is exercised
    images = [_page(400, 520, 0), _page(520, 400, 1), _page(300, 300, 2)]
    items = [processor.page_inputs(image) for image in images]
    assert len({inputs.n_tokens(item) for item in items}) == 2  # 400x520 and 520x400: same count, other grid

    batch = processor.processor.process_images(images)
    collated = inputs.collate(items, processor.pad_token_id, processor.padding_side)
    assert set(collated) == set(batch)
    for key, expected in batch.items():
        expected = expected.numpy()
        assert collated[key].shape == expected.shape, key
        if np.issubdtype(expected.dtype, np.floating):  # pixel values travel as float16
            np.testing.assert_allclose(collated[key].astype(np.float32), expected, atol=2e-3, rtol=1e-3)
        else:
            np.testing.assert_array_equal(collated[key], expected, err_msg=key)


def test_encoded_inputs_round_trip_in_float16(processor):
    item = processor.page_inputs(_page(380, 500, 3))
    back = inputs.decode(inputs.encode(item))
    assert set(back) == set(item)
    assert back["pixel_values"].dtype == np.float16
    for key in item:
        np.testing.assert_array_equal(back[key], item[key])


def test_token_budget_batches_cover_every_page_once_within_budget():
    lengths = [263, 900, 120, 263, 500, 2000, 64, 263]
    batches = inputs.plan_batches(lengths, max_pages=4, max_tokens=1100)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert len(batch) <= 4
        assert padded <= 1100 or len(batch) == 1  # a page over the budget gets a batch of its own
    assert [lengths[i] for i in batches[0]] == [64, 120, 263, 263]  # similar lengths share a pass
    assert [len(b) for b in inputs.plan_batches(lengths, max_pages=3)] == [3, 3, 2]  # no budget: pages only
    with pytest.raises(ValueError, match="must be >= 1"):
        inputs.plan_batches(lengths, max_pages=4, max_tokens=0)
