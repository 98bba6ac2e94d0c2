"""Retrieval evaluation data: datasets of queries, relevance judgments (qrels) and a PDF corpus; metrics.

Local dataset layout (BEIR-style files; ``dataset=<dir>``)::

    <dir>/corpus/**/*.pdf      the documents (without a corpus/ directory: the PDFs under <dir> itself)
    <dir>/queries.jsonl        one query per line: {"_id": "q1", "text": "..."}
    <dir>/qrels/<split>.tsv    tab-separated with a header line: query-id  corpus-id  score

A **corpus id** names one page: ``<PDF path relative to the corpus directory, without .pdf>#<page>``,
pages counted from 1, e.g. ``annual_report_2023#2`` or ``2021/q4/report#13``. A qrels ``score`` of 1
or more marks the page relevant (graded scores count as gains in nDCG); 0 or less is not relevant.
Queries are evaluated when they have at least one relevant page; the rest are reported as skipped.

Also accepted, and converted to the above on the fly:

* the sample corpus (:mod:`pipelines.testing.corpus`): ``queries.jsonl`` lines ``{"query", "file_name",
  "page_number"}`` and no ``qrels/``; query ids are ``q001``, ``q002``… in file order, each with its
  one answering page as the only relevant page.
* a ViDoRe BEIR parquet dataset: ``<root>/{corpus,queries,qrels}/<split>-*.parquet`` with columns
  ``(corpus-id, image)``, ``(query-id, query)``, ``(query-id, corpus-id, score)``. ``root`` is a
  Hugging Face dataset (``hf://datasets/vidore/docvqa_test_subsampled_beir``, or just
  ``vidore/docvqa_test_subsampled_beir``, read through fsspec) or a local copy of one. Each page
  image is wrapped as a one-page PDF ``corpus/<corpus-id>.pdf`` so the same pipeline indexes it; its
  page's corpus id is then ``<corpus-id>#1``.

Metrics are computed by ir-measures (:data:`MEASURES`) over every evaluated query: a query the run
has no hit for scores 0, it is not dropped.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ir_measures
from ir_measures import RR, R, nDCG

from pipelines import queries

#: (label in reports, ir-measures measure). MRR is the reciprocal rank of the first relevant page
#: within the run's depth (``top_k`` of the evaluation).
MEASURES: tuple[tuple[str, Any], ...] = (
    ("nDCG@5", nDCG @ 5),
    ("nDCG@10", nDCG @ 10),
    ("Recall@1", R @ 1),
    ("Recall@5", R @ 5),
    ("Recall@10", R @ 10),
    ("MRR", RR),
)
METRIC_NAMES: tuple[str, ...] = tuple(label for label, _ in MEASURES)

SAMPLE_QUERY_KEYS = ("query", "file_name", "page_number")
_HF_PREFIX = "hf://datasets/"
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DatasetError(ValueError):
    """The dataset cannot be read or does not follow a supported layout (the message says which)."""


@dataclass
class EvalDataset:
    """Queries, qrels and the directory of PDFs they refer to, in the local layout's terms.

    ``queries`` maps query id to text in file order; ``qrels`` maps query id to ``{corpus id: score}``
    and holds only evaluated queries (at least one relevant page, present in ``queries``).
    """

    source: str
    layout: str  # "beir" | "sample" | "beir-parquet"
    corpus_dir: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    skipped_queries: list[str] = field(default_factory=list)  # no relevant page judged
    notes: list[str] = field(default_factory=list)

    @property
    def evaluated_queries(self) -> list[str]:
        """Ids of the queries the metrics average over, in file order."""
        return [qid for qid in self.queries if qid in self.qrels]


def page_corpus_id(corpus_dir: str | os.PathLike[str], source_uri: str, page_number: int) -> str:
    """Corpus id of an indexed page: ``<PDF path relative to corpus_dir, without .pdf>#<page_number>``."""
    # The corpus is always a local directory; its files are listed as file:///abs/path URIs.
    path = Path(source_uri.removeprefix("file://"))
    relative = path.resolve().relative_to(Path(corpus_dir).resolve()).as_posix()
    if relative.lower().endswith(".pdf"):
        relative = relative[:-4]
    return f"{relative}#{int(page_number)}"


def corpus_aliases(corpus_dir: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Document id (content hash, as the index computes it) → corpus-id stems of every PDF with those bytes.

    The index job indexes identical files once, under one of their URIs. An evaluation must still
    find such a page under each copy's corpus id, as if every copy had been indexed (identical pages
    score identically, so they would rank next to each other).
    """
    from pipelines import ids

    aliases: dict[str, list[str]] = {}
    root = Path(corpus_dir)
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() == ".pdf":
            stem = path.relative_to(root).as_posix()[:-4]
            aliases.setdefault(ids.doc_id_from_bytes(path.read_bytes()), []).append(stem)
    return aliases


def page_corpus_ids(
    corpus_dir: str | os.PathLike[str], aliases: Mapping[str, list[str]], doc_id: str, source_uri: str, page: int
) -> list[str]:
    """Every corpus id of an indexed page: one per file holding its document's bytes (see :func:`corpus_aliases`)."""
    stems = aliases.get(doc_id)
    if not stems:  # the file changed after the aliases were read: fall back to where it was indexed from
        return [page_corpus_id(corpus_dir, source_uri, page)]
    return [f"{stem}#{int(page)}" for stem in stems]


def load_dataset(
    location: str,
    work_dir: str | os.PathLike[str],
    split: str = "test",
    storage_options: Mapping[str, Any] | None = None,
    image_dpi: float = 200.0,
) -> EvalDataset:
    """Read the dataset at ``location`` (see the module docstring for the layouts).

    A parquet (Hugging Face) dataset is converted into ``work_dir`` (reused when a previous
    conversion completed). ``image_dpi`` is the resolution the page images are declared at in their
    one-page PDFs: at the rasterizer's DPI cap they render back at their own pixel size.
    Raises :class:`DatasetError` with what to fix.
    """
    local = Path(location).expanduser()
    if local.is_dir():
        if _parquet_files(local, "queries", split):
            return _from_parquet(str(local.resolve()), Path(work_dir), split, {}, image_dpi, location)
        return _from_directory(local.resolve(), split, location)
    if location.startswith(_HF_PREFIX) or _HF_REPO.match(location):
        url = location if location.startswith(_HF_PREFIX) else _HF_PREFIX + location
        return _from_parquet(url, Path(work_dir), split, dict(storage_options or {}), image_dpi, location)
    if "://" in location:
        return _from_parquet(location, Path(work_dir), split, dict(storage_options or {}), image_dpi, location)
    msg = (
        f"dataset {location!r} is neither a local directory nor a Hugging Face dataset id; set dataset=<dir> "
        "(layout: corpus/*.pdf, queries.jsonl, qrels/<split>.tsv) or dataset=hf://datasets/<owner>/<name>"
    )
    raise DatasetError(msg)


def _from_directory(root: Path, split: str, source: str) -> EvalDataset:
    queries_file = root / "queries.jsonl"
    if not queries_file.is_file():
        msg = f"no queries.jsonl in dataset directory {str(root)!r}"
        raise DatasetError(msg)
    corpus_dir = root / "corpus" if (root / "corpus").is_dir() else root
    try:
        records = queries.read_objects(queries_file)
    except queries.QueryFileError as exc:
        raise DatasetError(str(exc)) from exc
    qrels_file = root / "qrels" / f"{split}.tsv"
    if records and all(key in records[0][1] for key in SAMPLE_QUERY_KEYS) and not qrels_file.exists():
        texts, qrels = _sample_queries(queries_file)
        layout = "sample"
    else:
        if not qrels_file.is_file():
            msg = f"no qrels file {str(qrels_file)!r} (tab-separated: query-id, corpus-id, score; with a header line)"
            raise DatasetError(msg)
        texts = _beir_queries(records, queries_file)
        qrels = read_qrels_tsv(qrels_file)
        layout = "beir"
    return _assemble(source, layout, corpus_dir, texts, qrels)


def _sample_queries(path: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Sample-corpus queries (one answering page each) as BEIR queries and qrels."""
    from pipelines.testing.corpus import load_queries

    try:
        sample = load_queries(path)  # validates every line
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc
    width = max(3, len(str(len(sample))))
    queries, qrels = {}, {}
    for number, query in enumerate(sample, 1):
        qid = f"q{number:0{width}d}"
        queries[qid] = query.query
        stem = query.file_name[:-4] if query.file_name.lower().endswith(".pdf") else query.file_name
        qrels[qid] = {f"{stem}#{query.page_number}": 1}
    return queries, qrels


def _beir_queries(records: list[tuple[int, dict]], path: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    for lineno, record in records:
        qid, text = record.get("_id"), record.get("text")
        if qid is None or not isinstance(text, str) or not text.strip():
            msg = f"{path}:{lineno}: every line needs '_id' and a non-empty 'text': {record!r:.200}"
            raise DatasetError(msg)
        if str(qid) in texts:
            msg = f"{path}:{lineno}: duplicate query id {qid!r}"
            raise DatasetError(msg)
        texts[str(qid)] = text
    return texts


def read_qrels_tsv(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """BEIR qrels: tab-separated ``query-id, corpus-id, score`` with a header line."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            msg = f"{path}: the first line must be the header 'query-id<TAB>corpus-id<TAB>score', got {header!r}"
            raise DatasetError(msg)
        for lineno, row in enumerate(reader, 2):
            if not row or not "".join(row).strip():
                continue
            try:
                qid, cid, score = row[0].strip(), row[1].strip(), int(row[2])
            except (IndexError, ValueError) as exc:
                msg = f"{path}:{lineno}: expected query-id, corpus-id and an integer score, got {row!r}"
                raise DatasetError(msg) from exc
            qrels.setdefault(qid, {})[cid] = score
    return qrels


def write_qrels_tsv(path: str | os.PathLike[str], qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write qrels in the layout's TSV form (header line, one judged page per line)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["query-id", "corpus-id", "score"])
        for qid, judged in qrels.items():
            for cid, score in judged.items():
                writer.writerow([qid, cid, int(score)])


def _assemble(
    source: str,
    layout: str,
    corpus_dir: Path,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    notes: list[str] | None = None,
) -> EvalDataset:
    notes = list(notes or [])
    unknown = sorted(set(qrels) - set(queries))
    if unknown:
        notes.append(f"{len(unknown)} qrels query ids are not in the queries file, ignored (e.g. {unknown[0]!r})")
    evaluated = {
        qid: judged for qid, judged in qrels.items() if qid in queries and any(score > 0 for score in judged.values())
    }
    skipped = [qid for qid in queries if qid not in evaluated]
    if skipped:
        notes.append(f"{len(skipped)} queries have no relevant page in the qrels and are not evaluated")
    if not evaluated:
        msg = f"dataset {source!r} has no query with a relevant page (qrels score >= 1)"
        raise DatasetError(msg)
    return EvalDataset(source, layout, corpus_dir, queries, evaluated, skipped, notes)


# ---------------------------------------------------------------------------------------------------------------------
# ViDoRe BEIR parquet datasets (Hugging Face or a local copy)
# ---------------------------------------------------------------------------------------------------------------------

_DONE_MARKER = ".converted"


def _parquet_files(root: Path, part: str, split: str) -> list[Path]:
    return sorted((root / part).glob(f"{split}-*.parquet")) or sorted((root / part / split).glob("*.parquet"))


def _from_parquet(
    url: str, work_dir: Path, split: str, storage_options: dict, image_dpi: float, source: str
) -> EvalDataset:
    """Convert a BEIR parquet dataset at ``url`` into the local layout under ``work_dir``, then load it."""
    marker = work_dir / _DONE_MARKER
    if not (marker.is_file() and json.loads(marker.read_text()) == {"source": url, "split": split}):
        _convert_parquet(url, work_dir, split, storage_options, image_dpi)
        marker.write_text(json.dumps({"source": url, "split": split}))
    loaded = _from_directory(work_dir, split, source)
    loaded.layout = "beir-parquet"
    loaded.notes.append(f"converted from {url} (split {split!r}) into {work_dir}: page images as one-page PDFs")
    return loaded


def _convert_parquet(url: str, out: Path, split: str, storage_options: dict, image_dpi: float) -> None:
    import shutil

    import fsspec
    import pyarrow.parquet as pq

    from pipelines.io import read_parquet

    # A previous conversion (another dataset or split, or an interrupted one) must leave no PDFs behind.
    shutil.rmtree(out / "corpus", ignore_errors=True)
    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        parts = {}
        for part in ("corpus", "queries", "qrels"):
            # Uploaded datasets: <split>-NNNNN-of-NNNNN.parquet; the hub's parquet conversion: <split>/NNNN.parquet.
            files = sorted(fs.glob(f"{root}/{part}/{split}-*.parquet"))
            files = files or sorted(fs.glob(f"{root}/{part}/{split}/*.parquet"))
            if not files:
                msg = f"no {part}/{split}-*.parquet (or {part}/{split}/*.parquet) under {url!r}"
                raise DatasetError(msg)
            parts[part] = files
        queries = {}
        for path in parts["queries"]:
            with fs.open(path, "rb") as f:
                table = read_parquet(f, ["query-id", "query"])
            queries.update(zip(map(str, table["query-id"].to_pylist()), table["query"].to_pylist(), strict=True))
        qrels: dict[str, dict[str, int]] = {}
        for path in parts["qrels"]:
            with fs.open(path, "rb") as f:
                table = read_parquet(f, ["query-id", "corpus-id", "score"])
            columns = (table[name].to_pylist() for name in ("query-id", "corpus-id", "score"))
            for qid, cid, score in zip(*columns, strict=True):
                qrels.setdefault(str(qid), {})[f"{_file_stem(cid)}#1"] = int(score)
        corpus_dir = out / "corpus"
        corpus_dir.mkdir(parents=True, exist_ok=True)
        for path in parts["corpus"]:
            with fs.open(path, "rb") as f:
                # Row group by row group: a corpus file holds hundreds of MB of page images.
                parquet = pq.ParquetFile(f)  # read on this thread only: see pipelines.io.read_parquet
                for group in range(parquet.num_row_groups):
                    table = parquet.read_row_group(group, columns=["corpus-id", "image"], use_threads=False)
                    for cid, image in zip(table["corpus-id"].to_pylist(), table["image"].to_pylist(), strict=True):
                        image_to_pdf(_image_bytes(image), corpus_dir / f"{_file_stem(cid)}.pdf", image_dpi)
    except DatasetError:
        raise
    except Exception as exc:
        where = "the Hugging Face hub" if url.startswith(_HF_PREFIX) else url
        msg = (
            f"cannot read the parquet dataset {url!r} from {where} ({type(exc).__name__}: {str(exc)[:300]}). "
            "Without access to it, copy the dataset's corpus/, queries/ and qrels/ parquet files to a local "
            "directory and set dataset=<that directory>, or use the local layout (corpus/*.pdf, queries.jsonl, "
            "qrels/<split>.tsv; see benchmarks/evaluation.py)"
        )
        raise DatasetError(msg) from exc
    with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    write_qrels_tsv(out / "qrels" / f"{split}.tsv", qrels)


def _file_stem(corpus_id: Any) -> str:
    """A corpus id as a safe file name (ids are usually integers; anything else is percent-encoded)."""
    return urllib.parse.quote(str(corpus_id), safe="")


def _image_bytes(image: Any) -> bytes:
    """The encoded bytes of a Hugging Face ``Image`` cell (a struct of bytes and path) or raw bytes."""
    if isinstance(image, dict):
        image = image.get("bytes")
    if not isinstance(image, bytes | bytearray) or not image:
        msg = "corpus image cell has no embedded bytes (images stored as external paths are not supported)"
        raise DatasetError(msg)
    return bytes(image)


def image_to_pdf(data: bytes, path: str | os.PathLike[str], dpi: float = 200.0) -> None:
    """Wrap an encoded page image as a one-page PDF at ``path``, its page sized for ``dpi``.

    The output is deterministic (no creation date), so the document's content hash, and therefore its
    page ids, are stable across conversions.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "PDF", resolution=float(dpi), title=Path(path).stem, creationDate=None, modDate=None)
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------


def run_for_measures(ranked: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """An ir-measures run from ranked corpus ids per query (best first).

    Scores are ``1 / rank``: ir-measures re-sorts by score and breaks ties its own way, so passing
    the engine's raw scores could reorder tied pages; the rank is what was retrieved. A page listed
    twice keeps its best rank.
    """
    run: dict[str, dict[str, float]] = {}
    for qid, corpus_ids in ranked.items():
        scores: dict[str, float] = {}
        for rank, cid in enumerate(corpus_ids, 1):
            scores.setdefault(cid, 1.0 / rank)
        if scores:
            run[qid] = scores
    return run


def compute_metrics(
    qrels: Mapping[str, Mapping[str, int]], ranked: Mapping[str, Sequence[str]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean of each of :data:`MEASURES` over every query in ``qrels``, per-query values).

    ``ranked`` maps query id to corpus ids best first. A query of ``qrels`` with no ranked pages
    counts as 0 for every measure (its per-query values are filled in, not dropped).
    """
    qrels = {qid: dict(judged) for qid, judged in qrels.items()}
    run = run_for_measures({qid: ids for qid, ids in ranked.items() if qid in qrels})
    labels = {str(measure): label for label, measure in MEASURES}
    per_query = {qid: dict.fromkeys(METRIC_NAMES, 0.0) for qid in qrels}
    for metric in ir_measures.iter_calc([measure for _, measure in MEASURES], qrels, run):
        per_query[metric.query_id][labels[str(metric.measure)]] = float(metric.value)
    means = {label: sum(values[label] for values in per_query.values()) / len(per_query) for label in METRIC_NAMES}
    return means, per_query


def chance_metrics(
    qrels: Mapping[str, Mapping[str, int]], corpus_ids: Sequence[str], depth: int, rounds: int = 20, seed: int = 0
) -> dict[str, float]:
    """Expected metrics of a random ranking of ``corpus_ids`` (mean over ``rounds`` seeded shuffles).

    The reference a TEST model's figures should be read against: random weights rank about as well
    as chance.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    universe = np.array(sorted(set(corpus_ids)), dtype=object)
    totals = dict.fromkeys(METRIC_NAMES, 0.0)
    for _ in range(rounds):
        ranked = {qid: list(rng.permutation(universe)[:depth]) for qid in qrels}
        means, _ = compute_metrics(qrels, ranked)
        for name in METRIC_NAMES:
            totals[name] += means[name] / rounds
    return totals


def write_trec_run(path: str | os.PathLike[str], ranked: Mapping[str, Sequence[tuple[str, float]]], tag: str) -> None:
    """TREC run file (``qid Q0 docid rank score tag``) of ``(corpus id, engine score)`` lists."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for qid, hits in ranked.items():
            for rank, (cid, score) in enumerate(hits, 1):
                f.write(f"{qid} Q0 {cid} {rank} {score:.6f} {tag}\n")
