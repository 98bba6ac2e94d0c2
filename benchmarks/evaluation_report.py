"""The evaluation report: ``evaluation.md`` (side by side per config), ``evaluation.json`` and a bar chart.

:func:`write_report` takes the summary :func:`benchmarks.evaluation.run_evaluation` returns; every number
in the Markdown comes from it. A TEST model's warning comes before any number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipelines import evaluation


def write_report(summary: dict[str, Any], report_dir: Path, figure: bool = True) -> None:
    """Write ``evaluation.json``, ``evaluation.md`` and (``figure``) ``figures/evaluation.png`` in ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    figure_path = report_dir / "figures" / "evaluation.png"
    if figure:
        plot_results(summary, figure_path)
    (report_dir / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (report_dir / "evaluation.md").write_text(render_markdown(summary, figure_path if figure else None, report_dir))


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_markdown(summary: dict[str, Any], figure_path: Path | None = None, report_dir: Path | None = None) -> str:
    """The human-readable report: warning first, then the side-by-side table and everything it depends on."""
    ds, model, params = summary["dataset"], summary["model"], summary["parameters"]
    lines = ["# Retrieval evaluation", ""]
    if summary["warning"]:
        lines += [
            f"> **⚠️ {summary['warning']}**",
            "> Use a real checkpoint (e.g. `model=colqwen2.5-v0.2`, needs the Hugging Face hub) for meaningful "
            "figures.",
            "",
        ]
    lines += [
        f"Dataset `{ds['source']}` ({ds['layout']} layout, split `{ds['split']}`): {ds['queries_evaluated']} "
        f"queries evaluated, model **{model['name']}**{' (TEST MODEL)' if model['is_test_model'] else ''}, "
        f"run depth {params['top_k']}. Generated {summary['generated_at']}.",
        "",
        "## Results",
        "",
    ]
    metric_names = list(evaluation.METRIC_NAMES)
    header = ["config", "pool factor", "profile", "binary 1st phase", "search", "vectors/page", *metric_names]
    header.append("search ms/query")
    lines += [_row(header), _row(["---"] * 5 + ["---:"] * (len(header) - 5))]
    per_page = {entry["pool_factor"]: entry["vectors_per_page"] for entry in summary["indexes"]}
    for result in summary["results"]:
        lines.append(
            _row(
                [
                    f"`{result['config']}`",
                    result["pool_factor"],
                    result["profile"],
                    "on" if result["binary_first_phase"] else "off (exact)",
                    result["search"],
                    per_page[result["pool_factor"]],
                    *(f"{result['metrics'][name]:.3f}" for name in metric_names),
                    result["search_ms_per_query"],
                ]
            )
        )
    if summary.get("chance"):
        chance = summary["chance"]
        values = [f"{chance[name]:.3f}" for name in metric_names]
        lines.append(_row(["random ranking (chance)", "", "", "", "", "", *values, ""]))
    lines += [
        "",
        "Metrics are means over all evaluated queries, computed with ir-measures (`nDCG@5`, `nDCG@10`, `R@1`, "
        f"`R@5`, `R@10`, `RR`); MRR is the reciprocal rank of the first relevant page within the top "
        f"{params['top_k']}. A query with no relevant page retrieved scores 0. `two_phase` ranks every page by "
        f"hamming MaxSim over the binary vectors and re-ranks the top {params['rerank_count']} with the float "
        "query against the unpacked bits (the Vespa profile); `float` is exact MaxSim over the stored float16 "
        "vectors. The chance row is the mean of 20 seeded random orderings of the indexed pages. Search "
        "ms/query is ranking time only (query encoding is listed below).",
        "",
    ]
    if figure_path is not None:
        shown = os.path.relpath(figure_path, report_dir) if report_dir else str(figure_path)
        lines += [f"![metrics per config]({shown})", ""]
    lines += [
        "## Indexes",
        "",
        _row(["pool factor", "pages", "vectors before → after pooling", "vectors/page", "relevant pages not indexed"]),
        _row(["---:"] * 5),
    ]
    lines += [
        _row(
            [
                entry["pool_factor"],
                entry["pages_indexed"],
                f"{entry['vectors_before_pooling']} → {entry['vectors_stored']}",
                entry["vectors_per_page"],
                entry["relevant_pages_not_indexed"],
            ]
        )
        for entry in summary["indexes"]
    ]
    lines += [
        "",
        "## Dataset",
        "",
        f"- source: `{ds['source']}`, layout `{ds['layout']}`, corpus `{ds['corpus_dir']}`",
        f"- queries: {ds['queries_in_file']} in the queries file, {ds['queries_evaluated']} evaluated, "
        f"{ds['queries_skipped']} without a relevant page; {ds['relevant_judgments']} relevant judgments",
        *(f"- {note}" for note in ds["notes"]),
        "",
        "## Model and parameters",
        "",
        f"- model: `{model['name']}` ({model['checkpoint']}), device {model['device']}, dtype {model['dtype']}"
        + (" — **TEST MODEL, random weights**" if model["is_test_model"] else ""),
        f"- grid: pool factors {params['pool_factors']} × profiles {params['profiles']}; searches "
        f"{params['searches']}; run depth {params['top_k']}; rerank_count {params['rerank_count']}",
        f"- indexing: backend `{params['backend']}`, pixel budget {params['max_pixels']} per page, max "
        f"{params['max_dpi']:g} dpi, {params['image_format']} images between stages",
        f"- query encoding: {params['query_encode_ms_per_query']} ms per query",
    ]
    if params.get("vespa_query"):
        lines.append(f"- Vespa query settings: `{json.dumps(params['vespa_query'])}`")
    machine = summary["machine"]
    lines += [
        "",
        "## Machine and versions",
        "",
        f"- {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB RAM, "
        f"GPU: {machine['gpu'] or 'none'}; {machine['platform']}",
        "- " + ", ".join(f"{name} {version}" for name, version in summary["versions"].items()),
    ]
    if summary["problems"]:
        lines += ["", "## Problems", "", *(f"- {problem}" for problem in summary["problems"])]
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        *(
            [f"python -m pipelines.testing.corpus {ds['source']}   # regenerates the sample corpus (deterministic)"]
            if ds["layout"] == "sample"
            else []
        ),
        summary["command"],
        "```",
        "",
        f"Run files (TREC format) and per-query metrics: `{summary['outputs']['runs']}`.",
        "",
    ]
    return "\n".join(lines)


def plot_results(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per metric, one bar per (config, search)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(evaluation.METRIC_NAMES)
    results = summary["results"]
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, result in enumerate(results):
        xs = [m + (i - (len(results) - 1) / 2) * width for m in range(len(names))]
        label = result["config"] + ("" if result["search"] == "local" else f" ({result['search']})")
        ax.bar(xs, [result["metrics"][n] for n in names], width, label=label)
    if summary.get("chance"):
        for m, name in enumerate(names):
            label = "random ranking (chance)" if m == 0 else None
            ax.hlines(summary["chance"][name], m - 0.45, m + 0.45, colors="black", linestyles="dashed", label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over queries")
    title = f"{summary['dataset']['source']} — model {summary['model']['name']}"
    if summary["is_test_model"]:
        title += "\nTEST MODEL (random weights): these numbers are meaningless"
    ax.set_title(title, fontsize=10, color="firebrick" if summary["is_test_model"] else "black")
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
