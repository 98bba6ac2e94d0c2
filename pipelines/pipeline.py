"""Build the indexing pipeline from a resolved config and run it end to end.

This is the driver side: validate config (fail fast), list the inputs, pick the backend, write the
index and its run report. Stages and the Ray wiring live elsewhere.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pipelines import failpoints, ids, index, io, ledger, schema
from pipelines.backends.base import StageResources
from pipelines.errors import ConfigError
from pipelines.models import registry
from pipelines.stages.base import Stage
from pipelines.stages.compress import BinarizeStage, PoolStage
from pipelines.stages.embed import EmbedStage
from pipelines.stages.rasterize import RasterizeStage
from pipelines.vespa import config as vespa_config
from pipelines.vespa import replay
from pipelines.vespa.client import redact

logger = logging.getLogger(__name__)

STAGE_ORDER = ("rasterize", "embed", "pool", "binarize")


@dataclass
class IndexPlan:
    """Everything a backend needs, derived from the config on the driver."""

    stages: list[Stage]
    resources: dict[str, StageResources]
    settings: dict[str, Any] = field(default_factory=dict)  # what determines the vectors
    config_hash: str = ""


def require(cfg: DictConfig, key: str, hint: str) -> Any:
    """Value at dotted ``key``; a missing (``???``) or null value raises :class:`ConfigError` with ``hint``."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        value = None
    if value is None or value == "":
        msg = f"missing required config value {key!r}: {hint}"
        raise ConfigError(msg)
    return value


def to_plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_plan(cfg: DictConfig) -> IndexPlan:
    """Validate ``cfg`` and build the stage objects and their scheduling. Raises :class:`ConfigError`."""
    try:
        spec = registry.get_spec(require(cfg, "model.name", "pick a model, e.g. model=colqwen2.5-v0.2 or model=tiny"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    raster = cfg.rasterize
    try:
        max_pixels = int(raster.max_pixels or spec.max_pixels)
        pool_factor = int(cfg.pooling.pool_factor)
        stages: list[Stage] = [
            RasterizeStage(
                max_pixels=max_pixels,
                max_dpi=float(raster.max_dpi),
                hard_max_pixels=int(raster.hard_max_pixels),
                window_pages=int(raster.window_pages),
                image_format=str(raster.image_format),
                jpeg_quality=int(raster.jpeg_quality),
                extract_text=bool(raster.extract_text),
                timeout_s=float(raster.timeout_s),
                document_timeout_s=float(raster.document_timeout_s),
                max_file_bytes=int(raster.max_file_bytes),
                thumbnail_px=int(raster.thumbnail_px),
                storage_options=to_plain(cfg.source.storage_options) or None,
            ),
            EmbedStage(
                model_name=spec.name,
                name_or_path=cfg.model.name_or_path,
                cache_dir=cfg.model.cache_dir,
                device=str(cfg.model.device),
                dtype=str(cfg.model.dtype),
                micro_batch_size=int(cfg.model.micro_batch_size),
            ),
            PoolStage(pool_factor=pool_factor),
            BinarizeStage(),
        ]
        stage_cfg = to_plain(cfg.ray.stages) or {}
        unknown = set(stage_cfg) - set(STAGE_ORDER)
        if unknown:
            msg = f"ray.stages has unknown stages {sorted(unknown)}; known: {list(STAGE_ORDER)}"
            raise ConfigError(msg)
        resources = {name: StageResources(**stage_cfg.get(name, {})) for name in STAGE_ORDER}
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from exc
    if cfg.backend not in ("ray", "local"):
        msg = f"backend must be 'ray' or 'local', got {cfg.backend!r}"
        raise ConfigError(msg)
    settings = {
        "model": spec.name,
        "name_or_path": cfg.model.name_or_path,
        "max_pixels": max_pixels,
        "max_dpi": float(raster.max_dpi),
        "image_format": str(raster.image_format),
        "jpeg_quality": int(raster.jpeg_quality) if raster.image_format == "jpeg" else None,
        "device": str(cfg.model.device),
        "dtype": str(cfg.model.dtype),
        "pool_factor": pool_factor,
        "binary": "sign-bits-big-endian",
    }
    return IndexPlan(stages, resources, settings, ids.config_hash(settings))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("ray", "torch", "transformers", "colpali-engine", "pyarrow", "pdf2image"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


OUTPUT_MODES = ("incremental", "overwrite")


def run_index(cfg: DictConfig) -> dict[str, Any]:
    """Run the indexing job described by ``cfg``; returns the run report (also written to the index).

    In ``incremental`` mode (default) only new and changed sources are processed, and a run that was
    killed is committed first, so its finished documents are kept (see :mod:`pipelines.ledger`).

    Raises :class:`ConfigError` on bad configuration before any work starts (including an index
    built with another model or config), ``FileNotFoundError``/``PermissionError`` when the input or
    output location is missing or denied.
    """
    source_location = require(cfg, "source.location", "set source.location=<PDF file, directory or fsspec URL>")
    output_location = require(cfg, "output.location", "set output.location=<directory or fsspec URL>")
    if cfg.output.mode not in OUTPUT_MODES:
        msg = f"output.mode must be one of {list(OUTPUT_MODES)} (got {cfg.output.mode!r})"
        raise ConfigError(msg)
    sync = bool(cfg.source.sync)
    if sync and cfg.source.glob:
        msg = (
            "source.sync=true removes every recorded source that is not listed; "
            "it needs the full listing (unset source.glob)"
        )
        raise ConfigError(msg)
    max_error_rate = float(cfg.max_error_rate)
    if not 0.0 <= max_error_rate <= 1.0:
        msg = f"max_error_rate must be a fraction between 0 and 1, got {max_error_rate}"
        raise ConfigError(msg)
    plan = build_plan(cfg)
    inline_feed = _inline_feed(cfg)
    source_location = _absolute(source_location)
    output_location = _absolute(output_location)
    source_options = to_plain(cfg.source.storage_options)

    files, skipped = io.list_inputs(
        source_location, suffixes=tuple(cfg.source.suffixes), glob=cfg.source.glob, storage_options=source_options
    )
    if not files:
        msg = f"no input files matching {list(cfg.source.suffixes)} under {source_location!r}"
        raise ConfigError(msg)
    logger.info("listed %d input files under %s (%d skipped by suffix)", len(files), source_location, len(skipped))
    io.require_bucket(output_location, to_plain(cfg.output.storage_options), "output")

    if cfg.backend == "ray":
        from pipelines.backends import ray_data

        # Start (or join) Ray and check the plan fits before touching an existing index.
        ray_data.init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.object_store_memory, env_vars=_worker_env())
        ray_data.check_resources_fit(plan.stages, plan.resources)

    location = index.IndexLocation(output_location, to_plain(cfg.output.storage_options))
    book = ledger.Ledger(location)
    try:
        if cfg.output.mode == "overwrite":
            location.clear_tables()
        book.check_config(plan.settings["model"], plan.config_hash, plan.settings)
    except (FileNotFoundError, PermissionError) as exc:
        raise io.storage_error(output_location, exc, "output") from exc
    recovered = book.recover()
    location.write_text(index.CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(redact(to_plain(cfg)))))
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    run_id = uuid.uuid4().hex
    work = book.plan(
        files,
        run_id,
        storage_options=source_options,
        sync=sync,
        sync_root=io.location_uri(source_location, source_options),
        retry_failed=bool(cfg.source.retry_failed),
        hash_threads=int(cfg.source.hash_threads),
    )
    logger.info("plan: %s", work.counts())

    on_pages = None
    if inline_feed is not None:
        endpoint, doc_settings, feed_settings = inline_feed

        def on_pages(pages: pa.Table) -> dict[str, int]:
            return replay.feed_pages(location, endpoint, doc_settings, feed_settings, pages, run_id)

    def write_block(block: pa.Table) -> dict[str, int]:
        counts = location.write_block(block, plan.settings["model"], plan.config_hash, on_pages, run_id=run_id)
        failpoints.hit("after_write_block")
        return counts

    totals: dict[str, int] = {}
    if work.process:
        sources = pa.table(
            {"source_uri": [f.uri for f in work.process], "source_size": [f.size for f in work.process]},
            schema=schema.SOURCE_SCHEMA,
        )
        if cfg.backend == "local":
            from pipelines.backends import local

            totals = local.execute(sources, plan.stages, write_block, docs_per_batch=1)
        else:
            totals = ray_data.execute(
                sources,
                plan.stages,
                plan.resources,
                write_block,
                max_source_blocks=int(cfg.ray.max_source_blocks),
                progress_bars=cfg.ray.progress_bars,
            )
    failpoints.hit("before_commit")
    commit = book.commit(run_id)
    compacted_runs, compact_tags = book.compaction_due()  # this run's, and any a crash interrupted
    compaction = location.compact(compact_tags)
    book.mark_compacted(compacted_runs, compaction)
    wall_s = time.perf_counter() - started
    summary = index.summarize(location, files, work)
    vespa_report = None
    if inline_feed is not None:
        # Feed whatever the inline pass did not get acknowledged, remove stale pages of changed
        # documents and, with sync, pages of documents gone from the source.
        vespa_report = replay.replay(
            location, endpoint, doc_settings, feed_settings, mode="resume", delete_missing=sync
        )
        vespa_report["inline"] = {k: v for k, v in totals.items() if k.startswith("vespa_")}
    pages_embedded = int(totals.get("pages", 0))
    failed_rate = summary["files_failed_entirely"] / len(files)
    report = {
        "run_id": run_id,
        "started_at": started_at.isoformat(),
        "wall_seconds": round(wall_s, 3),
        "pages_embedded": pages_embedded,
        "pages_per_second": round(pages_embedded / wall_s, 3) if wall_s > 0 else None,
        "backend": cfg.backend,
        "mode": cfg.output.mode,
        "source": source_location,
        "index": output_location,
        "model": plan.settings["model"],
        "is_test_model": registry.get_spec(plan.settings["model"]).is_test_model,
        "config_hash": plan.config_hash,
        "settings": plan.settings,
        "plan": work.counts(),
        "recovered_runs": recovered,
        "commit": commit,
        "compaction": compaction,
        "written": totals,
        **summary,
        "failed_rate": round(failed_rate, 4),
        "max_error_rate": max_error_rate,
        "error_rate_exceeded": failed_rate > max_error_rate,
        "files_skipped_by_suffix": skipped,
        "suffixes": list(cfg.source.suffixes),
        "versions": _versions(),
        "vespa": vespa_report,
    }
    location.write_text(index.REPORT_FILE, json.dumps(report, indent=2, default=str))
    return report


def _inline_feed(cfg: DictConfig):
    """(endpoint, document settings, feed settings) when ``vespa.inline`` is on, else None."""
    if not OmegaConf.select(cfg, "vespa.inline", default=False):
        return None
    endpoint = vespa_config.endpoint(cfg).resolved()
    return endpoint, vespa_config.settings(cfg, "documents"), vespa_config.settings(cfg, "feed")


def _absolute(location: str) -> str:
    """Local relative paths become absolute: Ray workers do not share the driver's cwd."""
    if "://" in location:
        return location
    return os.path.abspath(location)


def _worker_env() -> dict[str, str]:
    """Environment the driver passes to Ray workers (importable package, offline hub settings)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    passed = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "PIPELINES_CACHE_DIR", "TOKENIZERS_PARALLELISM")
    for key in (*passed, "PIPELINES_FAILPOINTS", "PIPELINES_FAILPOINTS_ONCE_DIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env
