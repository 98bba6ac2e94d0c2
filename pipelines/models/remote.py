"""Checkpoints that ship their own modeling code, loaded the way their cards say (``trust_remote_code``).

jina-embeddings-v4 is a Qwen2.5-VL model with its own classes (``JinaEmbeddingsV4Model``,
``JinaEmbeddingsV4Processor``) in the checkpoint repository; its card loads it with
``AutoModel.from_pretrained(..., trust_remote_code=True)``. That code is only available from the hub (or
the local hub cache, or a local copy of the repository): offline and uncached, loading fails with
:class:`ModelUnavailableError`, whose message says how to make the code available, instead of
transformers' generic connection error. Running a checkpoint's code is the user's decision: every loader here
takes ``trust_remote_code`` and refuses (:func:`require_trust`) unless it is True, which only the user's own
``model.trust_remote_code=true`` (or an explicit argument in Python) makes it.

:class:`RemoteCodeModel` and :class:`RemoteCodeProcessor` give the loaded objects the interface the
encoder uses for colpali-engine models: ``model(**batch) -> (B, L, dim)`` unit multi-vectors with padding
rows zeroed, ``processor.process_images`` / ``process_queries``. They follow the checkpoint's own code:
the forward pass takes a ``task_label`` (the LoRA adapter: ``retrieval``) and returns an output whose
``multi_vec_emb`` are the multi-vectors and ``single_vec_emb`` the single page vector; queries are
prefixed with ``"Query"`` (the card's ``prompt_name="query"``).
"""

from __future__ import annotations

import os
from typing import Any

from pipelines.errors import ConfigError

#: The LoRA adapter jina-embeddings-v4 uses for query/document retrieval.
JINA_TASK = "retrieval"
JINA_QUERY_PREFIX = "Query"


class ModelUnavailableError(ConfigError):
    """A model (or the modeling code it ships) cannot be loaded here; the message says how to fix that (a
    :class:`~pipelines.errors.ConfigError`: jobs exit with status 2 and the message)."""


def require_trust(spec, name_or_path: str, trust_remote_code: bool) -> None:
    """Raise :class:`~pipelines.errors.ConfigError` unless the user allowed running the checkpoint's own code."""
    if not trust_remote_code:
        msg = (
            f"model {spec.name!r} ({name_or_path}) can only be loaded by running the modeling code its checkpoint "
            "ships (trust_remote_code), which is off unless you turn it on: if you trust that code, add "
            "model.trust_remote_code=true to the command line"
        )
        raise ConfigError(msg)


def _offline() -> bool:
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")


def _unavailable(spec, name_or_path: str, exc: Exception) -> ModelUnavailableError:
    where = "offline (HF_HUB_OFFLINE=1)" if _offline() else "from the hub"
    msg = (
        f"model {spec.name!r} ({name_or_path}) ships its own modeling code and is loaded with trust_remote_code, "
        f"but its code or weights could not be loaded {where}: {type(exc).__name__}: {str(exc)[:300]}. "
        f"Fetch it once with network access (huggingface-cli download {spec.hub_id or name_or_path}) so it is in "
        "the Hugging Face cache, or set model.name_or_path to a local copy of the repository"
    )
    return ModelUnavailableError(msg)


def check_available(spec, name_or_path: str, trust_remote_code: bool) -> None:
    """Fail fast (before a job starts work) when the checkpoint's code may not run (:func:`require_trust`) or its
    config and code cannot be loaded here: loads its config with ``trust_remote_code`` (a few kilobytes, from the
    cache when offline). Raises :class:`ModelUnavailableError`."""
    from transformers import AutoConfig

    require_trust(spec, name_or_path, trust_remote_code)
    try:
        AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # not cached / unreachable, or a directory that is not the checkpoint
        raise _unavailable(spec, name_or_path, exc) from exc


def load_model(
    spec,
    name_or_path: str,
    dtype,
    device: str,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
):
    """``AutoModel.from_pretrained(name_or_path, trust_remote_code=True)`` wrapped as :class:`RemoteCodeModel`.

    Raises :class:`~pipelines.errors.ConfigError` without ``trust_remote_code`` (:func:`require_trust`),
    :class:`ModelUnavailableError` when the checkpoint or its code cannot be loaded (offline and not cached, or
    unreachable); errors raised by the code itself propagate.
    """
    from transformers import AutoModel

    require_trust(spec, name_or_path, trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": dtype, "device_map": device}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModel.from_pretrained(name_or_path, **kwargs)
    except OSError as exc:  # not cached offline, unreachable, or missing files: how transformers reports them
        raise _unavailable(spec, name_or_path, exc) from exc
    return RemoteCodeModel(model.eval())


def load_processor(spec, name_or_path: str, trust_remote_code: bool = False):
    """``AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)`` as :class:`RemoteCodeProcessor`
    (refused without ``trust_remote_code``, :func:`require_trust`)."""
    from transformers import AutoProcessor

    require_trust(spec, name_or_path, trust_remote_code)
    kwargs = {"trust_remote_code": trust_remote_code, **dict(spec.processor_kwargs)}
    try:
        processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    except OSError as exc:
        raise _unavailable(spec, name_or_path, exc) from exc
    if hasattr(processor, "image_processor") and spec.max_pixels:
        # The registry's budget, as the card's encode_image(max_pixels=...) sets it.
        processor.image_processor.max_pixels = spec.max_pixels
        size = getattr(processor.image_processor, "size", None)
        if isinstance(size, dict) and "longest_edge" in size:
            size["longest_edge"] = spec.max_pixels
    return RemoteCodeProcessor(processor)


class RemoteCodeModel:
    """A jina-embeddings-v4-style model called like a colpali-engine one: ``model(**batch)`` returns the
    ``(B, L, dim)`` multi-vectors (unit rows, padding rows zero); :meth:`single_vectors` the page vectors."""

    def __init__(self, model, task: str = JINA_TASK):
        self.model = model
        self.task = task

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    def _output(self, batch: dict[str, Any]):
        return self.model(task_label=self.task, **batch)

    def __call__(self, **batch: Any):
        return self._output(batch).multi_vec_emb

    def single_vectors(self, **batch: Any):
        """The model's own single vector per item ``(B, single_vector_dim)``."""
        return self._output(batch).single_vec_emb

    def eval(self) -> RemoteCodeModel:
        self.model.eval()
        return self


class RemoteCodeProcessor:
    """The checkpoint's processor with colpali-engine's method names: ``process_queries`` adds the query prefix,
    everything else (``process_images``, ``tokenizer``, ``image_processor``...) is the checkpoint's own."""

    def __init__(self, processor):
        self.processor = processor

    def process_queries(self, queries):
        return self.processor.process_texts(list(queries), prefix=JINA_QUERY_PREFIX)

    def __getattr__(self, name: str):
        if name == "processor":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.processor, name)
