"""Model registry: short names → how to load the model, its pixel budget, processor settings and vector width.

Every colpali-engine model, the random-weight TEST twins included, is loaded by the same code:
``ModelClass.from_pretrained(name_or_path)`` and ``ProcessorClass.from_pretrained(name_or_path, **kwargs)``.
A real checkpoint name resolves through the Hugging Face hub (or its cache); a twin (``tiny``,
``tiny-colqwen3``, ...: one per architecture family) resolves to a local directory that
:mod:`pipelines.models.twins` builds offline on first use. A checkpoint that ships its own modeling code
(``loader="remote_code"``, jina-embeddings-v4) is loaded the way its card says, with ``trust_remote_code``
(:mod:`pipelines.models.remote`), and only when the user says so (``model.trust_remote_code=true``, or
``trust_remote_code=True`` in Python): never by default for its family, never from an index's stored config.
Without it, or offline without its code, loading fails with a message saying what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.ids import affects_vectors
from pipelines.models import twins


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
    #: Padded tokens per forward pass (pages x longest page); null = ``micro_batch_size`` pages per pass.
    #: With a budget, ``micro_batch_size`` only caps the pages of one pass.
    batch_tokens: int | None = None
    #: auto = flash_attention_2 on GPU when installed, else sdpa; or any transformers attn_implementation.
    attn_implementation: str = "auto"
    #: THROUGHPUT ONLY: the registry model's real architecture (pipelines/models/architectures/) with random
    #: weights, built offline; its vectors are meaningless (see pipelines.models.random_weights).
    random_weights: bool = field(default=False, metadata=affects_vectors(omit_default=True))
    #: Run the modeling code a checkpoint ships (``loader="remote_code"`` models, e.g. jina-v4): only when the user
    #: sets it (``model.trust_remote_code=true``); no registry default and no index's stored config turns it on.
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1:
            msg = f"model.micro_batch_size must be >= 1, got {self.micro_batch_size}"
            raise ValueError(msg)
        if self.batch_tokens is not None and self.batch_tokens < 1:
            msg = f"model.batch_tokens must be >= 1 or null (micro_batch_size pages per pass), got {self.batch_tokens}"
            raise ValueError(msg)


#: How a checkpoint is loaded: colpali-engine's classes, or the checkpoint's own modeling code (trust_remote_code).
LOADERS = ("colpali", "remote_code")


@dataclass(frozen=True)
class ModelSpec:
    """How to load one registered checkpoint, and what it consumes and produces.

    ``max_pixels`` is the page-image pixel budget the model's processor consumes; rasterizing above it only
    costs time (the processor downsamples anyway). ``processor_kwargs`` are passed to the processor's
    ``from_pretrained`` (e.g. colpali-engine's ``max_num_visual_tokens``, which caps a Qwen processor at the
    budget the checkpoint was trained with whatever its saved config says). ``dim`` is the width of one
    multi-vector (the index records it; Vespa's tensor types follow it); ``single_vector_dim`` the width of
    the model's own single page vector, where it has one. ``loader`` is ``colpali`` (colpali-engine's
    ``<family>.<model_class>``) or ``remote_code`` (the checkpoint ships its own code, loaded with
    ``trust_remote_code``, see :mod:`pipelines.models.remote`). ``licence`` and ``card`` record where the
    figures come from. ``is_test_model`` marks random weights (a twin from :mod:`pipelines.models.twins`).
    """

    name: str
    hub_id: str | None
    family: str  # colpali-engine's subpackage of the model family (colpali_engine.models.<family>)
    model_class: str
    processor_class: str
    max_pixels: int
    dim: int
    backbone: str = ""
    processor_kwargs: tuple[tuple[str, Any], ...] = ()
    loader: str = "colpali"
    single_vector_dim: int | None = None
    licence: str = ""
    card: str = ""
    is_test_model: bool = False

    def __post_init__(self) -> None:
        if self.loader not in LOADERS:
            msg = f"model {self.name!r}: loader must be one of {LOADERS}, got {self.loader!r}"
            raise ValueError(msg)
        if self.dim < 8 or self.dim % 8:
            msg = f"model {self.name!r}: dim must be a positive multiple of 8 (binary vectors pack 8 bits a byte)"
            raise ValueError(msg)


# colqwen2/2.5 checkpoints are trained with max_num_visual_tokens=768 (colpali-engine's training configs); one
# token per 28x28 pixels (14-px patches merged 2x2).
_QWEN_TOKENS = 768
_QWEN_BUDGET = _QWEN_TOKENS * 28 * 28
# Qwen3-VL: 16-px patches merged 2x2, one token per 32x32 pixels; the tomoro cards load their processor with
# max_num_visual_tokens=1280.
_QWEN3_TOKENS = 1280
_QWEN3_BUDGET = _QWEN3_TOKENS * 32 * 32
# ColPali squashes every page to 448x448; render so that the short side of a letter page is ~448 px.
_COLPALI_BUDGET = 448 * 580
# SmolVLM tiles the image into 512 px tiles (longest edge 1536 px in the colSmol processors).
_COLSMOL_BUDGET = 1536 * 1188
# ModernVBERT splits like Idefics3 into 512-px tiles of 64 tokens; colpali-engine's processor assumes a longest
# edge of 2048 px when the checkpoint does not say (ColModernVBertProcessor.get_n_patches).
_MODERNVBERT_BUDGET = 2048 * 1583

_COLPALI_README = "https://github.com/illuin-tech/colpali (README: List of ColVision models)"


def _spec(name, hub_id, family, model_class, processor_class, max_pixels, dim, **kwargs) -> ModelSpec:
    kwargs["processor_kwargs"] = tuple(sorted(kwargs.get("processor_kwargs", {}).items()))
    return ModelSpec(name, hub_id, family, model_class, processor_class, max_pixels, dim, **kwargs)


def _twin_spec(name: str, family: str, model_class: str, processor_class: str) -> ModelSpec:
    twin = twins.TWINS[name]
    return _spec(
        name, None, family, model_class, processor_class, twin.max_pixels, twin.dim,
        backbone=f"tiny {twin.architecture}", licence="test model (random weights)", is_test_model=True,
    )  # fmt: skip


_QWEN2 = ("qwen2", "ColQwen2", "ColQwen2Processor")
_QWEN2_5 = ("qwen2_5", "ColQwen2_5", "ColQwen2_5_Processor")
_QWEN3 = ("qwen3", "ColQwen3", "ColQwen3Processor")
_PALIGEMMA = ("paligemma", "ColPali", "ColPaliProcessor")
_IDEFICS3 = ("idefics3", "ColIdefics3", "ColIdefics3Processor")
_MODERNVBERT = ("modernvbert", "ColModernVBert", "ColModernVBertProcessor")

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        _spec("colpali-v1.3", "vidore/colpali-v1.3", *_PALIGEMMA, _COLPALI_BUDGET, 128,
              backbone="PaliGemma-3B-448", licence="Gemma", card=_COLPALI_README),
        _spec("colqwen2-v1.0", "vidore/colqwen2-v1.0", *_QWEN2, _QWEN_BUDGET, 128,
              backbone="Qwen2-VL-2B", processor_kwargs={"max_num_visual_tokens": _QWEN_TOKENS},
              licence="Apache-2.0", card=_COLPALI_README),
        _spec("colqwen2.5-v0.2", "vidore/colqwen2.5-v0.2", *_QWEN2_5, _QWEN_BUDGET, 128,
              backbone="Qwen2.5-VL-3B", processor_kwargs={"max_num_visual_tokens": _QWEN_TOKENS},
              licence="Apache-2.0", card=_COLPALI_README),
        _spec("colsmol-256m", "vidore/colSmol-256M", *_IDEFICS3, _COLSMOL_BUDGET, 128,
              backbone="SmolVLM-256M (Idefics3)", licence="Apache-2.0", card=_COLPALI_README),
        _spec("colsmol-500m", "vidore/colSmol-500M", *_IDEFICS3, _COLSMOL_BUDGET, 128,
              backbone="SmolVLM-500M (Idefics3)", licence="Apache-2.0", card=_COLPALI_README),
        # colpali-engine >= 0.3.14 loads these with ColQwen3 (README: "currently supported"; 320-d projection).
        _spec("colqwen3-4b", "TomoroAI/tomoro-colqwen3-embed-4b", *_QWEN3, _QWEN3_BUDGET, 320,
              backbone="Qwen3-VL-4B", processor_kwargs={"max_num_visual_tokens": _QWEN3_TOKENS},
              licence="Apache-2.0", card="https://huggingface.co/TomoroAI/tomoro-colqwen3-embed-4b"),
        _spec("colqwen3-8b", "TomoroAI/tomoro-colqwen3-embed-8b", *_QWEN3, _QWEN3_BUDGET, 320,
              backbone="Qwen3-VL-8B", processor_kwargs={"max_num_visual_tokens": _QWEN3_TOKENS},
              licence="see card (not re-checked offline)",
              card="https://huggingface.co/TomoroAI/tomoro-colqwen3-embed-8b"),
        # ~250M parameters: CPU-viable (arXiv 2510.01149).
        _spec("colmodernvbert", "ModernVBERT/colmodernvbert", *_MODERNVBERT, _MODERNVBERT_BUDGET, 128,
              backbone="ModernVBERT-250M (ModernBERT + SigLIP2)", licence="MIT",
              card="https://huggingface.co/ModernVBERT/colmodernvbert"),
        # ColQwen2.5 architecture (the card's quick start loads it with ColQwen2_5 / ColQwen2_5_Processor).
        _spec("colnomic-7b", "nomic-ai/colnomic-embed-multimodal-7b", *_QWEN2_5, _QWEN_BUDGET, 128,
              backbone="Qwen2.5-VL-7B", processor_kwargs={"max_num_visual_tokens": _QWEN_TOKENS},
              licence="Apache-2.0", card="https://huggingface.co/nomic-ai/colnomic-embed-multimodal-7b"),
        _spec("colnomic-3b", "nomic-ai/colnomic-embed-multimodal-3b", *_QWEN2_5, _QWEN_BUDGET, 128,
              backbone="Qwen2.5-VL-3B", processor_kwargs={"max_num_visual_tokens": _QWEN_TOKENS},
              licence="base Qwen2.5-VL-3B: Qwen Research License (card metadata names none)",
              card="https://huggingface.co/nomic-ai/colnomic-embed-multimodal-3b"),
        # Ships its own modeling code (AutoModel + trust_remote_code, as its card says): 128-d multi-vectors
        # plus a 2048-d single vector (mean pooled). The card's licence line: "initially released under
        # cc-by-nc-4.0 due to an error. The correct license is the Qwen Research License".
        _spec("jina-v4", "jinaai/jina-embeddings-v4", "qwen2_5", "JinaEmbeddingsV4Model",
              "JinaEmbeddingsV4Processor", _QWEN_BUDGET, 128, backbone="Qwen2.5-VL-3B", loader="remote_code",
              single_vector_dim=2048, licence="Qwen Research License",
              card="https://huggingface.co/jinaai/jina-embeddings-v4"),
        # Random weights, one per architecture family: prove the plumbing, rank nothing. Built offline on first use.
        _twin_spec("tiny", *_QWEN2),
        _twin_spec("tiny-colqwen2.5", *_QWEN2_5),
        _twin_spec("tiny-colqwen3", *_QWEN3),
        _twin_spec("tiny-colpali", *_PALIGEMMA),
        _twin_spec("tiny-colsmol", *_IDEFICS3),
        _twin_spec("tiny-colmodernvbert", *_MODERNVBERT),
    ]
}  # fmt: skip


def get_spec(name: str) -> ModelSpec:
    """Spec for a registered short name; raises ``ValueError`` listing the valid names."""
    if name not in MODELS:
        msg = f"unknown model {name!r}; set model.name to one of: {', '.join(MODELS)}"
        raise ValueError(msg)
    return MODELS[name]


def default_cache_dir() -> Path:
    """Where locally built models live: ``$PIPELINES_CACHE_DIR`` or ``~/.cache/pdf-visual-index``."""
    return Path(os.environ.get("PIPELINES_CACHE_DIR", Path.home() / ".cache" / "pdf-visual-index"))


def resolve_name_or_path(spec: ModelSpec, name_or_path: str | None = None, cache_dir: str | None = None) -> str:
    """What to pass to ``from_pretrained``: an explicit override, the hub id, or the built test model."""
    if name_or_path:
        return name_or_path
    if spec.is_test_model:
        return str(twins.ensure_twin(spec.name, Path(cache_dir) if cache_dir else default_cache_dir()))
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


def pick_attention(device: str, attn_implementation: str = "auto") -> str:
    """``auto``: flash-attention 2 on a GPU when the ``flash_attn`` package is installed, else PyTorch SDPA."""
    if attn_implementation != "auto":
        return attn_implementation
    if device.startswith("cuda"):
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def load_model(
    spec: ModelSpec,
    name_or_path: str,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "auto",
    trust_remote_code: bool = False,
):
    """Load ``(model, processor)`` through ``from_pretrained``; the model is in eval mode on ``device``.

    A ``remote_code`` model is loaded with its own code (:mod:`pipelines.models.remote`), only with
    ``trust_remote_code`` (else a :class:`~pipelines.errors.ConfigError` saying to set
    ``model.trust_remote_code=true``); offline and not cached that raises
    :class:`~pipelines.models.remote.ModelUnavailableError` saying how to get it.
    """
    model = load_weights(spec, name_or_path, device, dtype, attn_implementation, trust_remote_code)
    return model, load_processor(spec, name_or_path, trust_remote_code)


def load_weights(
    spec: ModelSpec,
    name_or_path: str,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "auto",
    trust_remote_code: bool = False,
):
    """The model alone (see :func:`load_model`), for a caller that already holds the processor."""
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    attention = pick_attention(device, attn_implementation)
    if spec.loader == "remote_code":
        from pipelines.models import remote

        return remote.load_model(spec, name_or_path, torch_dtype, device, attention, trust_remote_code)
    from pipelines.models.colpali import model_classes

    model_cls, _ = model_classes(spec.family, spec.model_class, spec.processor_class)
    return model_cls.from_pretrained(
        name_or_path, dtype=torch_dtype, device_map=device, attn_implementation=attention
    ).eval()


def load_processor(spec: ModelSpec, name_or_path: str, trust_remote_code: bool = False):
    """The model's processor alone (tokenizer plus image processor), for the CPU preprocessing stage.

    ``spec.processor_kwargs`` (e.g. ``max_num_visual_tokens``) are applied on load, so the processor consumes the
    registry's budget whatever the checkpoint's saved config says.
    """
    if spec.loader == "remote_code":
        from pipelines.models import remote

        return remote.load_processor(spec, name_or_path, trust_remote_code)
    from pipelines.models.colpali import model_classes

    _, processor_cls = model_classes(spec.family, spec.model_class, spec.processor_class)
    return processor_cls.from_pretrained(name_or_path, **dict(spec.processor_kwargs))


def embeddings_to_rows(embeddings, attention_mask) -> list[np.ndarray]:
    """Split a padded ``(B, L, D)`` batch into per-item float32 arrays of their non-padding rows.

    colpali-engine multiplies every output by the attention mask, so padding rows are zeros that
    would otherwise be stored and scored; the mask, not the values, decides what is padding.
    """
    embeddings = embeddings.float().cpu().numpy()
    mask = attention_mask.bool().cpu().numpy()
    return [embeddings[i][mask[i]] for i in range(embeddings.shape[0])]
