"""The KubeRay manifests in ``infra/k8s`` are valid objects and run commands our jobs accept.

- RayCluster, RayJob and RayCronJob are validated against the OpenAPI schemas of KubeRay's CRDs
  (``../shared/reference/kuberay``), made strict the way ``kubectl apply`` (server-side field
  validation, strict by default) treats them: an unknown field anywhere, e.g. a misspelt
  ``shutdownAfterJobFinishes`` or a typo inside a pod template, is an error, not silently pruned.
- Core objects (Secret, ConfigMap, CronJob) and every object's metadata are validated against the
  strict Kubernetes JSON schemas shipped by the ``kubernetes-validate`` package (offline).
- Every ``python -m jobs.<name> k=v ...`` in a manifest is composed with Hydra from ``conf/``, and the
  index job's config goes through ``pipelines.config.load_index_config`` (types, keys, cross checks).
- The copies of the cluster spec, the Ray version, the secrets the pods read and the GPU count the
  entrypoints plan for agree with each other, with ``uv.lock`` and with ``conf/vespa``.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from pipelines.config import load_index_config
from pipelines.vespa import config as vespa_config
from pipelines.vespa.replay import MODES as FEED_MODES

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
CONF = REPO / "conf"
#: Kubernetes version whose schemas the core objects must pass (CronJob.spec.timeZone is GA since 1.27).
KUBERNETES_VERSION = "1.30"
RAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
#: The long-lived cluster; every other cluster spec is a copy of its spec.
CLUSTER_FILE = "raycluster.yaml"
IMAGE_NAME = "pdf-visual-index"


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last; kubectl refuses)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        duplicates = sorted({str(key) for key in keys if keys.count(key) > 1})
        if duplicates:
            msg = f"duplicate keys {duplicates} {node.start_mark}"
            raise yaml.constructor.ConstructorError(msg)
        return super().construct_mapping(node, deep=deep)


def load_manifests() -> list[tuple[str, dict]]:
    """(file name, object) for every YAML document in infra/k8s."""
    manifests = []
    for path in sorted(K8S.glob("*.yaml")):
        manifests += [(path.name, doc) for doc in yaml.load_all(path.read_text(), Loader=UniqueKeyLoader) if doc]
    return manifests


MANIFESTS = load_manifests()


def ids(manifests: list[tuple[str, dict]]) -> list[str]:
    return [f"{name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}" for name, doc in manifests]


# --- schemas -------------------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """Copy of an OpenAPI schema in which objects with declared properties accept no other keys."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="session")
def crd_validators(kuberay_crds) -> dict[tuple[str, str], jsonschema.Validator]:
    """(kind, apiVersion) -> validator of the CRD's served version, strict."""
    validators = {}
    for kind, crd in kuberay_crds.items():
        assert crd["spec"]["names"]["kind"] == kind
        group = crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            validators[(kind, f"{group}/{version['name']}")] = jsonschema.Draft202012Validator(schema)
    return validators


def validate(doc: dict, crd_validators) -> None:
    """Raise ``jsonschema.ValidationError`` (or kubernetes_validate's subclass) when ``doc`` is invalid."""
    kind = doc.get("kind")
    if kind in RAY_KINDS:
        validator = crd_validators.get((kind, doc.get("apiVersion")))
        if validator is None:
            msg = f"{kind} {doc.get('apiVersion')} is not served by the KubeRay CRDs"
            raise jsonschema.ValidationError(msg)
        validator.validate(doc)
        # CRD schemas leave metadata open; the API server checks it as ObjectMeta.
        metadata = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
        kubernetes_validate.validate(metadata, KUBERNETES_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_manifests_present():
    kinds = {doc["kind"] for _, doc in MANIFESTS}
    assert {"RayCluster", "RayJob", "RayCronJob", "CronJob", "Secret", "ConfigMap"} <= kinds
    assert all("apiVersion" in doc and "kind" in doc and doc.get("metadata", {}).get("name") for _, doc in MANIFESTS)


@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=ids(MANIFESTS))
def test_manifest_is_valid(name, doc, crd_validators):
    validate(doc, crd_validators)


def by_name(name: str, kind: str | None = None) -> dict:
    docs = [doc for file, doc in MANIFESTS if file == name and (kind is None or doc["kind"] == kind)]
    assert len(docs) == 1, (name, kind)
    return copy.deepcopy(docs[0])


def rejected(doc: dict, crd_validators) -> str:
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate(doc, crd_validators)
    return caught.value.message


def test_misspelt_rayjob_field_is_rejected(crd_validators):
    doc = by_name("index-rayjob.yaml")
    doc["spec"]["shutdownAfterJobFinish"] = doc["spec"].pop("shutdownAfterJobFinishes")
    assert "shutdownAfterJobFinish" in rejected(doc, crd_validators)


def test_wrong_type_is_rejected(crd_validators):
    doc = by_name("index-rayjob.yaml")
    doc["spec"]["backoffLimit"] = "2"
    assert "is not of type 'integer'" in rejected(doc, crd_validators)


def test_typo_inside_a_pod_template_is_rejected(crd_validators):
    doc = by_name(CLUSTER_FILE)
    container = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")
    assert "volumeMount" in rejected(doc, crd_validators)


def test_raycronjob_without_schedule_is_rejected(crd_validators):
    doc = by_name("index-raycronjob.yaml")
    del doc["spec"]["schedule"]
    assert "'schedule' is a required property" in rejected(doc, crd_validators)


def test_core_object_typos_are_rejected(crd_validators):
    cronjob = by_name("index-cronjob.yaml")
    cronjob["spec"]["jobTemplate"]["spec"]["backofLimit"] = 0
    assert "backofLimit" in rejected(cronjob, crd_validators)
    secret = next(copy.deepcopy(doc) for _, doc in MANIFESTS if doc["kind"] == "Secret")
    secret["stringdata"] = secret.pop("stringData")
    assert "stringdata" in rejected(secret, crd_validators)
    cronjob = by_name("index-cronjob.yaml")
    cronjob["metadata"]["label"] = {"a": "b"}
    assert "label" in rejected(cronjob, crd_validators)


# --- what the pods run ---------------------------------------------------------------------------------


def cluster_specs() -> Iterator[tuple[str, dict]]:
    """(file, RayCluster spec) of every cluster a manifest creates."""
    for name, doc in MANIFESTS:
        if doc["kind"] == "RayCluster":
            yield name, doc["spec"]
        elif doc["kind"] == "RayJob":
            yield name, doc["spec"]["rayClusterSpec"]
        elif doc["kind"] == "RayCronJob":
            yield name, doc["spec"]["jobTemplate"]["rayClusterSpec"]


def ray_pod_specs(spec: dict) -> Iterator[tuple[str, dict]]:
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def all_containers() -> Iterator[tuple[str, dict]]:
    for name, spec in cluster_specs():
        for _, pod in ray_pod_specs(spec):
            for container in pod["containers"]:
                yield name, container
    for name, doc in MANIFESTS:
        if doc["kind"] == "CronJob":
            for container in doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]:
                yield name, container


def job_commands() -> list[tuple[str, list[str], dict]]:
    """(file, ``python -m jobs.<name> ...`` argv, the cluster spec it runs on) of every manifest."""
    long_lived = by_name(CLUSTER_FILE)["spec"]
    commands = []
    for name, doc in MANIFESTS:
        if doc["kind"] == "RayJob":
            commands.append((name, shlex.split(doc["spec"]["entrypoint"]), doc["spec"]["rayClusterSpec"]))
        elif doc["kind"] == "RayCronJob":
            job = doc["spec"]["jobTemplate"]
            commands.append((name, shlex.split(job["entrypoint"]), job["rayClusterSpec"]))
        elif doc["kind"] == "CronJob":
            for container in doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]:
                argv = [*container.get("command", []), *container.get("args", [])]
                assert argv[:3] == ["ray", "job", "submit"], argv
                assert "--address=http://pdf-index-head-svc:8265" in argv  # the head Service of raycluster.yaml
                commands.append((name, argv[argv.index("--") + 1 :], long_lived))
    return commands


COMMANDS = job_commands()


def test_every_job_manifest_has_a_command():
    files = {name for name, doc in MANIFESTS if doc["kind"] in ("RayJob", "RayCronJob", "CronJob")}
    assert files == {name for name, _, _ in COMMANDS}
    modules = {argv[2] for _, argv, _ in COMMANDS}
    assert {"jobs.index", "jobs.feed"} <= modules


def compose_job(job: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name=job, overrides=overrides)


def is_absolute(location: str) -> bool:
    return "://" in location or location.startswith("/")


@pytest.mark.parametrize(("name", "argv", "cluster"), COMMANDS, ids=[f"{n}:{a[2]}" for n, a, _ in COMMANDS])
def test_command_is_accepted_by_the_job(name, argv, cluster):
    assert argv[:2] == ["python", "-m"], argv
    module = argv[2]
    job = module.removeprefix("jobs.")
    assert module.startswith("jobs.") and (REPO / "jobs" / f"{job}.py").is_file(), module
    assert (CONF / f"{job}.yaml").is_file(), f"no Hydra config conf/{job}.yaml for {module}"
    cfg = compose_job(job, argv[3:])
    if job == "index":
        typed = load_index_config(cfg)
        # Workers do not share the driver's working directory (infra/README.md).
        assert is_absolute(typed.source.location) and is_absolute(typed.output.location)
        assert OmegaConf.select(cfg, "ray.address") == "auto", "on a cluster the job must join it (ray=gpu)"
        limits = [
            (g["replicas"], g["template"]["spec"]["containers"][0]["resources"]["limits"])
            for g in cluster["workerGroupSpecs"]
        ]
        gpus = sum(replicas * int(limit.get("nvidia.com/gpu", 0)) for replicas, limit in limits)
        embed = OmegaConf.select(cfg, "ray.stages.embed.concurrency")
        assert embed == gpus, f"one embedding actor per GPU: {gpus} GPUs in the cluster, concurrency {embed}"
        if cfg.vespa.inline:
            vespa_config.endpoint(cfg)
            vespa_config.settings(cfg, "documents")
            vespa_config.settings(cfg, "feed")
    elif job == "feed":
        assert is_absolute(str(cfg.index))
        assert cfg.mode in FEED_MODES
        vespa_config.endpoint(cfg)
        vespa_config.settings(cfg, "documents")
        vespa_config.settings(cfg, "feed")


def test_a_misspelt_override_is_caught():
    """The check above would catch a manifest whose command names a key the index job does not know."""
    from pipelines.errors import ConfigError

    cfg = compose_job("index", ["source.location=s3://b/p/", "+source.retry_failed_all=true"])
    with pytest.raises(ConfigError, match="retry_failed_all"):
        load_index_config(cfg)


# --- consistency ---------------------------------------------------------------------------------------


def test_cluster_specs_are_copies_of_raycluster():
    reference = by_name(CLUSTER_FILE)["spec"]
    for name, spec in cluster_specs():
        if spec.get("workerGroupSpecs"):
            assert spec == reference, f"{name}: rayClusterSpec differs from {CLUSTER_FILE}'s spec"
        else:  # head only (jobs.feed needs no workers)
            assert spec["headGroupSpec"] == reference["headGroupSpec"], name
            assert spec["rayVersion"] == reference["rayVersion"], name


def test_ray_version_and_image_match_uv_lock(locked_versions):
    ray = locked_versions["ray"]
    for name, spec in cluster_specs():
        assert spec["rayVersion"] == ray, f"{name}: rayVersion {spec['rayVersion']} but uv.lock has ray {ray}"
    for name, container in all_containers():
        image, _, tag = container["image"].rpartition(":")
        assert image.endswith(f"/{IMAGE_NAME}"), (name, container["image"])
        assert tag == f"ray{ray}", f"{name}: image tag {tag!r} should be 'ray{ray}' (uv.lock's ray)"


def test_ray_pods_have_shm_resources_and_credentials():
    vespa = OmegaConf.load(CONF / "vespa" / "default.yaml").endpoint
    wanted_env = {vespa.token_env, vespa.cert_env, vespa.key_env}
    secrets = {doc["metadata"]["name"]: doc for _, doc in MANIFESTS if doc["kind"] == "Secret"}
    config_maps = {doc["metadata"]["name"] for _, doc in MANIFESTS if doc["kind"] == "ConfigMap"}
    aws = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for name, spec in cluster_specs():
        for group, pod in ray_pod_specs(spec):
            where = f"{name} {group}"
            shm = {v["name"]: v for v in pod["volumes"]}
            (container,) = pod["containers"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert shm[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert resources["requests"] == resources["limits"], where
            if group == "gpu":
                assert resources["limits"]["nvidia.com/gpu"] >= 1, where
            env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
            assert wanted_env <= set(env), where
            for ref in env.values():
                assert ref["key"] in secrets[ref["name"]]["stringData"], (where, ref)
            secret_refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
            assert any(aws <= set(secrets[s]["stringData"]) for s in secret_refs), where
            for source in container["envFrom"]:
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, where


def test_rayjobs_clean_up_and_are_bounded():
    for name, doc in MANIFESTS:
        if doc["kind"] not in ("RayJob", "RayCronJob"):
            continue
        job = doc["spec"] if doc["kind"] == "RayJob" else doc["spec"]["jobTemplate"]
        assert job["shutdownAfterJobFinishes"] is True, name
        assert job["ttlSecondsAfterFinished"] > 0, name
        assert job["backoffLimit"] >= 0, name
        assert job["activeDeadlineSeconds"] > 0, name
        if doc["kind"] == "RayCronJob":  # no concurrencyPolicy: a run must end before the next starts
            assert doc["spec"]["schedule"].split()[2:] == ["*", "*", "*"], "daily schedule expected"
            assert job["activeDeadlineSeconds"] < 24 * 3600, name
    cronjob = by_name("index-cronjob.yaml")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
