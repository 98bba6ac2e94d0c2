"""Report sections 4 to 7: local search speed and memory, hybrid ranking, feed serialization, pooling cost, whole
pipeline."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from benchmarks.report.common import BASE, OTHER, OURS, WARN, _kib, _mib, _num, _save, _table, _x


def _search(result: dict, figures: Path) -> str:
    runs, params = result["results"]["runs"], result["params"]
    text = [
        f"Synthetic index of real shape: {params['vector_shape']}; queries of {params['query_tokens']} tokens × "
        f"{params.get('dim', 128)} "
        f"({params['data']}). `two_phase` uses rerank_count {params['rerank_count']}; top-{params['top_k']}. The "
        "baseline is colpali-engine's `BaseVisualRetrieverProcessor.score_multi_vector` on the same float vectors "
        f"(as float32 tensors, {params['smv_chunk_pages']:,} pages per call to bound memory), once with all queries "
        "in one call (its best throughput) and once one query per call (like `LocalIndex.search`). Converting the "
        "float16 rows to its float32 input is not timed. Threads: torch "
        f"{params['torch_threads']}, first phase {params['first_phase_threads']}, BLAS default. Memory: resident = "
        "bytes the method needs held (LocalIndex: packed bits and their word-column copy; float: + float16 "
        "vectors; score_multi_vector: float32 tensors, computed); transient = measured peak RSS growth during the "
        "queries (`VmHWM` after a reset).",
        "",
    ]
    rows = []
    for run in runs:
        for method, m in run["methods"].items():
            rows.append(
                [
                    f"{run['pages']:,}",
                    f"{run['vectors']:,}",
                    method,
                    f"{m['seconds_per_query'] * 1000:,.1f}",
                    _num(m["queries_per_second"], 2),
                    _x(m["speedup_vs_smv_batched"]),
                    _x(m.get("speedup_vs_smv_per_query")),
                    _mib(m["resident_bytes"]),
                    _mib(m["transient_peak_bytes"]),
                ]
            )
    header = ["pages", "vectors", "method", "ms/query", "queries/s", "× smv batched", "× smv per query"]
    header += ["resident", "transient peak"]
    text.append(_table(header, rows))
    extra = []
    for run in runs:
        extra.append(
            [
                f"{run['pages']:,}",
                run["queries"],
                f"{run['float_top10_equal_smv']} of {run['queries']}",
                f"{run['float_max_abs_score_diff_vs_smv']:.2e}",
                f"{run['two_phase_top10_overlap_with_float']:.2f}",
                f"{run['build_seconds']:.1f} s / {_mib(run['build_peak_bytes'])}",
                run["smv_input"],
            ]
        )
    text.append(
        _table(
            [
                "pages",
                "queries",
                "float top-10 = smv top-10",
                "max |score diff|",
                "two_phase ∩ float top-10",
                "index build (time / peak RSS growth)",
                "smv input",
            ],
            extra,
        )
    )
    text.append(
        "The two_phase ∩ float overlap is on isotropic random vectors (no structure to find), so it is not a quality "
        "figure; see section 3 for fidelity.\n"
    )
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    colors = {"two_phase": OURS, "float": OTHER, "smv_batched": BASE, "smv_per_query": BASE}
    panels = (
        ("speedup_vs_smv_batched", "÷ smv, all queries per call", ("two_phase", "float", "smv_per_query")),
        ("speedup_vs_smv_per_query", "÷ smv, one query per call", ("two_phase", "float", "smv_batched")),
    )
    for ax, (key, title, methods) in zip(axes, panels, strict=True):
        shown = [r for r in runs if all(key in m for m in r["methods"].values())]
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            xs = [j + i * width for j, r in enumerate(shown) if method in r["methods"]]
            values = [r["methods"][method][key] for r in shown if method in r["methods"]]
            ax.bar(xs, values, width=width, color=colors[method], label=method, alpha=1.0 if i == 0 else 0.8)
            for x, v in zip(xs, values, strict=True):
                ax.text(x, v, f"{v:.1f}×", ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(3.0, color=WARN, linestyle="--", linewidth=1, label="required 3× (two_phase, 10k)")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shown))], [f"{r['pages']:,} pages" for r in shown])
        ax.set_yscale("log")
        ax.set_title("queries/s " + title + " (smv = score_multi_vector)", fontsize=8)
        ax.legend(fontsize=6, loc="lower left")
    text.append(_save(fig, figures, "search"))
    return "\n".join(text)


def _feed(result: dict, figures: Path) -> str:
    rows_in = result["results"]["rows"]
    rows = [
        [
            r["vectors_per_page"],
            r["fields"],
            _kib(r["hex"]["bytes_per_page"]),
            _kib(r["list"]["bytes_per_page"]),
            _x(r["bytes_ratio_hex_over_list"]),
            f"{r['hex']['ms_per_page']:.2f}",
            f"{r['list']['ms_per_page']:.2f}",
            _x(r["time_ratio_hex_over_list"]),
            f"{r['hex']['gzip_bytes_per_page'] / r['list']['gzip_bytes_per_page']:.2f}×",
        ]
        for r in rows_in
    ]
    text = [
        "`benchmarks.feed`: the document JSON we POST (compact hex tensors) vs pyvespa's list form for the same "
        f"{result['params']['pages']} synthetic pages (unit vectors rounded to float16, packed bits, a page of text), "
        "serialized in the same process, best of 3. Ratios below 1 favour the hex form.",
        "",
        _table(
            [
                "vectors/page",
                "fields",
                "hex",
                "list",
                "bytes hex/list",
                "hex ms/page",
                "list ms/page",
                "time hex/list",
                "gzip hex/list",
            ],
            rows,
        ),
    ]
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    labels = [f"{r['vectors_per_page']}\n{r['fields']}" for r in rows_in]
    xs = range(len(rows_in))
    ax.bar(
        [x - 0.2 for x in xs], [r["bytes_ratio_hex_over_list"] for r in rows_in], width=0.4, color=OURS, label="bytes"
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [r["time_ratio_hex_over_list"] for r in rows_in],
        width=0.4,
        color=OTHER,
        label="CPU time",
    )
    ax.axhline(1.0, color=BASE, linewidth=1, label="pyvespa list form = 1")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("hex form ÷ list form")
    ax.legend(fontsize=7)
    text.append(_save(fig, figures, "feed"))
    return "\n".join(text)


def _pooling(result: dict, figures: Path) -> str:
    res, params = result["results"], result["params"]
    rows = [
        [
            r["vectors_per_page"],
            _num(r["pooled_vectors_per_page"], 0),
            _num(r["stage_cpu_ms_per_page"], 1),
            _num(r["direct_cpu_ms_per_page"], 1),
            _x(r["stage_over_direct_cpu"]),
            _num(r["stage_wall_ms_per_page"], 1),
            _num(r["direct_wall_ms_per_page"], 1),
            "yes" if r["same_output"] else "NO",
        ]
        for r in res["rows"]
    ]
    cores = [
        [c["label"], _num(c["pages_per_second"], 2), c["vectors_measured"], _num(c["cores_per_gpu"], 2)]
        for c in res["cores_per_gpu"]
    ]
    text = [
        f"{params['pages']} synthetic pages per vector count (clustered set, see section 3), pool factor "
        f"{params['pool_factor']}, best of {params['repeats']}, interleaved. CPU ms = `time.process_time` (all "
        f"threads of the process; torch uses {params['torch_threads']}). `PoolStage.process_batch` on a page-record "
        "table "
        "(float16 bytes in and out) vs `HierarchicalTokenPooler().pool_embeddings(list_of_tensors, pool_factor)` on "
        "the same float16-rounded vectors.",
        "",
        _table(
            [
                "vectors/page",
                "after pooling",
                "stage CPU ms/page",
                "direct CPU ms/page",
                "stage ÷ direct",
                "stage wall ms",
                "direct wall ms",
                "same vectors",
            ],
            rows,
        ),
        "PoolStage calls the same `pool_embeddings` per page; what it adds is decoding the float16 bytes, "
        "re-encoding the result and replacing two Arrow columns. For scale only (another measurement, not a "
        "ratio from this run): ../shared/reference/colpali.md reports 58 / 129 ms per page for n = 760 / 1030 "
        "with a single-thread numpy/scipy re-implementation on a 2-core machine.",
        "",
        "CPU cores pooling needs per GPU = GPU pages/s × pooling CPU-seconds per page (our stage, nearest measured "
        "vector count). Only the first throughput is sourced; the others are labelled assumptions.",
        "",
        _table(["GPU embedding throughput", "pages/s", "vectors/page", "cores per GPU"], cores),
    ]
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    labels = [f"{r['vectors_per_page']} vectors" for r in res["rows"]]
    values = [r["stage_over_direct_cpu"] for r in res["rows"]]
    ax.bar(labels, values, color=OURS)
    for x, (v, r) in enumerate(zip(values, res["rows"], strict=True)):
        ax.text(
            x,
            v,
            f"{v:.2f}×\n({r['stage_cpu_ms_per_page']:.0f} vs {r['direct_cpu_ms_per_page']:.0f} ms)",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.axhline(1.0, color=BASE, linewidth=1, label="HierarchicalTokenPooler direct = 1")
    ax.set_ylim(0, max([*values, 1.0]) * 1.35)
    ax.set_ylabel("CPU time, PoolStage ÷ direct")
    ax.legend(fontsize=7)
    text.append(_save(fig, figures, "pooling"))
    return "\n".join(text)


def pipeline_ratios(data: dict) -> list[dict]:
    """Each run of a ``run_benchmark`` dict with ``ratio``: its pages/s over the baseline backend's run.

    The baseline is the run whose backend is ``data["baseline"]`` with the fewest CPUs (1 when present).
    """
    runs = data["runs"]
    candidates = [r for r in runs if r["backend"] == data.get("baseline", "local")] or runs
    base = min(candidates, key=lambda r: r["num_cpus"])
    return [{**r, "ratio": r["pages_per_second"] / base["pages_per_second"], "baseline_run": r is base} for r in runs]


def _pipeline(result: dict, figures: Path) -> str:
    res = result["results"]
    if res["status"] != "ok":
        error = (res.get("error") or "")[-1200:]
        return (
            f"Status: **{res['status']}**. `benchmarks.pipeline.run_benchmark(source, model, cpus)` is missing or "
            "failed; this section renders its dict once it returns one.\n\n```\n" + error + "\n```\n"
        )
    data = res["data"]
    runs = pipeline_ratios(data)
    stages = list(dict.fromkeys(s for r in runs for s in r.get("stage_seconds", {})))  # the runs' own order
    rows = [
        [
            r["backend"] + (f" (torch {r['threads']} thread{'s' * (r['threads'] > 1)})" if "threads" in r else ""),
            r["num_cpus"],
            f"{r['wall_seconds']:.1f}",
            f"{r['pages_per_second']:.3f}",
            _x(r["ratio"]) + (" (baseline)" if r["baseline_run"] else ""),
        ]
        + [f"{r.get('stage_seconds', {}).get(s, 0):.1f}" for s in stages]
        for r in runs
    ]
    text = [
        f"`benchmarks.pipeline.run_benchmark`: {data.get('pages')} pages of `{data.get('source')}` with model "
        f"`{data.get('model')}`; each run's pages/s relative to the `{data.get('baseline', 'local')}` backend's "
        "run with the fewest CPUs, in the same benchmark run (the jobs run one after the other, each a fresh "
        "`jobs.index` process; see `benchmarks/pipeline.py`). Stage seconds are each run's own split (Ray: summed "
        "over workers).",
        "",
        _table(["backend", "CPUs", "wall s", "pages/s", "× baseline"] + [f"{s} s" for s in stages], rows),
    ]
    base = next(r for r in runs if r["baseline_run"])
    staged = sum(base.get("stage_seconds", {}).values())
    text.append(
        f"In the baseline run the stages account for {staged:.1f} s of {base['wall_seconds']:.1f} s wall; the rest "
        "is what a whole job pays besides the stages (imports, model loading, Ray start-up where used, listing, "
        "accounting), which dominates at this corpus size.\n"
    )
    text += _pipeline_details(data)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.0))
    labels = [
        f"{r['backend']}\n{r['num_cpus']} CPU" + (f", {r['threads']} thr" if "threads" in r else "") for r in runs
    ]
    left.bar(labels, [r["ratio"] for r in runs], color=[BASE if r["baseline_run"] else OURS for r in runs])
    left.axhline(1.0, color=BASE, linewidth=1)
    left.set_ylabel("pages/s ÷ baseline run")
    bottoms = [0.0] * len(runs)
    for stage in stages:
        shares = []
        for r in runs:
            total = sum(r.get("stage_seconds", {}).values()) or 1.0
            shares.append(r.get("stage_seconds", {}).get(stage, 0) / total)
        right.bar(labels, shares, bottom=bottoms, label=stage)
        bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
    right.set_ylabel("share of stage seconds")
    right.legend(fontsize=6)
    text.append(_save(fig, figures, "pipeline"))
    return "\n".join(text)


def _pipeline_details(data: dict) -> list[str]:
    """Ray vs loop ratios, Ray Data's per-operator utilization, job start-up and the embed actor's time split, for
    whichever of them the run recorded (benchmarks.pipeline)."""
    from benchmarks.pipeline import ray_vs_loop

    text = []
    for n, ratios in ray_vs_loop(data).items():
        text.append(
            f"Ray over the loop at {n} CPUs: **{_x(ratios['vs_default_loop'])}** the loop's default run (torch "
            f"threads = CPUs), **{_x(ratios['vs_fastest_loop'])}** its fastest run.\n"
        )
    for run in data["runs"]:
        if not run.get("operators"):
            continue
        rows = [
            [
                " → ".join(op["stages"]),
                op["kind"],
                op.get("workers") or "–",
                op["tasks"],
                f"{op['busy_s']:.1f}",
                f"{op['busy']:.0%}",
                f"{op.get('idle', 0):.0%}" if op["kind"] == "actors" else "–",
                f"{op['backpressured']:.0%}",
            ]
            for op in run["operators"]
        ]
        text.append(
            f"Ray Data's per-operator figures for the Ray run at {run['num_cpus']} CPUs (busy = running tasks or "
            "actor calls over the operator's wall time; backpressured = time Ray Data held back new submissions):\n"
        )
        text.append(_table(["operator", "kind", "actors", "tasks", "busy s", "busy", "idle", "backpressured"], rows))
    startup = data.get("startup")
    if startup:
        rows = [
            [r["code"], r["backend"], f"{r['wall_seconds']:.1f}", f"{r['cpu_seconds']:.2f}"] for r in startup["runs"]
        ]
        cpus = startup["num_cpus"]
        text.append(f"Job start-up (a one-page job, {cpus} CPUs; code `now` against older checkouts):\n")
        text.append(_table(["code", "backend", "wall s", "driver CPU s"], rows))
        for label, ratio in startup.get("ratios", {}).items():
            parts = ", ".join(f"{backend} {_x(v['wall'])} wall, {_x(v['cpu'])} CPU" for backend, v in ratio.items())
            text.append(f"`{label}` ÷ `now`: {parts}.\n")
    split = data.get("embed_split")
    if split:
        keys = ["preprocess_s_per_page", "collate_s_per_page", "forward_s_per_page", "actor_cpu_s_per_page"]
        rows = [[when, *[f"{1000 * split[when][key]:.1f}" for key in keys]] for when in ("before", "now")]
        text.append(
            f"Embed actor time per page over {split['pages']} pages (`{split['model']}`; `before`: the actor "
            "preprocesses each image itself; `now`: the CPU stage did, "
            f"{1000 * split['now']['preprocess_stage_s_per_page']:.1f} ms/page there). The actor does "
            f"**{_x(split['actor_ratio'])}** less CPU work per page:\n"
        )
        text.append(_table(["layout", "preprocess ms", "collate ms", "forward ms", "actor CPU ms"], rows))
    return text


def _hybrid(result: dict, figures: Path) -> str:
    """benchmarks.search.bench_hybrid: each profile's metrics over the sample corpus's qrels."""
    res, params = result["results"], result["params"]
    metrics = res["metrics"]
    names = list(next(iter(metrics.values())))
    rows = [[profile, *[f"{m[name]:.3f}" for name in names]] for profile, m in metrics.items()]
    text = [
        f"The sample corpus ({res['pages']} pages) and its {res['queries']} queries, each answered by one page "
        f"(qrels from the generator), indexed with model `{params['model']}` (deployed defaults: rerank "
        f"{params['rerank_count']}, target_hits {params['target_hits']}); metrics by ir-measures as `jobs.evaluate`. "
        f"{res.get('queries_answered_by_a_page_without_text', 0)} queries are answered by a page without a text "
        "layer (a scan), which BM25 cannot find.",
        "",
        _table(["profile", *names], rows),
    ]
    if params["model"] == "tiny":
        text.append(
            "`tiny` is a random-weight TEST model, so its vectors carry no meaning: here the text layer is all the "
            "signal there is, and the table shows the fusion passes it through (linear fusion with Vespa's weights "
            "keeps BM25's answers; reciprocal rank fusion gives the random MaxSim ranking an equal say and ranks them "
            "lower). Whether the text layer helps a real ColPali model needs a real checkpoint: call "
            "`benchmarks.search.bench_hybrid(model=<registry name>)` where one is available.\n"
        )
    return "\n".join(text)
