"""Generators of test and demo fixtures; the indexing pipeline never imports this package.

* :mod:`pipelines.testing.corpus`: the deterministic sample corpus (PDFs of several layouts plus
  ``queries.jsonl`` with the page that answers each query), for the demo, the tests, the benchmarks
  and the evaluation. ``python -m pipelines.testing.corpus DIR``.
* :mod:`pipelines.testing.hostile`: broken and hostile PDFs (truncated, encrypted, decompression
  bombs...) for robustness tests. ``python -m pipelines.testing.hostile DIR``.

* :mod:`pipelines.testing.failpoints`: named crash points the crash-resume tests arm.

The evaluation reads the sample corpus's ``queries.jsonl`` through :func:`pipelines.testing.corpus.load_queries`.
Everything is written in code, so no binary fixture lives in the repository.
"""
