"""Embed: page images → multi-vectors with a ColPali-family model (one model per actor)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
from PIL import Image

from pipelines import schema
from pipelines.models.registry import ModelConfig
from pipelines.stages.base import Stage, error_fields


@dataclass
class EmbedStage(Stage):
    """Encode every page row's ``image`` into ``embedding`` (float16 bytes) and ``n_vectors``.

    ``micro_batch_size`` is the model's forward batch, independent of how many rows Ray hands the
    stage. Rows are sorted by image area before micro-batching so pages of similar size share a
    forward pass (less padding). A page whose image cannot be decoded or processed becomes an
    ``embed`` error row; a failing forward pass of a whole micro-batch is retried page by page so one
    bad page cannot take its neighbours with it; a page whose vectors come out empty or non-finite is a
    ``bad_vectors`` row. Model-level failures (OOM, device, bad weights) raise.
    """

    name: ClassVar[str] = "embed"
    stateful: ClassVar[bool] = True

    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        self._encoder = None

    def setup(self) -> None:
        from pipelines.models.encoder import MultiVectorEncoder

        if self._encoder is None:
            model = self.model
            self._encoder = MultiVectorEncoder(
                model.name, model.name_or_path, model.cache_dir, model.device, model.dtype
            )

    def __getstate__(self):
        # The loaded model never travels with the stage; each worker loads its own in setup().
        state = dict(self.__dict__)
        state["_encoder"] = None
        return state

    def process_batch(self, batch: pa.Table) -> pa.Table:
        self.setup()
        rows = batch.to_pylist()
        todo = [i for i, row in enumerate(rows) if row["error_type"] is None]
        images: dict[int, Image.Image] = {}
        for i in todo:
            try:
                image = Image.open(io.BytesIO(rows[i]["image"]))
                image.load()
                images[i] = image.convert("RGB")
            except Exception as exc:  # undecodable image bytes are bad data, not a pipeline bug
                rows[i].update(error_fields(self.name, "image_decode", f"{type(exc).__name__}: {exc}"))
        order = sorted(images, key=lambda i: images[i].width * images[i].height)
        for start in range(0, len(order), self.model.micro_batch_size):
            chunk = order[start : start + self.model.micro_batch_size]
            for i, vectors in zip(chunk, self._embed_isolating(chunk, images, rows), strict=True):
                if vectors is None:
                    continue
                finite = bool(np.isfinite(vectors).all())
                if vectors.shape[0] == 0 or not finite:
                    message = f"model produced {vectors.shape[0]} vectors (all finite: {finite})"
                    rows[i].update(error_fields(self.name, "bad_vectors", message))
                    continue
                rows[i]["embedding"] = vectors.astype("<f2").tobytes()
                rows[i]["n_vectors_raw"] = rows[i]["n_vectors"] = int(vectors.shape[0])
                rows[i]["model"] = self.model.name
        return schema.rows_to_table(rows)

    def _embed_isolating(self, chunk: list[int], images: dict, rows: list[dict]) -> list[np.ndarray | None]:
        # Only ValueError is the processor refusing an image (e.g. an extreme aspect ratio); runtime
        # errors (out of memory, device or dtype problems) are the pipeline's and must fail the run.
        try:
            return self._encoder.embed_images([images[i] for i in chunk], micro_batch_size=len(chunk))
        except ValueError as exc:
            if len(chunk) > 1:
                return [self._embed_isolating([i], images, rows)[0] for i in chunk]
            rows[chunk[0]].update(error_fields(self.name, "embed_failed", f"{type(exc).__name__}: {exc}"))
            return [None]
