"""A real multi-node Ray cluster on this machine: a head and a worker node started with ``ray start`` (two
raylets with distinct node resources, token authentication as Ray 2.60 enables it), the index job submitted
with ``ray job submit`` exactly as infra/README.md tells users (working dir, runtime env, S3 source and index on
a moto server; the nodes hold the S3 credentials in their environment, as pods get them from a Secret). Stages
are pinned to nodes with the custom resources the README describes (``+ray.stages.<stage>.resources``).

- Both nodes did work: page images are rendered on the worker node and embedded on the head, then written from
  the worker node; Ray's state API shows each node's finished tasks, and the index is complete.
- The worker node is killed mid-run: its write task writes a block and stops (a SIGSTOP failpoint armed only in
  the worker node's environment), then every process of that node is SIGKILLed and a replacement node joins, as
  KubeRay replaces a lost pod. Ray retries the write there and the job completes (or, failing that, the rerun
  does); either way every page is in the index exactly once.

Both tests check one job on one cluster (module scope, one xdist group): a job costs a driver and fresh worker
processes importing the model, most of this module's time on two cores. Only the processes of this cluster are
stopped: each node runs in its own session, and teardown kills that process group and its raylet's descendants.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
import pytest
import s3fs

from pipelines import index, schema
from pipelines.testing.corpus import EXPECTED_PAGE_COUNTS
from tests.s3_server import MotoS3, storage_options

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_nodes")]

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
#: Four small documents, 11 pages.
DOCUMENTS = (
    "annual_report_2023.pdf",
    "coral_reef_research_note.pdf",
    "product_launch_slides.pdf",
    "water_main_notice.pdf",
)
PAGES = {name: EXPECTED_PAGE_COUNTS[name] for name in DOCUMENTS}
FAILPOINT = "after_write_block"
JOB_TIMEOUT_S = 600
NODE_TIMEOUT_S = 300


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open until every one is chosen)."""
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LocalRayCluster:
    """Ray nodes started with ``ray start`` on this machine, each in a session of its own."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.token = env["RAY_AUTH_TOKEN"]
        self.sessions: dict[str, int] = {}  # node name -> process group of its daemons
        self.gcs = self.dashboard = None

    def start(
        self,
        name: str,
        num_cpus: int,
        worker_ports: tuple[int, int],
        extra_env: dict | None = None,
        name_suffix: str = "",
    ):
        """Start a node offering the custom resource ``name``; the first one is the head (GCS, dashboard
        and job server). ``name_suffix`` tells apart nodes that offer the same resource."""
        head = not self.sessions
        names = ("agent", "agent_grpc", "runtime_env", "metrics", "node_manager", "object_manager")
        ports = dict(zip(names, free_ports(len(names) + 3), strict=False))
        args = [
            RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
            f"--resources={json.dumps({name: 1})}", f"--temp-dir={self.root}", "--object-store-memory=100000000",
            f"--dashboard-agent-listen-port={ports['agent']}", f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env']}", f"--metrics-export-port={ports['metrics']}",
            f"--node-manager-port={ports['node_manager']}", f"--object-manager-port={ports['object_manager']}",
            f"--min-worker-port={worker_ports[0]}", f"--max-worker-port={worker_ports[1]}",
            "--include-log-monitor=false",  # worker logs are not needed here; the driver's are the job's log
        ]  # fmt: skip
        if head:
            self.gcs, dashboard, client = free_ports(3)
            self.dashboard = f"http://127.0.0.1:{dashboard}"
            args += ["--head", f"--port={self.gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
            args += [f"--ray-client-server-port={client}", "--disable-usage-stats"]
        else:
            args.append(f"--address=127.0.0.1:{self.gcs}")
        # Output to a file, not a pipe: the node's daemons inherit it and outlive `ray start`.
        output = self.root / f"ray-start-{name}{name_suffix}.log"
        with open(output, "w") as handle:
            process = subprocess.Popen(
                args, env={**self.env, **(extra_env or {})}, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        process.output = output
        self.sessions[name + name_suffix] = process.pid  # its daemons keep this process group after `ray start`
        return process

    def processes(self, name: str) -> list[psutil.Process]:
        """Every process of a node: its session's daemons and their descendants (workers, job drivers)."""
        group = self.sessions[name]
        members = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if os.getpgid(process.pid) == group:
                    members.append(process)
        tree = {p.pid: p for p in members}
        for process in members:
            with contextlib.suppress(psutil.Error):
                tree.update({child.pid: child for child in process.children(recursive=True)})
        return list(tree.values())

    def kill(self, name: str) -> int:
        """SIGKILL every process of a node (a node lost to a crash); returns how many were killed."""
        victims = self.processes(name)
        for process in victims:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGCONT)  # a stopped process dies only once continued
                process.kill()
        psutil.wait_procs(victims, timeout=10)
        return len(victims)

    def stop(self) -> None:
        for name in reversed(list(self.sessions)):
            victims = self.processes(name)
            for process in victims:
                with contextlib.suppress(psutil.Error):
                    process.terminate()
            _, alive = psutil.wait_procs(victims, timeout=2)
            for process in alive:
                with contextlib.suppress(psutil.Error):
                    process.kill()

    def api(self, path: str, **params) -> dict:
        """GET a dashboard endpoint with the cluster's token."""
        query = urllib.parse.urlencode(params, doseq=True)
        request = urllib.request.Request(
            f"{self.dashboard}{path}?{query}", headers={"Authorization": f"Bearer {self.token}"}
        )
        for attempt in range(3):  # the dashboard answers slowly on a busy machine
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return json.loads(response.read())
            except (OSError, TimeoutError):
                if attempt == 2:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def submit_args(self, submission_id: str, runtime_env: dict, *overrides: str) -> list[str]:
        """``ray job submit`` of the index job, as infra/README.md writes it."""
        return [
            RAY, "job", "submit", "--address", self.dashboard, "--submission-id", submission_id,
            "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--",
            "python", "-m", "jobs.index", *overrides,
        ]  # fmt: skip

    def submit_env(self) -> dict[str, str]:
        """The submitter needs the cluster's address and token, not the S3 credentials."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
        return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}


@pytest.fixture(scope="module")
def cluster(sample_corpus, tiny_model_dir, model_cache):
    """A head and a worker node (2 logical CPUs each; the worker's first write task stops), a moto S3 holding
    :data:`DOCUMENTS`."""
    root = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    once = root / "once"  # the failpoint's marker: it fires in one process only
    once.mkdir()
    with MotoS3() as moto:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PIPELINES_FAILPOINTS", "AWS_"))}
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python` = the project's
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),
            RAY_USAGE_STATS_ENABLED="0",
            # A dead node is declared dead after ~2 s instead of ~15 s.
            RAY_health_check_initial_delay_ms="1000",
            RAY_health_check_period_ms="500",
            RAY_health_check_failure_threshold="4",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL_S3=moto.url,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        nodes = LocalRayCluster(root, env)
        try:
            head = nodes.start("head_node", 2, (24000, 24499))
            assert head.wait(timeout=NODE_TIMEOUT_S) == 0, head.output.read_text()[-3000:]
            worker = nodes.start(
                "worker_node",
                2,
                (24500, 24999),
                extra_env={
                    "PIPELINES_FAILPOINTS": FAILPOINT,
                    "PIPELINES_FAILPOINTS_ONCE_DIR": str(once),
                    "PIPELINES_FAILPOINTS_ACTION": "stop",
                },
            )
            fs = s3fs.S3FileSystem(**storage_options(moto.url))
            fs.mkdir("corpus")
            for name in DOCUMENTS:
                fs.pipe(f"corpus/pdfs/{name}", (sample_corpus / name).read_bytes())
            assert worker.wait(timeout=NODE_TIMEOUT_S) == 0, worker.output.read_text()[-3000:]
            yield nodes, moto, once
        finally:
            nodes.stop()
            shutil.rmtree(root, ignore_errors=True)


def job_overrides(index_name: str, **pins: str) -> list[str]:
    """The README's command for a CPU cluster, with stages pinned to nodes (``stage=node resource``)."""
    return [
        "model=tiny",
        "ray.address=auto",
        "source.location=s3://corpus/pdfs/",
        f"output.location=s3://corpus/{index_name}/",
        "progress.interval_s=2",
        # One render task at a time: each task process imports the model's processor.
        "ray.stages.rasterize.concurrency=1",
        "ray.stages.preprocess.concurrency=1",
        *[f"+ray.stages.{stage}.resources={{{node}: 0.01}}" for stage, node in pins.items()],
    ]


def runtime_env(model_cache: Path) -> dict:
    return {"env_vars": {"PIPELINES_CACHE_DIR": str(model_cache)}}  # like HF_HOME in the README


def node_names(nodes: LocalRayCluster) -> dict[str, str]:
    """Node id -> the custom resource naming it (head_node / worker_node), `` (dead)`` appended for dead nodes."""
    data = nodes.api("/api/v0/nodes", detail="1", limit="100")["data"]["result"]["result"]
    out = {}
    for node in data:
        names = [name for name in ("head_node", "worker_node") if name in (node.get("resources_total") or {})]
        out[node["node_id"]] = (names[0] if names else "?") + (" (dead)" if node.get("state") == "DEAD" else "")
    return out


def tasks_per_node(nodes: LocalRayCluster, submission_id: str) -> Counter:
    """(node name, task name) -> finished tasks of the job's stages, from Ray's state API."""
    job_id = nodes.api(f"/api/jobs/{submission_id}")["job_id"]
    tasks = nodes.api(
        "/api/v0/tasks",
        filter_keys="job_id",
        filter_predicates="=",
        filter_values=job_id,
        detail="1",
        limit="10000",
    )["data"]["result"]["result"]
    names = node_names(nodes)
    return Counter(
        (names.get(task["node_id"], "?"), task["name"])
        for task in tasks
        if task["state"] == "FINISHED" and "MapBatches" in task["name"]
    )


def assert_index_exactly_once(moto, index_name: str) -> dict:
    """Every page of :data:`DOCUMENTS` visible exactly once; the part files hold each page once after the
    final compaction; every file accounted for. Returns the run report."""
    location = index.IndexLocation(f"s3://corpus/{index_name}", storage_options(moto.url))
    pages = location.read_pages(["page_id", "source_uri"])
    page_ids = pages.column("page_id").to_pylist()
    assert len(page_ids) == len(set(page_ids)) == sum(PAGES.values())
    assert Counter(Path(uri).name for uri in pages.column("source_uri").to_pylist()) == PAGES
    # (Parts compaction retired stay readable for output.compaction_grace_s; they are not part of the index.)
    live = location.iter_part_files("pages", schema.PAGES_TABLE_SCHEMA, ["page_id"], skip=location.ledger.retired())
    raw = [p for _, t in live for p in t[0].to_pylist()]
    assert sorted(raw) == sorted(page_ids)
    report = location.read_report()
    assert report["files_unaccounted"] == [] and report["files_indexed"] == len(DOCUMENTS)
    assert location.ledger.pending_runs() == []
    return report


@pytest.fixture(scope="module")
def killed_run(cluster, model_cache) -> dict:
    """The index job submitted to both nodes; its worker node killed while its write task holds a block.

    Rendering (fused with preprocessing) and the write are pinned to the worker node, the model actors to
    the head. The worker node's first write task writes a block and stops; the test then SIGKILLs every
    process of that node and starts a replacement node with the same resource, as KubeRay recreates a lost
    pod.
    """
    nodes, _, once = cluster
    pins = {"rasterize": "worker_node", "preprocess": "worker_node", "embed": "head_node", "pool": "head_node"}
    overrides = job_overrides("index", **pins, binarize="worker_node")
    args = nodes.submit_args("index-two-nodes", runtime_env(model_cache), *overrides)
    job = subprocess.Popen(
        args, cwd=REPO, env=nodes.submit_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (once / FAILPOINT).exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped_mid_run = (once / FAILPOINT).exists() and job.poll() is None
    killed = nodes.kill("worker_node")  # the failpoint fires after the block's part file is written
    replacement = nodes.start("worker_node", 2, (24500, 24999), name_suffix="replacement")
    assert replacement.wait(timeout=NODE_TIMEOUT_S) == 0, replacement.output.read_text()[-3000:]
    log, _ = job.communicate(timeout=JOB_TIMEOUT_S)
    out = {"stopped_mid_run": stopped_mid_run, "killed": killed, "returncode": job.returncode, "log": log}
    if job.returncode != 0:  # Ray gave up: the rerun resumes from the ledger (the tests check it succeeded)
        rerun = subprocess.run(
            nodes.submit_args("index-rerun", runtime_env(model_cache), *overrides),
            cwd=REPO, env=nodes.submit_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
        )  # fmt: skip
        out["rerun"] = {"returncode": rerun.returncode, "log": rerun.stdout + rerun.stderr}
    out["outcome"] = "ray retried" if "rerun" not in out else "rerun"
    print(f"worker node killed mid-run ({killed} processes): {out['outcome']}", file=sys.stderr)
    # The whole driver log as the job server stored it (the submitter's tail may miss the last lines).
    out["job_log"] = nodes.api("/api/jobs/index-two-nodes/logs")["logs"]
    out["tasks"] = tasks_per_node(nodes, "index-two-nodes")
    return out


def index_of(killed_run: dict, moto) -> dict:
    """The run report of the job's index once the job (or its rerun) succeeded, checked exactly-once."""
    assert killed_run["returncode"] == 0 or killed_run["rerun"]["returncode"] == 0, (
        killed_run["log"][-3000:],
        killed_run.get("rerun", {}).get("log", "")[-3000:],
    )
    return assert_index_exactly_once(moto, "index")


def test_index_job_submitted_to_two_nodes_runs_on_both(cluster, killed_run):
    report = index_of(killed_run, cluster[1])  # complete, each page once
    by_node: dict[str, set[str]] = {}
    for where, name in killed_run["tasks"]:
        by_node.setdefault(where, set()).add(name)
    # The worker nodes rendered and wrote (the killed one, then its replacement), the head ran the model actors.
    # (A task that finished less than a second before the kill may miss the state API: events are sent every 1 s.)
    print(f"finished tasks per node: {dict(killed_run['tasks'])}", file=sys.stderr)
    on_workers = {name for where, names in by_node.items() if where.startswith("worker_node") for name in names}
    assert any(name.startswith("MapBatches(RasterizeStage)") for name in on_workers), by_node
    assert any(name.endswith("->Write") for name in on_workers), by_node
    assert any(name.startswith("MapWorker(") for name in by_node.get("head_node", ())), by_node
    assert not any(name.startswith("MapBatches(RasterizeStage)") for name in by_node.get("head_node", ())), by_node
    assert report["backend"] == "ray" and report["files_this_run"]["indexed"] + len(report["recovered_runs"]) > 0
    if killed_run["outcome"] == "ray retried":
        assert report["pages_embedded"] == sum(PAGES.values())
        # The job's log (not a terminal) has the progress lines, counted on the driver from both nodes.
        lines = [line for line in killed_run["job_log"].splitlines() if " progress" in line]
        assert any(re.search(rf"progress: files \d+/{len(DOCUMENTS)} \(0 failed\)", line) for line in lines), lines
        done = f"progress done: files {len(DOCUMENTS)}/{len(DOCUMENTS)} (0 failed), pages {sum(PAGES.values())}"
        assert done in lines[-1], lines


def test_worker_node_killed_mid_run_ends_exactly_once(cluster, killed_run):
    assert killed_run["stopped_mid_run"], "the job ended before its write task on the worker node stopped"
    assert killed_run["killed"] > 0
    report = index_of(killed_run, cluster[1])  # complete, each page once, no run left uncommitted
    if killed_run["outcome"] == "ray retried":
        # The stopped task's block was written before the kill and again by Ray's retry on the replacement
        # node: the ledger kept one copy and compaction dropped the other.
        assert any(name.endswith("Write") for where, name in killed_run["tasks"] if where == "worker_node")
        assert report["compaction"]["rows_dropped"] >= 1, report["compaction"]
    else:
        assert len(report["recovered_runs"]) == 1
