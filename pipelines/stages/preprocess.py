"""Preprocess: page images -> the model's inputs, on CPU workers, so the model's actor only runs forward passes."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa
from PIL import Image

from pipelines import schema
from pipelines.models import inputs
from pipelines.models.registry import ModelConfig
from pipelines.stages.base import Stage, error_fields


@dataclass
class PreprocessStage(Stage):
    """Fill ``model_inputs`` (the page's pixel values, patch grid and prompt token ids as one blob, see
    :mod:`pipelines.models.inputs`) and ``n_tokens`` for every page row, with the model's own processor.

    Stateless: it runs as CPU tasks (which Ray fuses with rasterization), and the processor (tokenizer plus
    image processor, no weights) is loaded once per worker process. A page whose image cannot be decoded is
    an ``image_decode`` error row; one the processor refuses (``ValueError``, e.g. an extreme aspect ratio)
    is a ``preprocess_failed`` row. Anything else raises.
    """

    name: ClassVar[str] = "preprocess"

    model: ModelConfig = field(default_factory=ModelConfig)

    def processor(self):
        from pipelines.models.encoder import page_processor

        model = self.model
        return page_processor(
            model.name, model.name_or_path, model.cache_dir, model.random_weights, model.trust_remote_code
        )

    def setup(self) -> None:
        self.processor()

    def process_batch(self, batch: pa.Table) -> pa.Table:
        processor = self.processor()
        rows = batch.to_pylist()
        for row in rows:
            if row["error_type"] is not None or row["model_inputs"] is not None:
                continue
            try:
                image = Image.open(io.BytesIO(row["image"]))
                image.load()
            except Exception as exc:  # undecodable image bytes are bad data, not a pipeline bug
                row.update(error_fields(self.name, "image_decode", f"{type(exc).__name__}: {exc}"))
                continue
            try:
                arrays = processor.page_inputs(image)
            except ValueError as exc:
                row.update(error_fields(self.name, "preprocess_failed", f"{type(exc).__name__}: {exc}"))
                continue
            row["model_inputs"] = inputs.encode(arrays)
            row["n_tokens"] = inputs.n_tokens(arrays)
        return schema.rows_to_table(rows)
