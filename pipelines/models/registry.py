"""Model registry: short names → how to load the model and what pixel budget it consumes.

Every model, the random-weight ``tiny`` TEST model included, is loaded by the same code:
``ModelClass.from_pretrained(name_or_path)`` and ``ProcessorClass.from_pretrained(name_or_path)``.
A real checkpoint name resolves through the Hugging Face hub (or its cache); ``tiny`` resolves to a
local directory that :mod:`pipelines.models.tiny` builds offline on first use.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.ids import affects_vectors


@dataclass
class ModelConfig:
    """The ``model`` config node: which registered model embeds pages, and where it runs.

    ``micro_batch_size`` is pages per forward pass, independent of the Ray batch size (pages per
    actor call). Fields marked :func:`~pipelines.ids.affects_vectors` are part of the config hash.
    """

    name: str = field(default="colqwen2.5-v0.2", metadata=affects_vectors(key="model"))
    #: Local directory or hub id to load instead of the registry's (e.g. a pre-downloaded checkpoint).
    name_or_path: str | None = field(default=None, metadata=affects_vectors())
    #: Where locally built models (the tiny test model) are cached; None = $PIPELINES_CACHE_DIR or ~/.cache.
    cache_dir: str | None = None
    device: str = field(default="auto", metadata=affects_vectors())  # auto = cuda if available else cpu
    dtype: str = field(default="auto", metadata=affects_vectors())  # auto = bfloat16 on GPU, float32 on CPU
    micro_batch_size: int = 4

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1:
            msg = f"model.micro_batch_size must be >= 1, got {self.micro_batch_size}"
            raise ValueError(msg)


@dataclass(frozen=True)
class ModelSpec:
    """How to load one model family checkpoint.

    ``max_pixels`` is the page-image pixel budget the model's processor consumes; rasterizing above
    it only costs time (the processor downsamples anyway). ``is_test_model`` marks random weights.
    """

    name: str
    hub_id: str | None
    family: str  # colpali-engine's subpackage of the model family (colpali_engine.models.<family>)
    model_class: str
    processor_class: str
    max_pixels: int
    is_test_model: bool = False


_QWEN_BUDGET = 768 * 28 * 28  # colqwen checkpoints are trained with max_num_visual_tokens=768
# ColPali squashes every page to 448x448; render so that the short side of a letter page is ~448 px.
_COLPALI_BUDGET = 448 * 580
# SmolVLM tiles the image into 512 px tiles (longest edge 1536 px in the colSmol processors).
_COLSMOL_BUDGET = 1536 * 1188

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("colpali-v1.3", "vidore/colpali-v1.3", "paligemma", "ColPali", "ColPaliProcessor", _COLPALI_BUDGET),
        ModelSpec("colqwen2-v1.0", "vidore/colqwen2-v1.0", "qwen2", "ColQwen2", "ColQwen2Processor", _QWEN_BUDGET),
        ModelSpec(
            "colqwen2.5-v0.2", "vidore/colqwen2.5-v0.2", "qwen2_5", "ColQwen2_5", "ColQwen2_5_Processor", _QWEN_BUDGET
        ),
        ModelSpec(
            "colsmol-256m", "vidore/colSmol-256M", "idefics3", "ColIdefics3", "ColIdefics3Processor", _COLSMOL_BUDGET
        ),
        ModelSpec(
            "colsmol-500m", "vidore/colSmol-500M", "idefics3", "ColIdefics3", "ColIdefics3Processor", _COLSMOL_BUDGET
        ),
        # Random weights: proves the plumbing, ranks nothing meaningfully. Built offline on first use.
        ModelSpec("tiny", None, "qwen2", "ColQwen2", "ColQwen2Processor", 0, is_test_model=True),
    ]
}


def get_spec(name: str) -> ModelSpec:
    """Spec for a registered short name; raises ``ValueError`` listing the valid names."""
    if name not in MODELS:
        msg = f"unknown model {name!r}; set model.name to one of: {', '.join(MODELS)}"
        raise ValueError(msg)
    spec = MODELS[name]
    if spec.is_test_model:
        from pipelines.models import tiny

        spec = dataclasses.replace(spec, max_pixels=tiny.TINY_MAX_PIXELS)
    return spec


def default_cache_dir() -> Path:
    """Where locally built models live: ``$PIPELINES_CACHE_DIR`` or ``~/.cache/pdf-visual-index``."""
    return Path(os.environ.get("PIPELINES_CACHE_DIR", Path.home() / ".cache" / "pdf-visual-index"))


def resolve_name_or_path(spec: ModelSpec, name_or_path: str | None = None, cache_dir: str | None = None) -> str:
    """What to pass to ``from_pretrained``: an explicit override, the hub id, or the built test model."""
    if name_or_path:
        return name_or_path
    if spec.is_test_model:
        from pipelines.models import tiny

        return str(tiny.ensure_tiny_model(Path(cache_dir) if cache_dir else default_cache_dir()))
    assert spec.hub_id is not None
    return spec.hub_id


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(device: str, dtype: str = "auto"):
    """bf16 on GPU, fp32 on CPU (CPU bf16 matmuls are slow or emulated on most hosts)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_model(spec: ModelSpec, name_or_path: str, device: str = "auto", dtype: str = "auto"):
    """Load ``(model, processor)`` through ``from_pretrained``; the model is in eval mode on ``device``."""
    from pipelines.models.colpali import model_classes

    model_cls, processor_cls = model_classes(spec.family, spec.model_class, spec.processor_class)
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    model = model_cls.from_pretrained(name_or_path, dtype=torch_dtype, device_map=device).eval()
    processor = processor_cls.from_pretrained(name_or_path)
    return model, processor


def embeddings_to_rows(embeddings, attention_mask) -> list[np.ndarray]:
    """Split a padded ``(B, L, D)`` batch into per-item float32 arrays of their non-padding rows.

    colpali-engine multiplies every output by the attention mask, so padding rows are zeros that
    would otherwise be stored and scored; the mask, not the values, decides what is padding.
    """
    embeddings = embeddings.float().cpu().numpy()
    mask = attention_mask.bool().cpu().numpy()
    return [embeddings[i][mask[i]] for i in range(embeddings.shape[0])]
