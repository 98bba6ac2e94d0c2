"""The Vespa application package, defined once in code with pyvespa.

One document per page (schema ``pdf_page``): binary patch vectors ``tensor<int8>(patch{}, v[dim / 8])``
(``dim``: the model's vector width, ``vespa.app.embedding_dim``; 128 -> ``v[16]``) with an HNSW index over
hamming distance (retrieval and first phase; pooled by ``pooling.pool_factor``), bfloat16 float patch vectors
``v[dim]`` on a paged attribute (exact re-ranking and evaluation; the index's
``rerank_embedding``, e.g. unpooled, when it has one, else its ``embedding``), the page text and document title as
BM25 fields, provenance attributes and a small thumbnail.

Rank profiles carry the same names and the same math as the local search
(:mod:`pipelines.search`):

* ``binary``     first phase only: hamming MaxSim, ``sum_q max_p 1 / (1 + hamming(q, p))``.
* ``two_phase``  ``binary`` then exact MaxSim of the float query over the bfloat16 vectors on the top
  ``rerank_count`` (the default).
* ``two_phase_unpacked``  ``binary`` then float query × ``unpack_bits`` MaxSim on the top ``rerank_count``
  (for clusters fed without float vectors: ``vespa.documents.float_vectors=false``).
* ``hybrid``     ``two_phase`` with ``bm25_weight * (bm25(title) + bm25(text))`` added in the second phase.
* ``float``      exact MaxSim over the bfloat16 vectors (evaluation; needs the float field fed).
* ``muvera``     one vector per page: the query's MUVERA encoding ``query(qm)`` retrieves by ``nearestNeighbor``
  over ``muvera_embedding`` (HNSW, dotproduct), the first phase is that dot product, the second phase
  ``two_phase``'s exact MaxSim on the top ``rerank_count`` (:mod:`pipelines.muvera`).
* ``page_vector`` the same with the query's mean vector ``query(qp)`` against ``page_embedding`` (the pages'
  normalised mean vectors; HNSW, prenormalized-angular): the cheapest first stage.
* ``similar_pages`` ``page_embedding`` similarity alone, for "pages like this page" (``query(qp)`` = a page's own).

Every query input is declared once, in ``binary``, and inherited, so each profile accepts every body the query
builder (:mod:`pipelines.vespa.query`) sends.

:func:`package_files` renders the whole package (``services.xml``, schema, and for the multi-node
topology ``hosts.xml``) as text; :func:`write_package` and :func:`package_zip` write it to disk or a
zip for the config server's deploy API. The files under ``infra/vespa/`` are this module's output.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from vespa.configuration.services import (
    admin,
    adminserver,
    cluster_controller,
    configserver,
    configservers,
    container,
    content,
    distribution,
    document,
    document_api,
    document_processing,
    documents,
    engine,
    group,
    min_redundancy,
    node,
    nodes,
    persearch,
    proton,
    requestthreads,
    search,
    searchnode,
    services,
    slobrok,
    slobroks,
    tuning,
)
from vespa.configuration.vt import VT
from vespa.package import (
    HNSW,
    ApplicationPackage,
    Document,
    Field,
    FieldSet,
    FirstPhaseRanking,
    Function,
    RankProfile,
    Schema,
    SecondPhaseRanking,
    ServicesConfiguration,
)

from pipelines import schema as page_schema
from pipelines.muvera import MuveraSettings
from pipelines.text_search import HYBRID_BM25_WEIGHT

SCHEMA_NAME = "pdf_page"
TOPOLOGIES = ("single", "multinode")

BINARY_FIELD = "embedding"
FLOAT_FIELD = "embedding_float"


@dataclass(frozen=True)
class TensorTypes:
    """The schema's tensor types for vectors of width ``dim``: packed sign bits are ``v[dim / 8]`` int8 cells,
    float vectors ``v[dim]`` (bfloat16 stored, float in queries)."""

    dim: int

    @property
    def binary(self) -> str:
        return f"tensor<int8>(patch{{}}, v[{page_schema.binary_bytes(self.dim)}])"

    @property
    def float(self) -> str:
        return f"tensor<bfloat16>(patch{{}}, v[{self.dim}])"

    @property
    def query_float(self) -> str:
        return f"tensor<float>(querytoken{{}}, v[{self.dim}])"

    @property
    def query_binary(self) -> str:
        return f"tensor<int8>(querytoken{{}}, v[{page_schema.binary_bytes(self.dim)}])"

    @property
    def query_token(self) -> str:
        return f"tensor<int8>(v[{page_schema.binary_bytes(self.dim)}])"


# The rank expressions, as Vespa evaluates them. tests/vespa checks them against an independent numpy
# evaluation and against the local search scores.
MAX_SIM_BINARY = (
    f"sum(reduce(1 / (1 + sum(hamming(query(qtb), attribute({BINARY_FIELD})), v)), max, patch), querytoken)"
)
MAX_SIM_UNPACKED = f"sum(reduce(sum(query(qt) * unpack_bits(attribute({BINARY_FIELD})), v), max, patch), querytoken)"
MAX_SIM_FLOAT = f"sum(reduce(sum(query(qt) * cell_cast(attribute({FLOAT_FIELD}), float), v), max, patch), querytoken)"
BM25 = "bm25(title) + bm25(text)"
# One vector per page (pipelines.muvera): dense bfloat16 fields with HNSW, and their query inputs.
PAGE_VECTOR_FIELD = "page_embedding"
MUVERA_FIELD = "muvera_embedding"
PAGE_INPUT = "qp"
MUVERA_INPUT = "qm"
SIMILAR_PAGES_PROFILE = "similar_pages"
MUVERA_SIMILARITY = f"sum(query({MUVERA_INPUT}) * cell_cast(attribute({MUVERA_FIELD}), float))"
PAGE_SIMILARITY = f"sum(query({PAGE_INPUT}) * cell_cast(attribute({PAGE_VECTOR_FIELD}), float))"
# Similarity maps (pipelines.similarity_maps): query token x patch similarities, min-max scaled over the page to
# -1..1 and cast to int8, returned as the summary feature ``quantized``, as Vespa's ColPali sample application does.
SIMILARITIES_FLOAT = f"sum(query(qt) * cell_cast(attribute({FLOAT_FIELD}), float), v)"
SIMILARITIES_UNPACKED = f"sum(query(qt) * unpack_bits(attribute({BINARY_FIELD})), v)"
NORMALIZED = (
    "(similarities - reduce(similarities, min)) / reduce(similarities - reduce(similarities, min), max) * 2 - 1"
)
QUANTIZED = "cell_cast(normalized * 127.999, int8)"
#: The rank profile of a similarity-map query, by the vectors the map is drawn from (float re-ranking vectors, or
#: the candidates' unpacked bits). Not a search profile: the query names the pages (``page_id in (...)``).
SIMILARITY_MAP_PROFILES = {"float": "similarity_map", "unpacked": "similarity_map_unpacked"}


@dataclass
class VespaAppSettings:
    """What shapes the application package. Hydra group ``vespa.app``."""

    name: str = "pdfvisual"  # application name: lowercase letters and digits only
    schema: str = SCHEMA_NAME
    # The model's vector width, which the tensor types follow (v[dim / 8] binary, v[dim] float); null = the
    # default model's. jobs.deploy_vespa sets it from index=<path> or model=<name>.
    embedding_dim: int | None = None
    content_cluster: str = "pages"
    container_cluster: str = "default"
    # HNSW over the binary patch vectors (hamming). More links / exploration: better recall, slower feed.
    hnsw_max_links_per_node: int = 32
    hnsw_neighbors_to_explore_at_insert: int = 400
    # Pages re-ranked per content node in the second phase (queries may lower it with ranking.rerankCount).
    rerank_count: int = 200
    # One nearestNeighbor operator (and query(rqN) input) per query token, up to this many tokens.
    max_query_tokens: int = 64
    hybrid_bm25_weight: float = HYBRID_BM25_WEIGHT  # the local hybrid's weight (pipelines.text_search)
    # Values of the MUVERA encoding (muvera_embedding, x[...]); null = the default pooling.muvera at the model's
    # width. Set it when the index was built with other pooling.muvera settings.
    muvera_dim: int | None = None
    # Multi-node topology (hosts.xml + services.xml); single-node ignores these.
    config_hosts: list[str] = field(
        default_factory=lambda: ["cfg0.example.com", "cfg1.example.com", "cfg2.example.com"]
    )
    feed_container_hosts: list[str] = field(default_factory=lambda: ["feed0.example.com", "feed1.example.com"])
    query_container_hosts: list[str] = field(default_factory=lambda: ["query0.example.com", "query1.example.com"])
    # One list of content hosts per group; each group holds a full copy of the data.
    content_groups: list[list[str]] = field(
        default_factory=lambda: [
            ["content0.example.com", "content1.example.com"],
            ["content2.example.com", "content3.example.com"],
        ]
    )
    search_threads_per_query: int = 4

    def __post_init__(self) -> None:
        if not (self.name.isascii() and self.name.isalnum() and self.name.islower()):
            msg = f"vespa.app.name must be lowercase letters and digits (Vespa rule), got {self.name!r}"
            raise ValueError(msg)
        if not 1 <= self.max_query_tokens <= 256:
            msg = f"vespa.app.max_query_tokens must be in 1..256, got {self.max_query_tokens}"
            raise ValueError(msg)
        if self.rerank_count < 1:
            msg = f"vespa.app.rerank_count must be >= 1, got {self.rerank_count}"
            raise ValueError(msg)
        if not self.content_groups or not all(self.content_groups):
            msg = "vespa.app.content_groups must list at least one group with at least one host"
            raise ValueError(msg)
        if self.muvera_dim is not None and self.muvera_dim < 1:
            msg = f"vespa.app.muvera_dim must be >= 1 (or null), got {self.muvera_dim}"
            raise ValueError(msg)
        if self.embedding_dim is not None and (self.embedding_dim < 8 or self.embedding_dim % 8):
            msg = f"vespa.app.embedding_dim must be a positive multiple of 8 (or null), got {self.embedding_dim}"
            raise ValueError(msg)

    @property
    def tensors(self) -> TensorTypes:
        """The tensor types of this package: ``embedding_dim``, else the registry's default model's width."""
        if self.embedding_dim is not None:
            return TensorTypes(self.embedding_dim)
        from pipelines.models.registry import ModelConfig, get_spec

        return TensorTypes(get_spec(ModelConfig().name).dim)

    @property
    def muvera_tensor_dim(self) -> int:
        """Values of ``muvera_embedding``: ``muvera_dim``, else the default MUVERA settings at the model's width."""
        return self.muvera_dim or MuveraSettings().dim(self.tensors.dim)


def token_input(index: int) -> str:
    """Name of the per-token query tensor that drives ``nearestNeighbor`` for query token ``index``."""
    return f"rq{index}"


def build_schema(settings: VespaAppSettings) -> Schema:
    tensors = settings.tensors
    fields = [
        Field("page_id", "string", indexing=["summary", "attribute"]),
        Field("doc_id", "string", indexing=["summary", "attribute"], attribute=["fast-search"]),
        Field("source_uri", "string", indexing=["summary", "attribute"], attribute=["fast-search"]),
        Field("title", "string", indexing=["index", "summary"], index="enable-bm25"),
        Field("text", "string", indexing=["index", "summary"], index="enable-bm25"),
        Field("page_number", "int", indexing=["summary", "attribute"]),
        Field("page_count", "int", indexing=["summary", "attribute"]),
        Field("model", "string", indexing=["summary", "attribute"]),
        Field("config_hash", "string", indexing=["summary", "attribute"]),
        Field("thumbnail", "raw", indexing=["summary"]),
        Field(
            BINARY_FIELD,
            tensors.binary,
            indexing=["attribute", "index"],
            ann=HNSW(
                distance_metric="hamming",
                max_links_per_node=settings.hnsw_max_links_per_node,
                neighbors_to_explore_at_insert=settings.hnsw_neighbors_to_explore_at_insert,
            ),
        ),
        # Paged: only the few re-ranked pages touch it per query, so it may live on disk.
        Field(FLOAT_FIELD, tensors.float, indexing=["attribute"], attribute=["paged"]),
        # One vector per page, in memory (HNSW needs it there): normalised means (cosine = dot product) and MUVERA
        # encodings (unnormalised: their dot product approximates MaxSim).
        Field(
            PAGE_VECTOR_FIELD,
            f"tensor<bfloat16>(x[{tensors.dim}])",
            indexing=["attribute", "index"],
            ann=HNSW(
                distance_metric="prenormalized-angular",
                max_links_per_node=settings.hnsw_max_links_per_node,
                neighbors_to_explore_at_insert=settings.hnsw_neighbors_to_explore_at_insert,
            ),
        ),
        Field(
            MUVERA_FIELD,
            f"tensor<bfloat16>(x[{settings.muvera_tensor_dim}])",
            indexing=["attribute", "index"],
            ann=HNSW(
                distance_metric="dotproduct",
                max_links_per_node=settings.hnsw_max_links_per_node,
                neighbors_to_explore_at_insert=settings.hnsw_neighbors_to_explore_at_insert,
            ),
        ),
    ]
    schema = Schema(
        name=settings.schema,
        document=Document(fields=fields),
        fieldsets=[FieldSet(name="default", fields=["title", "text"])],
    )
    inputs = [("query(qt)", tensors.query_float), ("query(qtb)", tensors.query_binary)]
    inputs += [(f"query({token_input(i)})", tensors.query_token) for i in range(settings.max_query_tokens)]
    inputs += [
        (f"query({MUVERA_INPUT})", f"tensor<float>(x[{settings.muvera_tensor_dim}])"),
        (f"query({PAGE_INPUT})", f"tensor<float>(x[{tensors.dim}])"),
    ]
    functions = [
        Function(name="max_sim_binary", expression=MAX_SIM_BINARY),
        Function(name="max_sim_unpacked", expression=MAX_SIM_UNPACKED),
        Function(name="max_sim_float", expression=MAX_SIM_FLOAT),
        Function(name="muvera_similarity", expression=MUVERA_SIMILARITY),
        Function(name="page_similarity", expression=PAGE_SIMILARITY),
    ]
    schema.add_rank_profile(
        RankProfile(
            name="binary",
            inputs=inputs,
            functions=functions,
            first_phase=FirstPhaseRanking(expression="max_sim_binary"),
            match_features=["max_sim_binary"],
        )
    )
    schema.add_rank_profile(
        RankProfile(
            name="two_phase",
            inherits="binary",
            second_phase=SecondPhaseRanking(expression="max_sim_float", rerank_count=settings.rerank_count),
            match_features=["max_sim_binary", "max_sim_float"],
        )
    )
    schema.add_rank_profile(
        RankProfile(
            name="two_phase_unpacked",
            inherits="binary",
            second_phase=SecondPhaseRanking(expression="max_sim_unpacked", rerank_count=settings.rerank_count),
            match_features=["max_sim_binary", "max_sim_unpacked"],
        )
    )
    schema.add_rank_profile(
        RankProfile(
            name="hybrid",
            inherits="two_phase",
            second_phase=SecondPhaseRanking(
                expression=f"max_sim_float + {settings.hybrid_bm25_weight} * ({BM25})",
                rerank_count=settings.rerank_count,
            ),
            match_features=["max_sim_binary", "max_sim_float", "bm25(title)", "bm25(text)"],
        )
    )
    schema.add_rank_profile(
        RankProfile(
            name="float",
            inherits="binary",
            first_phase=FirstPhaseRanking(expression="max_sim_float"),
            match_features=["max_sim_float"],
        )
    )
    for name, similarity in (("muvera", "muvera_similarity"), ("page_vector", "page_similarity")):
        schema.add_rank_profile(
            RankProfile(
                name=name,
                inherits="two_phase",
                first_phase=FirstPhaseRanking(expression=similarity),
                match_features=[similarity, "max_sim_float"],
            )
        )
    schema.add_rank_profile(
        RankProfile(
            name=SIMILAR_PAGES_PROFILE,
            inherits="binary",
            first_phase=FirstPhaseRanking(expression="page_similarity"),
            match_features=["page_similarity"],
        )
    )
    # Similarity maps: the query names its pages, so the (inherited, cheap) first phase only orders them.
    for kind, similarities in (("float", SIMILARITIES_FLOAT), ("unpacked", SIMILARITIES_UNPACKED)):
        schema.add_rank_profile(
            RankProfile(
                name=SIMILARITY_MAP_PROFILES[kind],
                inherits="binary",
                functions=[
                    Function(name="similarities", expression=similarities),
                    Function(name="normalized", expression=NORMALIZED),
                    Function(name="quantized", expression=QUANTIZED),
                ],
                summary_features=["quantized"],
            )
        )
    return schema


def _single_node_services(settings: VespaAppSettings) -> VT:
    return services(
        container(document_api(), search(), id=settings.container_cluster, version="1.0"),
        content(
            min_redundancy("1"),
            documents(document(type_=settings.schema, mode="index")),
            nodes(node(hostalias="node1", distribution_key="0")),
            id=settings.content_cluster,
            version="1.0",
        ),
        version="1.0",
    )


def _multinode_services(settings: VespaAppSettings) -> VT:
    config_aliases = [f"config{i}" for i in range(len(settings.config_hosts))]
    content_groups = []
    key = 0
    for group_index, hosts in enumerate(settings.content_groups):
        members = []
        for _ in hosts:
            members.append(node(hostalias=f"content{key}", distribution_key=str(key)))
            key += 1
        content_groups.append(group(*members, name=f"group{group_index}", distribution_key=str(group_index)))
    n_groups = len(settings.content_groups)
    return services(
        admin(
            configservers(*(configserver(hostalias=a) for a in config_aliases)),
            VT("cluster_controllers", tuple(cluster_controller(hostalias=a) for a in config_aliases)),
            slobroks(*(slobrok(hostalias=a) for a in config_aliases)),
            # Required: without it Vespa puts the log server on the <admin> element's (missing) host alias and
            # prepare fails with "Unable to find host for alias ''" (checked by tests/vespa/test_vespa_java.py).
            adminserver(hostalias=config_aliases[0]),
            version="2.0",
        ),
        # Feeding and queries on separate container clusters so a backfill cannot starve search.
        container(
            document_api(),
            document_processing(),  # runs the indexing chain (see the content cluster's document-processing)
            nodes(*(node(hostalias=f"feed{i}") for i in range(len(settings.feed_container_hosts)))),
            id="feed",
            version="1.0",
        ),
        container(
            search(),
            nodes(*(node(hostalias=f"query{i}") for i in range(len(settings.query_container_hosts)))),
            id=settings.container_cluster,
            version="1.0",
        ),
        content(
            # One full copy per group: a group can be lost (or upgraded) and every page stays searchable.
            min_redundancy(str(n_groups)),
            # Indexing runs on the feed cluster: left implicit, Vespa picks the one with <search> (the query cluster).
            documents(document(type_=settings.schema, mode="index"), document_processing(cluster="feed")),
            group(
                distribution(partitions="1|" * (n_groups - 1) + "*"),
                *content_groups,
                name="top",
            ),
            engine(proton(tuning(searchnode(requestthreads(persearch(str(settings.search_threads_per_query))))))),
            id=settings.content_cluster,
            version="1.0",
        ),
        version="1.0",
    )


def _hosts_xml(settings: VespaAppSettings) -> str:
    hosts = []
    roles = [
        ("config", settings.config_hosts),
        ("feed", settings.feed_container_hosts),
        ("query", settings.query_container_hosts),
        ("content", [h for group_hosts in settings.content_groups for h in group_hosts]),
    ]
    for prefix, names in roles:
        for i, name in enumerate(names):
            hosts.append(VT("host", (VT("alias", (f"{prefix}{i}",)),), {"name": name}))
    return '<?xml version="1.0" encoding="utf-8" ?>\n' + VT("hosts", tuple(hosts)).to_xml().strip() + "\n"


def build_application_package(settings: VespaAppSettings, topology: str = "single") -> ApplicationPackage:
    """The pyvespa package for ``topology`` (``single`` or ``multinode``). Raises ValueError on others."""
    if topology not in TOPOLOGIES:
        msg = f"topology must be one of {TOPOLOGIES}, got {topology!r}"
        raise ValueError(msg)
    schema = build_schema(settings)
    services_vt = _single_node_services(settings) if topology == "single" else _multinode_services(settings)
    return ApplicationPackage(
        name=settings.name,
        schema=[schema],
        services_config=ServicesConfiguration(application_name=settings.name, services_config=services_vt),
    )


def package_files(settings: VespaAppSettings, topology: str = "single") -> dict[str, str]:
    """Every file of the application package as ``{relative path: text}``."""
    package = build_application_package(settings, topology)
    files = {"services.xml": package.services_to_text.rstrip("\n") + "\n"}
    for schema in package.schemas:
        files[posixpath.join("schemas", f"{schema.name}.sd")] = schema.schema_to_text.rstrip("\n") + "\n"
    if topology == "multinode":
        files["hosts.xml"] = _hosts_xml(settings)
    return files


def write_package(settings: VespaAppSettings, root: str | Path, topology: str = "single") -> list[Path]:
    """Write the package under ``root`` (created); returns the written paths."""
    written = []
    for relative, text in package_files(settings, topology).items():
        path = Path(root) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def package_zip(settings: VespaAppSettings, topology: str = "single") -> bytes:
    """The package as zip bytes, the body the deploy API (``prepareandactivate``) takes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative, text in sorted(package_files(settings, topology).items()):
            archive.writestr(relative, text)
    return buffer.getvalue()
