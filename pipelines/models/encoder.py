"""One loaded ColPali-family model, encoding page images and queries into multi-vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from pipelines.models import registry


class MultiVectorEncoder:
    """Loads a registered model once and encodes images/queries in micro-batches.

    Outputs are lists of float32 ``(n_i, 128)`` arrays holding only each item's non-padding rows,
    so an item's vectors do not depend on what else was in its micro-batch (up to float noise).
    """

    def __init__(
        self,
        model_name: str,
        name_or_path: str | None = None,
        cache_dir: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
    ):
        self.spec = registry.get_spec(model_name)
        self.name_or_path = registry.resolve_name_or_path(self.spec, name_or_path, cache_dir)
        self.model, self.processor = registry.load_model(self.spec, self.name_or_path, device, dtype)
        self.device = self.model.device

    def _run(self, inputs) -> list[np.ndarray]:
        import torch

        inputs = inputs.to(self.device)
        with torch.inference_mode():
            output = self.model(**inputs)
        return registry.embeddings_to_rows(output, inputs["attention_mask"])

    def embed_images(self, images: Sequence[Image.Image], micro_batch_size: int = 4) -> list[np.ndarray]:
        """Per-image vectors; images are processed ``micro_batch_size`` at a time."""
        out: list[np.ndarray] = []
        for start in range(0, len(images), micro_batch_size):
            chunk = list(images[start : start + micro_batch_size])
            out.extend(self._run(self.processor.process_images(chunk)))
        return out

    def embed_queries(self, queries: Sequence[str], micro_batch_size: int = 32) -> list[np.ndarray]:
        """Per-query vectors (the processor adds the model's query prefix and augmentation tokens)."""
        out: list[np.ndarray] = []
        for start in range(0, len(queries), micro_batch_size):
            chunk = list(queries[start : start + micro_batch_size])
            out.extend(self._run(self.processor.process_queries(chunk)))
        return out
