"""THROUGHPUT-ONLY models: a registry model's real architecture with random weights, built offline.

``model.random_weights=true`` makes the pipeline embed with the full-size architecture of a registered model
(ColQwen2.5 3B, ColQwen2 2B, ColPali 3B, ColSmol 256M/500M) without its checkpoint: the model is instantiated
from the architecture config kept in the repository (``pipelines/models/architectures/<name>.json``, the
backbone's published ``config.json`` plus the image processor settings the checkpoint loads with) and its
weights are drawn at random, on the device, in the run's dtype. Everything downstream is the production code:
the same processor class (built in code around a byte-level BPE with the family's special tokens, see
:func:`pipelines.models.tiny.qwen_tokenizer` / :func:`~pipelines.models.tiny.byte_level_tokenizer`), the same
preprocessing, micro-batching and forward passes. A page costs what it costs with the real checkpoint: the
same image tokens, layers and widths (only the prompt's few text tokens may split differently).

Its vectors are noise: an index built with it is labelled a test model (``is_test_model``) and must only be
used to measure speed and memory. The config hash records ``random_weights`` so such vectors never mix with a
real model's.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import uuid
from functools import lru_cache
from typing import Any

from pipelines.models import registry

ARCHITECTURES = pathlib.Path(__file__).parent / "architectures"
#: Written last into a built processor directory: its presence means "complete".
MARKER_NAME = ".complete"
_RECIPE_VERSION = 1


def available() -> list[str]:
    """Registry names with an architecture config in the repository."""
    return sorted(path.stem for path in ARCHITECTURES.glob("*.json"))


@lru_cache(maxsize=8)
def architecture(name: str) -> dict[str, Any]:
    """The architecture file of registry model ``name``; ``ValueError`` naming the available ones."""
    path = ARCHITECTURES / f"{name}.json"
    if not path.is_file():
        msg = (
            f"model.random_weights=true needs an architecture config for {name!r} in {ARCHITECTURES}; "
            f"available: {', '.join(available())}"
        )
        raise ValueError(msg)
    return json.loads(path.read_text())


def _image_processor(arch: dict[str, Any]):
    import transformers

    spec = arch["image_processor"]
    return getattr(transformers, spec["class"])(**spec["kwargs"])


def build_processor(spec: registry.ModelSpec):
    """The family's processor class around an offline tokenizer, with the checkpoint's image settings."""
    from pipelines.models import tiny
    from pipelines.models.colpali import model_classes

    arch = architecture(spec.name)
    _, processor_cls = model_classes(spec.family, spec.model_class, spec.processor_class)
    image_processor = _image_processor(arch)
    kind = arch["tokenizer"]
    if kind == "qwen":
        from transformers.models.qwen2_vl import Qwen2VLVideoProcessor

        patches = ("patch_size", "merge_size", "temporal_patch_size")
        video = Qwen2VLVideoProcessor(**{k: v for k, v in arch["image_processor"]["kwargs"].items() if k in patches})
        return processor_cls(image_processor=image_processor, tokenizer=tiny.qwen_tokenizer(), video_processor=video)
    if kind == "gemma":
        return processor_cls(image_processor=image_processor, tokenizer=tiny.gemma_tokenizer())
    if kind == "smollm":
        tokenizer = tiny.smollm_tokenizer()
        return processor_cls(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=arch["image_seq_len"])
    msg = f"architecture {spec.name!r}: unknown tokenizer kind {kind!r}"
    raise ValueError(msg)


def ensure_processor_dir(spec: registry.ModelSpec, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """``<cache>/random-weights-<name>``: the processor saved with ``save_pretrained``, built once (atomically:
    a staging directory renamed into place), so CPU workers load it with ``from_pretrained`` like any other."""
    cache = pathlib.Path(cache_dir) if cache_dir else registry.default_cache_dir()
    out = cache / f"random-weights-{spec.name}"
    if (out / MARKER_NAME).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        build_processor(spec).save_pretrained(str(staging))
        (staging / "THROUGHPUT_ONLY_README.md").write_text(
            f"# RANDOM WEIGHTS - THROUGHPUT ONLY\n\nProcessor of `{spec.name}`'s architecture "
            f"(pipelines/models/architectures/{spec.name}.json), tokenizer built offline. "
            "Models built with it have random weights: their vectors are meaningless.\n"
        )
        marker = {"name": spec.name, "recipe_version": _RECIPE_VERSION, "random_weights": True}
        (staging / MARKER_NAME).write_text(json.dumps(marker) + "\n")
        try:
            os.rename(staging, out)
        except OSError:
            if not (out / MARKER_NAME).is_file():  # someone else's complete build won the race: keep it
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    return out


def _token_ids(kind: str, processor) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(top-level, text_config)`` config values naming the offline tokenizer's ids of the family's tokens."""
    tokenizer = processor.tokenizer
    text = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if kind == "qwen":
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")}
        top = {
            "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
            "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        }
        return top, {**text, "bos_token_id": tokenizer.pad_token_id}
    text["bos_token_id"] = tokenizer.bos_token_id
    if kind == "gemma":
        return {"image_token_index": processor.image_token_id, "pad_token_id": tokenizer.pad_token_id}, text
    return {"image_token_id": processor.image_token_id, "pad_token_id": tokenizer.pad_token_id}, text


def model_config(spec: registry.ModelSpec, processor):
    """The architecture's transformers config, its token ids pointing at ``processor``'s tokenizer."""
    import transformers

    arch = architecture(spec.name)
    top, text = _token_ids(arch["tokenizer"], processor)
    values = json.loads(json.dumps(arch["config"]))  # a deep copy
    values["text_config"].update(text)
    values.update(top)
    return getattr(transformers, arch["config_class"])(**values)


def build_model(spec: registry.ModelSpec, processor, device: str = "auto", dtype: str = "auto", attn: str = "auto"):
    """The full-size model with random weights, created directly on ``device`` in the run's dtype (eval mode).

    Weights follow the architecture's own initialisation (normal, std ``initializer_range``); the pad token's
    embedding row is made non-zero as in a trained checkpoint (a zero row left-padded through every layer
    turns into NaN at colpali-engine's unit-norm projection).
    """
    import torch

    from pipelines.models import tiny
    from pipelines.models.colpali import model_classes

    model_cls, _ = model_classes(spec.family, spec.model_class, spec.processor_class)
    device = registry.pick_device(device)
    torch_dtype = registry.pick_dtype(device, dtype)
    config = model_config(spec, processor)
    with torch.device(device):
        model = model_cls._from_config(
            config, dtype=torch_dtype, attn_implementation=registry.pick_attention(device, attn)
        )
    tiny.unzero_pad_row(model, processor.tokenizer.pad_token_id)
    return model.eval()
