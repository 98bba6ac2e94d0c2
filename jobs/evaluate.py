"""Retrieval evaluation: index a dataset with several configs, run its queries, compare the metrics.

    python -m jobs.evaluate dataset=<dir> model=tiny [backend=local] [key=value ...]
    python -m jobs.evaluate dataset=hf://datasets/vidore/docvqa_test_subsampled_beir model=colqwen2.5-v0.2

Dataset layouts, what runs and what is written: :mod:`benchmarks.evaluation` (the runner,
:func:`~benchmarks.evaluation.run_evaluation`). This entry point prints the metrics table and maps
errors to the exit status: 0 done; 2 bad configuration or unreadable dataset; 1 report written, but
some input file was unaccounted for or some Vespa operation failed (the report says which).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from benchmarks.evaluation import EvaluationError, run_evaluation
from jobs._common import error, setup_logging
from pipelines import evaluation
from pipelines.errors import ConfigError


def run(cfg: DictConfig, command: str | None = None) -> int:
    """Run the evaluation in this process: print the metrics, return the exit status."""
    try:
        summary = run_evaluation(cfg, command)
    except (ConfigError, evaluation.DatasetError, FileNotFoundError) as exc:
        return error(str(exc))
    except EvaluationError as exc:
        return error(str(exc), code=1)
    if summary["warning"]:
        print(f"WARNING: {summary['warning']}")
    names = list(evaluation.METRIC_NAMES)
    print(f"{'config':<22} {'search':<6} " + " ".join(f"{n:>9}" for n in names))
    for result in summary["results"]:
        values = " ".join(f"{result['metrics'][n]:>9.3f}" for n in names)
        print(f"{result['config']:<22} {result['search']:<6} {values}")
    print(f"report: {Path(cfg.report_dir) / 'evaluation.md'}")
    if summary["problems"]:
        return error("; ".join(summary["problems"]), code=1)
    return 0


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    setup_logging(cfg.log_level)
    overrides = list(HydraConfig.get().overrides.task)
    sys.exit(run(cfg, " ".join(["python -m jobs.evaluate", *(shlex.quote(o) for o in overrides)])))


if __name__ == "__main__":
    main()
