"""Report sections 2 and 3: index size per model and format, and ranking fidelity per pool factor and profile."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from benchmarks.report.common import _kib, _num, _save, _table


def _index_size(result: dict, figures: Path) -> str:
    res = result["results"]
    models = res["models"]
    factors = result["params"]["pool_factors"]
    header = ["model", "page", "vectors/page", "float16", "binary"] + [f"binary, pool {f}" for f in factors]
    header += ["index at pool 3 (float16 + binary)"]
    rows = []
    for m in models:
        b = m["bytes_per_page"]
        cells = [m["model"], m["page"], m["vectors"], _kib(b["float16"])]
        cells += [
            f"{_kib(b[k])} ({b[k] / b['float16']:.3f}×)" for k in ["binary"] + [f"binary_pool{f}" for f in factors]
        ]
        index_bytes = b["index_pool3_float16_plus_binary"]
        cells.append(f"{_kib(index_bytes)} ({index_bytes / b['float16']:.3f}×)")
        rows.append(cells)
    sources = _table(
        ["model", "page", "vectors/page", "where the count comes from"],
        [[m["model"], m["page"], m["vectors"], m["source"]] for m in models],
    )
    parquet_rows = []
    for p in res["parquet"]:
        for column in ("embedding", "binary"):
            raw, measured = p[f"{column}_raw_bytes_per_page"], p[f"{column}_bytes_per_page"]
            parquet_rows.append([p["vectors_per_page"], column, _kib(raw), _kib(measured), f"{measured / raw:.3f}×"])
    text = [
        "Bytes per page = vectors × 2·dim B (float16, also Vespa's bfloat16; 256 B at 128-d) or × dim/8 B "
        "(packed sign bits; 16 B at 128-d), dim being each model's vector width; pooling "
        "leaves `n // factor` vectors (colpali-engine's cluster count). Ratios are to the unpooled float16 page.",
        "",
        _table(header, rows),
        "Vector counts used:",
        "",
        sources,
        f"Measured Parquet bytes per page (zstd, as `pipelines/index.py` writes; {res['parquet'][0]['pages']} pages "
        "of the synthetic clustered set, so real vectors may compress slightly differently):",
        "",
        _table(["vectors/page", "column", "raw", "Parquet (zstd)", "ratio"], parquet_rows),
    ]
    deployed = [m for m in models if "deployed" in m]
    if deployed:
        d0 = deployed[0]["deployed"]
        text += [
            "",
            f"Deployed layout per part (candidates: binary at pool factor {d0['pool_factor']}, in memory with HNSW; "
            f"re-ranking vectors: float at pool factor {d0['rerank_pool_factor']}, bfloat16 paged to disk in Vespa; "
            "the HNSW figure is an estimate: 64 level-0 links of 4 bytes per candidate vector):",
            "",
            _table(
                [
                    "model",
                    "page",
                    "memory: binary",
                    "memory: HNSW (est.)",
                    "memory: page vector",
                    "memory: MUVERA",
                    "disk: re-ranking bfloat16",
                    "index (raw)",
                ],
                [
                    [m["model"], m["page"]]
                    + [_kib(m["deployed"][key]) for key in ("memory_binary", "memory_hnsw_estimate")]
                    + [_kib(m["deployed"].get(key)) for key in ("memory_page_vector", "memory_muvera")]
                    + [_kib(m["deployed"][key]) for key in ("disk_rerank_bfloat16", "index_raw")]
                    for m in deployed
                ],
            ),
        ]
    letter = [m for m in models if m["page"].startswith("US Letter") or m["page"].startswith("any")]
    keys = ["float16", "binary"] + [f"binary_pool{f}" for f in factors] + ["index_pool3_float16_plus_binary"]
    fig, ax = plt.subplots(figsize=(8.5, 3.4))
    width = 0.8 / len(keys)
    cmap = plt.get_cmap("tab10")
    for i, key in enumerate(keys):
        ratio = letter[0]["bytes_per_page"][key] / letter[0]["bytes_per_page"]["float16"]
        values = [m["bytes_per_page"][key] / 1024 for m in letter]
        label = "float16 (baseline)" if key == "float16" else f"{key} ({ratio:.3f}× float16)"
        ax.bar([x + i * width for x in range(len(letter))], values, width=width, color=cmap(i), label=label)
    ax.set_xticks(
        [x + 0.4 - width / 2 for x in range(len(letter))],
        [f"{m['model'].split(' / ')[0].replace('-256m', '')}\n{m['vectors']} vectors" for m in letter],
        fontsize=7,
    )
    ax.set_yscale("log")
    ax.set_ylim(top=max(m["bytes_per_page"]["float16"] for m in letter) / 1024 * 40)  # room for the legend
    ax.set_ylabel("KiB per page")
    ax.legend(fontsize=6, ncol=3, loc="upper center")
    ax.set_title("US Letter page (ColPali: any page); ratios to unpooled float16 in the legend", fontsize=9)
    text.append(_save(fig, figures, "index_size"))
    return "\n".join(text)


def _fidelity(result: dict, figures: Path) -> str:
    sets = result["results"]["sets"]
    k = result["params"]["k"]
    default = result["params"].get("default_setting", {})
    text = [
        f"Reference: exact float MaxSim over the **unpooled** vectors as stored (float16); its top-{k} per query is "
        f"the relevant set, graded by rank (rank 1 = {k}, ..., rank {k} = 1). recall@{k} = share of the exact top-{k} "
        f"found, nDCG@{k} with those grades (ir-measures). Settings: pool factor of the candidate (binary) vectors × "
        "retrieval (`all` pages, or Vespa's per-token `nearest_neighbor` with `target_hits` per query token, exact "
        "here) × `rerank_count`. `two_phase` (deployed default) = hamming first phase on the retrieved pages, then "
        "exact float MaxSim over the **unpooled** float16 re-ranking vectors on the top `rerank_count`; "
        "`two_phase_unpacked` = the former default (float query × unpacked bits, rerank 100); `binary` = first phase "
        "only; `float` = exact MaxSim over the pooled float vectors (pooling's own loss). Memory bytes per page: "
        "packed bits, plus an HNSW estimate (64 level-0 links of 4 bytes per vector); disk: the paged bfloat16 "
        f"re-ranking vectors. Latency: LocalIndex.search per query on this set, this machine. Default: `{default}`. "
        "One vector per page (pool –): `muvera <dim>` (MUVERA encodings) and `page_vector` (mean vectors) retrieve "
        "`target_hits` pages by their single-vector score and re-rank all of them by exact MaxSim over the unpooled "
        "vectors; their memory is the bfloat16 vector plus one vector's HNSW links.",
        "",
    ]
    for name, data in sets.items():
        stats = data["statistics"]
        text.append(f"**{name}** — {data['pages']} pages, {data['queries']} queries. {data['description']}")
        text.append("")
        text.append(
            f"Statistics: {stats['vectors_per_page_mean']:.0f} vectors/page; mean cosine of random vector pairs "
            f"{stats['mean_cosine_same_page']:.3f} within a page, {stats['mean_cosine_other_pages']:.3f} across "
            "pages; "
            f"participation ratio of the covariance {stats['participation_ratio']:.1f} (of 128); "
            f"positive-bit share {stats['positive_bit_fraction']:.3f}.\n"
        )
        has_target = any("target_in_top_k" in r for r in data["rows"])
        header = ["pool", "profile", "retrieval", "target_hits", "rerank", "pages reranked", "ms/query"]
        header += ["memory B/page", "disk B/page", f"recall@{k}", f"nDCG@{k}", f"min recall@{k}"]
        header += [f"target in top-{k}"] if has_target else []
        rows = []
        for r in data["rows"]:
            costs = r.get("bytes_per_page") or {}
            memory = sum(value for key, value in costs.items() if key.startswith("memory_"))
            seconds = r.get("seconds_per_query")
            pool = "–" if r["pool_factor"] is None else r["pool_factor"]
            cells = [
                pool,
                r.get("single_vector") or r["profile"],
                r.get("retrieval", "all"),
                r.get("target_hits") or "–",
            ]
            cells += [r.get("rerank_count") or "–", _num(r.get("reranked_pages_mean"), 0)]
            cells += [_num(1000 * seconds, 1) if seconds is not None else "–"]
            cells += [_num(memory, 0) if costs else "–", _num(costs.get("disk_float"), 0) if costs else "–"]
            cells += [f"{r['recall']:.3f}", f"{r['ndcg']:.3f}", f"{r['recall_min']:.2f}"]
            cells += [f"{r['target_in_top_k']:.3f}"] if has_target else []
            rows.append(cells)
        text.append(_table(header, rows))
        needed = data.get("depth_needed") or []
        if needed:
            text.append(
                f"\nFirst-phase depth (pages re-ranked) needed to cover the whole exact top-{k}, per query "
                "(inf: a page of it was never retrieved):\n"
            )
            text.append(
                _table(
                    ["pool", "retrieval", "target_hits", "pages retrieved", "covered", "p50", "p90", "p99"],
                    [_depth_cells(d) for d in needed],
                )
            )
        pairs = data.get("side_by_side") or []
        if pairs:
            names = sorted({key for pair in pairs for key in pair if key.startswith(("muvera", "page_vector"))})
            text.append(
                "\nPer-token nearest neighbours and one vector per page at equal candidate counts (every candidate "
                "re-ranked by exact MaxSim): recall@10 / ms per query / memory B per page.\n"
            )
            header = ["pool", "target_hits", "candidates", "per-token", *names]
            rows = []
            for pair in pairs:
                cells = [pair["pool_factor"], pair["target_hits"], pair["candidates"]]
                for column in ("per_token", *names):
                    entry = pair.get(column)
                    seconds = entry and entry.get("seconds_per_query")
                    cells.append(
                        "–"
                        if not entry
                        else f"{entry['recall']:.3f} / {_num(1000 * seconds, 0) if seconds else '–'} ms / "
                        f"{_num(entry['memory_bytes_per_page'], 0)} B"
                    )
                rows.append(cells)
            text.append(_table(header, rows))
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        settings = sorted(
            {(r["pool_factor"], r.get("target_hits") or 0) for r in data["rows"] if r["profile"] == "two_phase"}
        )
        cmap = plt.get_cmap("viridis")
        for i, (factor, hits) in enumerate(settings):
            points = [
                (r["rerank_count"], r["recall"])
                for r in data["rows"]
                if r["profile"] == "two_phase" and r["pool_factor"] == factor and (r.get("target_hits") or 0) == hits
            ]
            label = f"pool {factor}, " + (f"{hits} hits/token" if hits else "all pages")
            color = cmap(i / max(1, len(settings) - 1) * 0.9)
            ax.plot(*zip(*points, strict=True), "-", marker="o", markersize=3, color=color, label=label)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("rerank_count (pages given to the float second phase)")
        ax.set_ylabel(f"recall@{k} of exact unpooled top-{k}")
        ax.set_title(f"{name}: two_phase (float rerank over unpooled vectors)", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        text.append(_save(fig, figures, f"fidelity_{name}"))
    if result["results"].get("growth"):
        text.append(_growth(result["results"]["growth"], k))
    return "\n".join(text)


def _growth(growth: list[dict], k: int) -> str:
    """The depth-growth study (benchmarks.fidelity.depth_growth): depth needed, recall and latency per corpus size."""
    names = list(growth[0]["depth_needed"])
    sizes = ", ".join(f"{g['pages']:,}" for g in growth)
    text = [
        f"\n**Growth** — synthetic set at {sizes} pages "
        f"({growth[0]['queries']} queries; pool-{growth[0]['pool_factor']} candidates, MUVERA "
        f"{growth[0]['muvera_dim']} values). First-phase depth needed to cover the exact top-{k} (p50 / p90 / p99; "
        "inf: never retrieved):\n",
        _table(
            ["retrieval", *[f"{g['pages']:,} pages" for g in growth]],
            [
                [name]
                + [
                    " / ".join(_num(g["depth_needed"][name][f"p{p}"], 0) for p in (50, 90, 99))
                    + f" (of {_num(g['depth_needed'][name]['retrieved_pages_mean'], 0)})"
                    for g in growth
                ]
                for name in names
            ],
        ),
        f"\nrecall@{k} / ms per query (LocalIndex.search) per setting; exact MaxSim over every page: "
        + ", ".join(f"{_num(1000 * g['exact_seconds_per_query'], 0)} ms at {g['pages']:,}" for g in growth)
        + ":\n",
    ]
    keys = [(r["profile"], r["retrieval"], r["target_hits"], r["rerank_count"]) for r in growth[-1]["settings"]]
    rows = []
    for key in keys:
        cells = [key[0], key[1], key[2] or "–", key[3]]
        for g in growth:
            match = [
                r for r in g["settings"] if (r["profile"], r["retrieval"], r["target_hits"], r["rerank_count"]) == key
            ]
            cells.append(
                f"{match[0]['recall']:.3f} / {_num(1000 * match[0]['seconds_per_query'], 0)} ms" if match else "–"
            )
        rows.append(cells)
    text.append(_table(["profile", "retrieval", "target_hits", "rerank", *[f"{g['pages']:,}" for g in growth]], rows))
    costs = growth[-1]["bytes_per_page"]
    text.append(
        "Bytes per page in memory: per-token pool-3 binary + HNSW "
        f"{_num(costs['per_token_memory'], 0)}, MUVERA {_num(costs['muvera_memory'], 0)}, page vector "
        f"{_num(costs['page_vector_memory'], 0)}; on disk (unpooled bfloat16 re-ranking vectors) "
        f"{_num(costs['rerank_disk'], 0)}.\n"
    )
    return "\n".join(text)


def _depth_cells(d: dict) -> list:
    pool = "–" if d["pool_factor"] is None else d["pool_factor"]
    cells = [pool, d["retrieval"], d["target_hits"] or "–", _num(d["retrieved_pages_mean"], 0)]
    return [*cells, f"{d['covered_share']:.3f}", *(_num(d[f"depth_p{p}"], 0) for p in (50, 90, 99))]
