"""Whole-job throughput: the Ray pipeline vs the same stages in a plain single-process loop.

    python -m jobs.benchmark_pipeline --source data/sample [--model tiny] [--num-cpus 2]

Both runs index the same files with the same config into temporary directories, in this one
process, one after the other; the figure that matters is the ratio (the machine is noisy). Wall time
is the whole job: listing, start-up (Ray, model loading), all stages, writing, accounting.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from pipelines.pipeline import run_index

CONF = Path(__file__).resolve().parents[1] / "conf"


def run(source: str, backend: str, model: str, num_cpus: int | None, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{backend}-") as out:
        overrides = [f"source.location={source}", f"output.location={out}", f"model={model}", f"backend={backend}"]
        if num_cpus:
            overrides.append(f"ray.num_cpus={num_cpus}")
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("index", overrides=overrides + extra)
        report = run_index(cfg)
    return {k: report[k] for k in ("backend", "pages_indexed", "wall_seconds", "pages_per_second", "files_listed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both runs")
    args = parser.parse_args()
    local = run(args.source, "local", args.model, None, args.overrides)
    ray_run = run(args.source, "ray", args.model, args.num_cpus, args.overrides)
    result = {
        "local": local,
        "ray": ray_run,
        "ray_over_local_pages_per_second": round(ray_run["pages_per_second"] / local["pages_per_second"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
