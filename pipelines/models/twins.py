"""Tiny random-weight TEST twins of every architecture family in the registry, built fully offline.

Each twin is the family's real colpali-engine model class (``ColPali``, ``ColQwen2``, ``ColQwen2_5``,
``ColQwen3``, ``ColIdefics3``, ``ColModernVBert``) instantiated from a tiny config of the family's own
transformers architecture (PaliGemma, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Idefics3, ModernVBERT), with random
seeded weights, the family's processor built in code (a byte-level BPE trained on generated English, with
the special tokens the family's processor looks up) and a pixel budget small enough for CPU tests. It is
saved with ``save_pretrained`` and loaded back by the production code (``<ModelClass>.from_pretrained`` on
the directory), so loading, preprocessing (dynamic Qwen grids, Idefics3 tiles, PaliGemma's fixed grid),
padding, the output dimension (320 for ColQwen3) and every downstream stage are exercised without a hub.

Twins are NOT retrievers: their rankings are meaningless. ``tiny`` (ColQwen2) is built by
:mod:`pipelines.models.tiny`; the others here, with the same atomic, idempotent directory build
(:func:`pipelines.models.tiny.build_model_dir`).

Public API: ``TWINS`` (name -> :class:`Twin`), :func:`build_twin`, :func:`ensure_twin`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.models import tiny
from pipelines.models.colpali import model_classes

# Shared tiny sizes (cf. transformers' own tiny testers): text width 64 (2 layers), vision width 32 (2 blocks).
_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
_UNIT_NORM = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}

#: Qwen3-VL: 16-px patches merged 2x2, so one LLM token per 32x32 pixels; 256 tokens per image at most.
QWEN3_PIXELS_PER_TOKEN = 32 * 32
QWEN3_MAX_PIXELS = 256 * QWEN3_PIXELS_PER_TOKEN
QWEN3_MIN_PIXELS = 4 * QWEN3_PIXELS_PER_TOKEN
#: PaliGemma squashes every image to a square (here 112 px: 8x8 patches of 14 px); render so a letter
#: page's short side is about 112 px.
PALIGEMMA_IMAGE_SIZE = 112
PALIGEMMA_MAX_PIXELS = 112 * 145
#: Idefics3 / ModernVBERT: resize so the longest edge is 192 px, split into 64-px tiles (+ a global tile),
#: 16 tokens per tile (8x8 patches of 8 px, pixel-shuffled by 2).
SPLIT_LONGEST_EDGE = 192
SPLIT_TILE = 64
SPLIT_TOKENS_PER_TILE = 16
SPLIT_MAX_PIXELS = 192 * 148
_RECIPE_VERSION = 1


@dataclass(frozen=True)
class Twin:
    """One family's test twin: what it is, its budget and output width, and how to build it."""

    name: str  # the registry name
    architecture: str  # colpali-engine class (transformers architecture)
    max_pixels: int
    dim: int
    make: Callable[[int], tuple[Any, Any]]  # seed -> (model, processor)

    @property
    def dirname(self) -> str:
        """Its directory under the cache dir (``tiny`` keeps the name it always had)."""
        return tiny.TINY_MODEL_DIRNAME if self.name == tiny.TINY_MODEL_NAME else f"{self.name}-test-model"


def _seeded(build: Callable[[], Any], seed: int):
    """``build()`` under a private torch RNG seeded with ``seed``; float32, eval mode."""
    import torch

    # fork_rng: seed deterministically without clobbering the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().to(torch.float32).eval()


def _qwen_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tiny.QWEN2_VL_SPECIAL_TOKENS}


def _qwen_text_config(tokenizer, ids: dict[str, int], **extra) -> dict[str, Any]:
    return {
        **_TEXT,
        "vocab_size": len(tokenizer),
        "num_key_value_heads": 1,  # < heads: grouped-query attention, as in the real models
        "max_position_embeddings": 4096,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "use_cache": False,
        **extra,
    }


def _qwen_token_ids(ids: dict[str, int]) -> dict[str, int]:
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _make_colqwen2_5(seed: int):
    ColQwen2_5, ColQwen2_5_Processor = model_classes("qwen2_5", "ColQwen2_5", "ColQwen2_5_Processor")
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = tiny.qwen_tokenizer()
    ids = _qwen_ids(tokenizer)
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 6, 6]}
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tokenizer, ids, rope_parameters=rope),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": _TEXT["hidden_size"],  # the merger projects straight into the LM width
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,  # 2x2 merged tokens per attention window
            "fullatt_block_indexes": [1],
        },
        tie_word_embeddings=False,
        **_qwen_token_ids(ids),
    )

    def build():
        model = ColQwen2_5(config)
        tiny.unzero_pad_row(model, ids["<|endoftext|>"])
        return model

    common = {
        "min_pixels": tiny.TINY_MIN_PIXELS,
        "max_pixels": tiny.TINY_MAX_PIXELS,
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
    }
    processor = ColQwen2_5_Processor(
        image_processor=Qwen2VLImageProcessor(**common),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**common),
    )
    return _seeded(build, seed), processor


def _make_colqwen3(seed: int):
    ColQwen3, ColQwen3Processor = model_classes("qwen3", "ColQwen3", "ColQwen3Processor")
    from transformers import Qwen3VLConfig
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl import Qwen3VLVideoProcessor

    tokenizer = tiny.qwen_tokenizer()
    ids = _qwen_ids(tokenizer)
    # head_dim 32: the interleaved multimodal-rope sections (t, h, w) must sum to head_dim / 2.
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 6, 6], "mrope_interleaved": True}
    config = Qwen3VLConfig(
        text_config=_qwen_text_config(tokenizer, ids, head_dim=32, rope_parameters=rope),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": _TEXT["hidden_size"],
            "num_position_embeddings": 64,  # an 8x8 learnt grid, interpolated to each image's patch grid
            "deepstack_visual_indexes": [1],
        },
        tie_word_embeddings=False,
        **_qwen_token_ids(ids),
    )

    def build():
        model = ColQwen3(config)  # colpali-engine fixes the projection at 320 dimensions
        tiny.unzero_pad_row(model, ids["<|endoftext|>"])
        return model

    common = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
    image_processor = Qwen2VLImageProcessor(min_pixels=QWEN3_MIN_PIXELS, max_pixels=QWEN3_MAX_PIXELS, **common)
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": QWEN3_MAX_PIXELS}, **common
    )
    processor = ColQwen3Processor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor
    )
    return _seeded(build, seed), processor


def _make_colpali(seed: int):
    ColPali, ColPaliProcessor = model_classes("paligemma", "ColPali", "ColPaliProcessor")
    from transformers import PaliGemmaConfig, SiglipImageProcessor

    tokenizer = tiny.gemma_tokenizer()
    patches = (PALIGEMMA_IMAGE_SIZE // 14) ** 2
    image_processor = SiglipImageProcessor(
        size={"height": PALIGEMMA_IMAGE_SIZE, "width": PALIGEMMA_IMAGE_SIZE}, image_seq_length=patches, **_UNIT_NORM
    )
    # PaliGemma's processor adds <image> and its 1,152 <loc>/<seg> tokens to the tokenizer: size the vocab after.
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    tokenizer = processor.tokenizer
    config = PaliGemmaConfig(
        text_config={
            **_TEXT,
            "hidden_size": 32,
            "intermediate_size": 64,
            "model_type": "gemma",
            "vocab_size": len(tokenizer),
            "num_key_value_heads": 1,
            "head_dim": 16,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            **_VISION,
            "model_type": "siglip_vision_model",
            "image_size": PALIGEMMA_IMAGE_SIZE,
            "patch_size": 14,
            "projection_dim": 32,
        },
        image_token_index=processor.image_token_id,
        vocab_size=len(tokenizer),
        projection_dim=32,
        hidden_size=32,
        pad_token_id=tokenizer.pad_token_id,
    )

    def build():
        model = ColPali(config)
        tiny.unzero_pad_row(model, tokenizer.pad_token_id)  # <pad> is also ColPali's query-augmentation token
        return model

    return _seeded(build, seed), processor


def _split_image_processor():
    from transformers import Idefics3ImageProcessor

    return Idefics3ImageProcessor(
        size={"longest_edge": SPLIT_LONGEST_EDGE},
        max_image_size={"longest_edge": SPLIT_TILE},
        do_image_splitting=True,
        **_UNIT_NORM,
    )


# One 64-px tile: 8x8 patches of 8 px, pixel-shuffled 2x2 -> 16 tokens.
_SPLIT_VISION = {**_VISION, "image_size": SPLIT_TILE, "patch_size": 8}


def _make_colsmol(seed: int):
    ColIdefics3, ColIdefics3Processor = model_classes("idefics3", "ColIdefics3", "ColIdefics3Processor")
    from transformers import Idefics3Config

    tokenizer = tiny.smollm_tokenizer()
    processor = ColIdefics3Processor(
        image_processor=_split_image_processor(), tokenizer=tokenizer, image_seq_len=SPLIT_TOKENS_PER_TILE
    )
    tokenizer = processor.tokenizer
    config = Idefics3Config(
        vision_config=_SPLIT_VISION,
        text_config={
            **_TEXT,
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "num_key_value_heads": 1,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        image_token_id=processor.image_token_id,
        scale_factor=2,
        pad_token_id=tokenizer.pad_token_id,
    )

    def build():
        model = ColIdefics3(config)
        tiny.unzero_pad_row(model, tokenizer.pad_token_id)
        return model

    return _seeded(build, seed), processor


def _make_colmodernvbert(seed: int):
    ColModernVBert, ColModernVBertProcessor = model_classes("modernvbert", "ColModernVBert", "ColModernVBertProcessor")
    from transformers import ModernVBertConfig

    tokenizer = tiny.byte_level_tokenizer(
        [*tiny.IDEFICS3_SPECIAL_TOKENS, "<|begin_of_text|>"],
        bos_token="<|begin_of_text|>",
        eos_token="<end_of_utterance>",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        padding_side="left",
    )
    processor = ColModernVBertProcessor(
        image_processor=_split_image_processor(), tokenizer=tokenizer, image_seq_len=SPLIT_TOKENS_PER_TILE
    )
    tokenizer = processor.tokenizer
    config = ModernVBertConfig(
        vision_config={**_SPLIT_VISION, "model_type": "siglip_vision_model"},
        text_config={
            **_TEXT,
            "model_type": "modernbert",
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "global_attn_every_n_layers": 1,  # every layer attends globally: no sliding window at tiny sizes
            "local_attention": 64,
        },
        image_token_id=processor.image_token_id,
        pixel_shuffle_factor=2,
    )

    def build():
        model = ColModernVBert(config)
        tiny.unzero_pad_row(model, tokenizer.pad_token_id)
        return model

    return _seeded(build, seed), processor


TWINS: dict[str, Twin] = {
    twin.name: twin
    for twin in [
        Twin("tiny", "ColQwen2 (Qwen2-VL)", tiny.TINY_MAX_PIXELS, 128, tiny.make_colqwen2),
        Twin("tiny-colqwen2.5", "ColQwen2_5 (Qwen2.5-VL)", tiny.TINY_MAX_PIXELS, 128, _make_colqwen2_5),
        Twin("tiny-colqwen3", "ColQwen3 (Qwen3-VL)", QWEN3_MAX_PIXELS, 320, _make_colqwen3),
        Twin("tiny-colpali", "ColPali (PaliGemma)", PALIGEMMA_MAX_PIXELS, 128, _make_colpali),
        Twin("tiny-colsmol", "ColIdefics3 (Idefics3)", SPLIT_MAX_PIXELS, 128, _make_colsmol),
        Twin("tiny-colmodernvbert", "ColModernVBert (ModernVBERT)", SPLIT_MAX_PIXELS, 128, _make_colmodernvbert),
    ]
}


def _readme(twin: Twin, seed: int) -> str:
    return (
        "# RANDOM-WEIGHT TEST MODEL - NOT A RETRIEVER\n\n"
        f"Built offline by `pipelines.models.twins.build_twin({twin.name!r}, seed={seed})` "
        f"(recipe v{_RECIPE_VERSION}).\n\n"
        f"- Architecture: `{twin.architecture}`, tiny (2 text layers of width 64, 2 vision blocks of width 32), "
        f"{twin.dim}-d multi-vector output.\n"
        "- Weights: random (seeded). Scores and rankings produced with it are meaningless.\n"
        "- Tokenizer: byte-level BPE trained on generated English, with the family's special tokens.\n"
        f"- Image budget: {twin.max_pixels} pixels.\n\n"
        "It exists so that the production loading path (`<ModelClass>.from_pretrained`, "
        "`<ProcessorClass>.from_pretrained`) of this family can be tested without network access.\n"
    )


def build_twin(name: str, out_dir: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Build the test twin ``name`` into ``out_dir`` (see :func:`pipelines.models.tiny.build_model_dir` for the
    deterministic, idempotent, atomic contract) and return its path."""
    if name == tiny.TINY_MODEL_NAME:
        return tiny.build_tiny_colqwen2(out_dir, seed)
    twin = _twin(name)
    return tiny.build_model_dir(
        out_dir,
        seed,
        name=name,
        make=twin.make,
        readme=lambda s: _readme(twin, s),
        recipe_version=_RECIPE_VERSION,
    )


def ensure_twin(name: str, cache_dir: str | os.PathLike) -> pathlib.Path:
    """``cache_dir/<twin dir>``, built (seed 0) if not already complete; safe to call concurrently."""
    return build_twin(name, pathlib.Path(cache_dir) / _twin(name).dirname, seed=0)


def _twin(name: str) -> Twin:
    if name not in TWINS:
        msg = f"no test twin named {name!r}; twins: {', '.join(TWINS)}"
        raise ValueError(msg)
    return TWINS[name]
