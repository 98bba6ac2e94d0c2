"""Typed config of the index job: one dataclass tree, validated once; stages, their scheduling and
the config hash are derived from it.

Hydra composes ``conf/index.yaml`` (group defaults plus command-line overrides); :func:`load_index_config`
merges the result onto the structured schema :class:`IndexJobConfig`, so a wrong type or an unknown
key fails with its full name before any work starts, then runs the cross-field checks. A stage's
knobs are the fields of the stage dataclass itself (:class:`RasterizeStage`, :class:`PoolStage`,
the :class:`ModelConfig` of :class:`EmbedStage`): each knob is written once, in its dataclass, with
its default; the YAML files only set values and document them. Fields marked
:func:`pipelines.ids.affects_vectors` make up the config hash.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from pipelines import ids
from pipelines.backends import NAMES as BACKENDS
from pipelines.backends.base import RayConfig, StagePlan, StageResources
from pipelines.errors import ConfigError
from pipelines.index.lease import LeaseConfig
from pipelines.index.ledger import DEFAULT_SYNC_MAX_REMOVED
from pipelines.models import registry
from pipelines.models.registry import ModelConfig
from pipelines.progress import ProgressConfig
from pipelines.stages.base import Stage
from pipelines.stages.compress import BinarizeStage, PoolStage
from pipelines.stages.embed import EmbedStage
from pipelines.stages.preprocess import PreprocessStage
from pipelines.stages.rasterize import RasterizeStage

OUTPUT_MODES = ("incremental", "overwrite")


@dataclass
class SourceConfig:
    """The ``source`` node: where the PDFs are and how reruns treat them (see conf/source/default.yaml)."""

    location: str = MISSING
    glob: str | None = None
    suffixes: list[str] = field(default_factory=lambda: [".pdf"])
    storage_options: dict[str, Any] = field(default_factory=dict)
    sync: bool = False
    #: With sync: the largest fraction of the indexed files one run may remove; a run that would remove more is
    #: refused (exit 7) unless sync_force, so a source that is suddenly empty or half-mounted deletes nothing.
    sync_max_removed: float = DEFAULT_SYNC_MAX_REMOVED
    #: With sync: remove every file gone from the source, however many (after checking the listing is right).
    sync_force: bool = False
    retry_failed: bool = False
    #: Runs that retry a file whose last outcome was transient (timeout, memory_limit, read_failed) before
    #: its failure is recorded as permanent (until the file changes or retry_failed=true).
    max_retries: int = 1
    hash_threads: int = 8


@dataclass
class OutputConfig:
    """The ``output`` node: where the index is, and whether a run adds to it or rebuilds it."""

    location: str = "index"
    mode: str = "incremental"
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: Seconds the part files compaction replaced stay readable before a later run deletes them, so a reader
    #: (search, feed, evaluate) that listed them finishes its read unchanged (see pipelines.index.view).
    compaction_grace_s: float = 900.0


@dataclass
class IndexJobConfig:
    """Everything ``jobs.index`` is configured with (conf/index.yaml and its groups)."""

    source: SourceConfig = field(default_factory=SourceConfig)
    rasterize: RasterizeStage = field(default_factory=RasterizeStage)
    model: ModelConfig = field(default_factory=ModelConfig)
    pooling: PoolStage = field(default_factory=PoolStage)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    #: The ``vespa`` group, validated by :mod:`pipelines.vespa.config` (inline feeding only).
    vespa: dict[str, Any] = field(default_factory=dict)
    backend: str = "ray"
    max_error_rate: float = 0.1
    log_level: str = "INFO"
    #: Progress lines and metrics file (see :mod:`pipelines.progress`).
    progress: ProgressConfig = field(default_factory=ProgressConfig)
    #: The index's one-writer lease (see :mod:`pipelines.index.lease`).
    lease: LeaseConfig = field(default_factory=LeaseConfig)

    @property
    def spec(self) -> registry.ModelSpec:
        """The registered model; with ``model.random_weights`` labelled a test model (throughput only)."""
        spec = registry.get_spec(self.model.name)
        return dataclasses.replace(spec, is_test_model=True) if self.model.random_weights else spec

    def stages(self) -> list[Stage]:
        """The stages in order, with values the config leaves to the model resolved."""
        rasterize = dataclasses.replace(
            self.rasterize,
            max_pixels=self.rasterize.max_pixels or self.spec.max_pixels,
            storage_options=dict(self.source.storage_options) or None,
        )
        # Preprocessing (the processor's resize/normalize/patchify) runs on CPU workers, the model's actor
        # only runs forward passes.
        preprocess, embed = PreprocessStage(model=self.model), EmbedStage(model=self.model)
        return [rasterize, preprocess, embed, self.pooling, BinarizeStage()]

    def stage_plan(self) -> StagePlan:
        stages = self.stages()
        resources = {stage.name: getattr(self.ray.stages, stage.name, StageResources()) for stage in stages}
        return StagePlan(stages, resources)

    def vector_settings(self) -> dict[str, Any]:
        """What determines the stored vectors (recorded in the index; two indexes differing here must
        not be mixed)."""
        rasterize, _, embed, pool, binarize = self.stages()
        return {**ids.vector_settings(embed.model, rasterize, pool), "binary": binarize.encoding}

    def config_hash(self) -> str:
        return ids.config_hash(self.vector_settings())


def load_index_config(cfg: DictConfig) -> IndexJobConfig:
    """Validate a composed index config and return it typed; raises :class:`ConfigError` saying what to set.

    Keys that are not part of the index job (e.g. those a job composing ``index`` adds for itself)
    are ignored; everything under the index job's own nodes must be known and well typed.
    """
    plain = {spec.name: cfg[spec.name] for spec in dataclasses.fields(IndexJobConfig) if spec.name in cfg}
    _require(cfg, "source.location", "set source.location=<PDF file, directory or fsspec URL>")
    _require(cfg, "output.location", "set output.location=<directory or fsspec URL>")
    _require(cfg, "model.name", "pick a model, e.g. model=colqwen2.5-v0.2 or model=tiny")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(IndexJobConfig), plain)
        job: IndexJobConfig = OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        raise ConfigError(_unknown_key_message(exc)) from exc
    except (OmegaConfBaseException, TypeError, ValueError) as exc:
        raise ConfigError(str(exc).splitlines()[0] + _where(exc)) from exc
    _check(job)
    return job


def _check(job: IndexJobConfig) -> None:
    """Cross-field checks that no single field's type can express."""
    try:
        job.stages()  # resolves the model's pixel budget, so the stages validate the values they will run with
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if job.spec.loader == "remote_code" and not job.model.random_weights:
        from pipelines.models import remote

        # Its code comes with the checkpoint: say now, not from a worker, when it cannot be loaded here.
        remote.check_available(job.spec, job.model.name_or_path or job.spec.hub_id, job.model.trust_remote_code)
    if job.backend not in BACKENDS:
        msg = f"backend must be one of {list(BACKENDS)}, got {job.backend!r}"
        raise ConfigError(msg)
    if job.output.mode not in OUTPUT_MODES:
        msg = f"output.mode must be one of {list(OUTPUT_MODES)} (got {job.output.mode!r})"
        raise ConfigError(msg)
    if job.output.compaction_grace_s < 0:
        msg = f"output.compaction_grace_s must be >= 0 seconds, got {job.output.compaction_grace_s}"
        raise ConfigError(msg)
    if job.source.sync and job.source.glob:
        msg = (
            "source.sync=true removes every recorded source that is not listed; "
            "it needs the full listing (unset source.glob)"
        )
        raise ConfigError(msg)
    if not 0.0 <= job.source.sync_max_removed <= 1.0:
        msg = f"source.sync_max_removed must be a fraction between 0 and 1, got {job.source.sync_max_removed}"
        raise ConfigError(msg)
    if job.source.max_retries < 0:
        msg = f"source.max_retries must be >= 0, got {job.source.max_retries}"
        raise ConfigError(msg)
    if not 0.0 <= job.max_error_rate <= 1.0:
        msg = f"max_error_rate must be a fraction between 0 and 1, got {job.max_error_rate}"
        raise ConfigError(msg)


def _require(cfg: DictConfig, key: str, hint: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        value = None
    if value is None or value == "":
        msg = f"missing required config value {key!r}: {hint}"
        raise ConfigError(msg)
    return value


def _unknown_key_message(exc: ConfigKeyError) -> str:
    key = getattr(exc, "full_key", None) or ""
    parent, _, name = key.rpartition(".")
    if parent == "ray.stages":
        known = [spec.name for spec in dataclasses.fields(RayConfig().stages)]
        return f"ray.stages has unknown stages [{name!r}]; known: {known}"
    return f"unknown config key {key!r}: check its spelling against conf/ (or `python -m jobs.index --cfg job`)"


def _where(exc: Exception) -> str:
    key = getattr(exc, "full_key", None)
    return f" (config key {key!r})" if key else ""


def absolute(location: str) -> str:
    """Local relative paths become absolute: Ray workers do not share the driver's cwd."""
    if "://" in location:
        return location
    return os.path.abspath(location)
