"""Embed: the pages' model inputs -> multi-vectors with a ColPali-family model (one model per actor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipelines import schema
from pipelines.models import inputs
from pipelines.models.registry import ModelConfig
from pipelines.stages.base import PipelineFailure, Stage, error_fields
from pipelines.stages.preprocess import page_inputs


@dataclass
class EmbedStage(Stage):
    """Encode every page row into ``embedding`` (float16 bytes) and ``n_vectors``; clears ``model_inputs``.

    In the pipeline, :class:`~pipelines.stages.preprocess.PreprocessStage` has already turned each page
    image into its model inputs on a CPU worker, so this stage (the model's actor) only decodes them, stacks
    them into micro-batches and runs forward passes: up to ``model.micro_batch_size`` pages per pass, or up
    to ``model.batch_tokens`` padded tokens when set (pages of similar token counts share a pass). A row
    without model inputs (the stage used on its own) is preprocessed here first, with the same error rows
    as the preprocess stage. A batch whose forward pass (or anything else) raises is done again page by page
    (:meth:`Stage.__call__ <pipelines.stages.base.Stage.__call__>`), so one bad page cannot take its neighbours
    with it: the page that still fails is an ``embed_failed`` row. A page whose vectors come out empty or
    non-finite is a ``bad_vectors`` row. Failures of the run raise (:func:`~pipelines.stages.base.fails_run`:
    out of memory, a failed device, a model that cannot load, vectors of another width than the registry's).
    """

    name: ClassVar[str] = "embed"
    stateful: ClassVar[bool] = True

    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        if self.model.random_weights:
            from pipelines.models import random_weights

            random_weights.architecture(self.model.name)  # fail fast: no architecture config for this model
        self._encoder = None
        self._layouts = None  # similarity_maps.LayoutCache of the loaded processor

    def setup(self) -> None:
        """Load the model, once per worker (an actor calls this once; later calls are no-ops)."""
        from pipelines.models.encoder import MultiVectorEncoder

        if self._encoder is None:
            model = self.model
            self._encoder = MultiVectorEncoder(
                model.name,
                model.name_or_path,
                model.cache_dir,
                model.device,
                model.dtype,
                attn_implementation=model.attn_implementation,
                random_weights=model.random_weights,
                trust_remote_code=model.trust_remote_code,
            )

    @property
    def encoder(self):
        self.setup()
        return self._encoder

    def __getstate__(self):
        # The loaded model never travels with the stage; each worker loads its own in setup().
        state = dict(self.__dict__)
        state["_encoder"] = None
        state["_layouts"] = None
        return state

    def process_batch(self, batch: pa.Table) -> pa.Table:
        encoder = self.encoder
        rows = batch.to_pylist()
        todo: dict[int, dict[str, np.ndarray]] = {}
        for i, row in enumerate(rows):
            if row["error_type"] is not None:
                continue
            arrays = self._inputs(row, encoder)
            if arrays is not None:
                todo[i] = arrays
        order = list(todo)
        model = self.model
        embedded = encoder.embed_inputs([todo[i] for i in order], model.micro_batch_size, model.batch_tokens)
        for i, vectors in zip(order, embedded, strict=True):
            finite = bool(np.isfinite(vectors).all())
            if vectors.shape[0] == 0 or not finite:
                message = f"model produced {vectors.shape[0]} vectors (all finite: {finite})"
                rows[i].update(error_fields(self.name, "bad_vectors", message))
                continue
            if vectors.shape[1] != encoder.spec.dim:
                # The index, Vespa's tensor types and every reader take the width from the registry: a checkpoint
                # that disagrees is a registry error, not bad data.
                msg = (
                    f"model {self.model.name!r} produced {vectors.shape[1]}-d vectors; "
                    f"the registry says {encoder.spec.dim}"
                )
                raise PipelineFailure(msg)
            rows[i]["embedding"] = vectors.astype("<f2").tobytes()
            rows[i]["embedding_dim"] = int(vectors.shape[1])
            rows[i]["n_vectors_raw"] = rows[i]["n_vectors"] = int(vectors.shape[0])
            rows[i]["model"] = self.model.name
            size = (rows[i]["image_width"], rows[i]["image_height"])
            if None not in size:
                rows[i].update(self._patch_layout(size, int(vectors.shape[0])))
        for row in rows:
            row["model_inputs"] = None  # megabytes per page that nothing downstream reads
        return schema.rows_to_table(rows)

    def _inputs(self, row: dict, encoder) -> dict[str, np.ndarray] | None:
        """The row's model inputs: decoded from ``model_inputs``, or computed here when the row has none."""
        if row["model_inputs"] is not None:
            return inputs.decode(row["model_inputs"])
        return page_inputs(row, self.name, encoder.page_inputs)

    def _patch_layout(self, size: tuple[int, int], n_vectors: int) -> dict:
        """The page's patch-layout columns (similarity maps), or none when the model's layout is unknown."""
        from pipelines.similarity_maps import LayoutCache

        if self._layouts is None:
            self._layouts = LayoutCache(self._encoder.processor)
        layout = self._layouts.layout(size, n_vectors)
        return layout.columns() if layout is not None else {}
