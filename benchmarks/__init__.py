"""Benchmarks of the pipeline's parts against their baselines, and the evaluation runner: JSON results plus reports.

    python -m benchmarks NAME [--size N [N ...]] [--repeats 3] [--out reports]
    python -m benchmarks all [--size search=1000,10000 fidelity=500 ...] [--out reports]
    python -m benchmarks report [--out reports]      # re-render benchmarks.md from <out>/results/*.json

``NAME`` is one of ``rasterize``, ``index_size``, ``fidelity``, ``search``, ``feed``, ``pooling``, ``pipeline``,
``scale``, ``gpu`` (embedding throughput, tokens/s and MFU on a GPU: :mod:`benchmarks.gpu`) or ``all``. Every
benchmark is small by default; ``--size`` scales it. Each writes ``<out>/results/<name>.json``;
afterwards the report (``<out>/benchmarks.md`` and ``<out>/figures/*.png``) is re-rendered from every result present.

The machine these run on is shared and noisy. Every figure is therefore a ratio of our component to its baseline
measured in the same process, interleaved (the two alternate within each repeat) and repeated, with the best of N
taken for each side. Where embeddings are involved the model is ``tiny``, the random-weight TEST model: its vectors
say how much the *input* changed the output, never how well anything retrieves.

Modules:

* :mod:`benchmarks.cli`: run benchmarks by name and write their results (``python -m benchmarks``);
* :mod:`benchmarks.common`: measuring helpers (CPU seconds, peak RSS, checks, machine info, index-shaped data);
* :mod:`benchmarks.vectors`: synthetic clustered multi-vectors;
* one module per benchmark: :mod:`~benchmarks.rasterize`, :mod:`~benchmarks.index_size`,
  :mod:`~benchmarks.fidelity`, :mod:`~benchmarks.search`, :mod:`~benchmarks.feed`, :mod:`~benchmarks.pooling`,
  :mod:`~benchmarks.pipeline` (the last two also have their own CLI: ``python -m benchmarks.feed``,
  ``python -m benchmarks.pipeline``);
* :mod:`benchmarks.report`: ``benchmarks.md`` and its figures from the JSON results;
* :mod:`benchmarks.evaluation` and :mod:`benchmarks.evaluation_report`: the retrieval evaluation behind
  ``python -m jobs.evaluate`` (indexing a dataset per config, ranking its queries, ``evaluation.md``).
"""
