"""One loaded ColPali-family model, encoding page images and queries into multi-vectors.

Page embedding is split in two halves that can run in different processes:

* :class:`PageProcessor` (CPU): the model's processor turns one page image into its model inputs (resize,
  normalize, patchify; prompt token ids), as numpy arrays (:mod:`pipelines.models.inputs`). It loads only the
  processor, once per process (:func:`page_processor`).
* :class:`MultiVectorEncoder` (the model's device): stacks many pages' inputs into micro-batches sized by a
  token budget (:func:`~pipelines.models.inputs.plan_batches`), runs the forward passes and returns each
  page's vectors. On a GPU: bf16, SDPA or flash-attention, inputs copied from pinned host memory without
  blocking, and each batch's outputs copied back asynchronously while the next batch computes.

:meth:`MultiVectorEncoder.embed_images` runs both halves in this process, one page at a time through the
processor, so "embedding a page alone" is exactly the pipeline's computation.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.models import inputs, registry


class PageProcessor:
    """A registered model's processor: page image -> that page's model inputs (CPU only, no weights).

    ``trust_remote_code`` (an option) lets a ``remote_code`` checkpoint's own code run; only the user turns it on.
    """

    def __init__(self, model_name: str, name_or_path: str | None = None, cache_dir: str | None = None, **options):
        self.spec = registry.get_spec(model_name)
        if options.get("random_weights"):
            from pipelines.models import random_weights

            self.name_or_path = str(random_weights.ensure_processor_dir(self.spec, cache_dir))
        else:
            self.name_or_path = registry.resolve_name_or_path(self.spec, name_or_path, cache_dir)
        self.processor = registry.load_processor(self.spec, self.name_or_path, options.get("trust_remote_code", False))

    @property
    def pad_token_id(self) -> int:
        return int(self.processor.tokenizer.pad_token_id)

    @property
    def padding_side(self) -> str:
        return str(self.processor.tokenizer.padding_side)

    def page_inputs(self, image: Image.Image) -> dict[str, np.ndarray]:
        """One page's model inputs. Raises ``ValueError`` when the processor refuses the image (e.g. an
        aspect ratio beyond its limit): bad data, not a pipeline failure."""
        return inputs.to_numpy(self.processor.process_images([image.convert("RGB")]))


@functools.lru_cache(maxsize=4)
def page_processor(
    model_name: str,
    name_or_path: str | None = None,
    cache_dir: str | None = None,
    random_weights: bool = False,
    trust_remote_code: bool = False,
) -> PageProcessor:
    """The :class:`PageProcessor` of a model, loaded once per process (stages are re-created per Ray task)."""
    return PageProcessor(
        model_name, name_or_path, cache_dir, random_weights=random_weights, trust_remote_code=trust_remote_code
    )


@dataclass
class _Pending:
    """A forward pass whose outputs are on their way to host memory."""

    output: object  # torch.Tensor (B, L, D), pinned host memory once ``done`` has fired
    mask: np.ndarray  # (B, L) bool
    done: object | None  # torch.cuda.Event, None on CPU


class MultiVectorEncoder:
    """Loads a registered model once and encodes pages and queries in micro-batches.

    Outputs are lists of float32 ``(n_i, dim)`` arrays holding only each item's non-padding rows, so an
    item's vectors do not depend on what else was in its micro-batch (up to float noise). ``timings``
    accumulates seconds spent preprocessing in this process (``preprocess_s``), collating (``collate_s``)
    and in forward passes including the copies to and from the device (``forward_s``), plus the pages,
    tokens and padded tokens embedded.
    """

    def __init__(
        self,
        model_name: str,
        name_or_path: str | None = None,
        cache_dir: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str = "auto",
        random_weights: bool = False,
        trust_remote_code: bool = False,
    ):
        self.pages = page_processor(model_name, name_or_path, cache_dir, random_weights, trust_remote_code)
        self.spec = self.pages.spec
        self.name_or_path = self.pages.name_or_path
        self.processor = self.pages.processor
        if random_weights:
            from pipelines.models import random_weights as rw

            self.model = rw.build_model(self.spec, self.processor, device, dtype, attn_implementation)
        else:
            # The processor is the page processor's (loaded once per process), not a second copy.
            self.model = registry.load_weights(
                self.spec, self.name_or_path, device, dtype, attn_implementation, trust_remote_code
            )
        self.device = self.model.device
        self.dtype = self.model.dtype
        self.is_cuda = self.device.type == "cuda"
        self.timings: Counter = Counter()

    # -- pages ---------------------------------------------------------------------------------------------

    def page_inputs(self, image: Image.Image) -> dict[str, np.ndarray]:
        """One page's model inputs, computed in this process (see :class:`PageProcessor`)."""
        started = time.perf_counter()
        try:
            return self.pages.page_inputs(image)
        finally:
            self.timings["preprocess_s"] += time.perf_counter() - started

    def embed_inputs(
        self,
        items: Sequence[Mapping[str, np.ndarray]],
        micro_batch_size: int = 4,
        batch_tokens: int | None = None,
    ) -> list[np.ndarray]:
        """Per-page vectors from per-page model inputs, in input order.

        Pages are grouped by token count into micro-batches of up to ``micro_batch_size`` pages, or up to
        ``batch_tokens`` padded tokens when given (:func:`~pipelines.models.inputs.plan_batches`). A
        ``ValueError`` from the model (inputs it refuses) propagates; callers isolate the page.
        """
        lengths = [inputs.n_tokens(item) for item in items]
        out: list[np.ndarray | None] = [None] * len(items)
        pending: tuple[list[int], _Pending] | None = None
        for batch in inputs.plan_batches(lengths, micro_batch_size, batch_tokens):
            started = time.perf_counter()
            collated = inputs.collate([items[i] for i in batch], self.pages.pad_token_id, self.pages.padding_side)
            self.timings["collate_s"] += time.perf_counter() - started
            self.timings["pages"] += len(batch)
            self.timings["tokens"] += sum(lengths[i] for i in batch)
            self.timings["padded_tokens"] += len(batch) * max(lengths[i] for i in batch)
            started = time.perf_counter()
            launched = self._launch(collated)
            # The previous batch's outputs were copied while this one was queued: collect them now, so the
            # host never waits on a copy before the device has its next batch.
            if pending is not None:
                self._collect(*pending, out)
            pending = (batch, launched)
            self.timings["forward_s"] += time.perf_counter() - started
        if pending is not None:
            started = time.perf_counter()
            self._collect(*pending, out)
            self.timings["forward_s"] += time.perf_counter() - started
        return out  # type: ignore[return-value]

    def embed_images(
        self, images: Sequence[Image.Image], micro_batch_size: int = 4, batch_tokens: int | None = None
    ) -> list[np.ndarray]:
        """Per-image vectors: each image preprocessed alone, then embedded in micro-batches."""
        return self.embed_inputs([self.page_inputs(image) for image in images], micro_batch_size, batch_tokens)

    def _launch(self, batch: Mapping[str, np.ndarray]) -> _Pending:
        """Queue one forward pass; on a GPU, inputs go up from pinned memory and outputs come back into
        pinned memory asynchronously (``_Pending.done`` fires when they have arrived)."""
        import torch

        tensors = {}
        for key, array in batch.items():
            tensor = torch.from_numpy(array)
            if self.is_cuda:
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            if tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            tensors[key] = tensor
        with torch.inference_mode():
            output = self.model(**tensors)
        mask = batch["attention_mask"].astype(bool)
        if not self.is_cuda:
            return _Pending(output, mask, None)
        host = torch.empty(output.shape, dtype=output.dtype, pin_memory=True)
        host.copy_(output, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _Pending(host, mask, done)

    @staticmethod
    def _collect(batch: list[int], pending: _Pending, out: list) -> None:
        if pending.done is not None:
            pending.done.synchronize()
        # colpali-engine zeroes padding rows through the mask; the mask, not the values, says what is padding.
        embeddings = pending.output.float().numpy()
        for row, i in enumerate(batch):
            out[i] = embeddings[row][pending.mask[row]]

    # -- queries -------------------------------------------------------------------------------------------

    def _run(self, batch) -> list[np.ndarray]:
        import torch

        batch = batch.to(self.device)
        with torch.inference_mode():
            output = self.model(**batch)
        return registry.embeddings_to_rows(output, batch["attention_mask"])

    def embed_queries(self, queries: Sequence[str], micro_batch_size: int = 32) -> list[np.ndarray]:
        """Per-query vectors (the processor adds the model's query prefix and augmentation tokens)."""
        out: list[np.ndarray] = []
        for start in range(0, len(queries), micro_batch_size):
            chunk = list(queries[start : start + micro_batch_size])
            out.extend(self._run(self.processor.process_queries(chunk)))
        return out
