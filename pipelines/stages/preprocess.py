"""Preprocess: page images -> the model's inputs, on CPU workers, so the model's actor only runs forward passes."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
from PIL import Image

from pipelines import schema
from pipelines.models import inputs
from pipelines.models.registry import ModelConfig
from pipelines.stages.base import Stage, exception_fields, fails_run


@dataclass
class PreprocessStage(Stage):
    """Fill ``model_inputs`` (the page's pixel values, patch grid and prompt token ids as one blob, see
    :mod:`pipelines.models.inputs`) and ``n_tokens`` for every page row, with the model's own processor.

    Stateless: it runs as CPU tasks (which Ray fuses with rasterization), and the processor (tokenizer plus
    image processor, no weights) is loaded once per worker process. A page whose image cannot be decoded is
    an ``image_decode`` error row; one the processor fails on (e.g. refuses an extreme aspect ratio) is a
    ``preprocess_failed`` row, as is any other exception raised for one page (see
    :mod:`pipelines.stages.base`). Only failures of the run itself (:func:`~pipelines.stages.base.fails_run`:
    out of memory, a processor that cannot load) raise.
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
            arrays = page_inputs(row, self.name, processor.page_inputs)
            if arrays is None:
                continue
            row["model_inputs"] = inputs.encode(arrays)
            row["n_tokens"] = inputs.n_tokens(arrays)
        return schema.rows_to_table(rows)


def page_inputs(row: dict, stage: str, processor: Callable[[Image.Image], dict]) -> dict[str, np.ndarray] | None:
    """The model inputs of a page row's ``image`` from ``processor`` (a processor's ``page_inputs``); None after
    making ``row`` an ``image_decode`` error row (the bytes are no image) or a ``preprocess_failed`` one (the
    processor fails on the image, e.g. refuses its aspect ratio). Failures of the run raise (``fails_run``)."""
    try:
        image = Image.open(io.BytesIO(row["image"]))
        image.load()
    except Exception as exc:  # undecodable image bytes are bad data, not a pipeline bug
        if fails_run(exc):
            raise
        row.update(exception_fields(stage, "image_decode", exc))
        return None
    try:
        return processor(image)
    except Exception as exc:  # the processor refusing this page's image
        if fails_run(exc):
            raise
        row.update(exception_fields(stage, "preprocess_failed", exc))
        return None
