"""The deployment files in deploy/, checked offline: they parse, validate against the
Kubernetes API schemas, agree with each other, and their scripts do what they say.

Core Kubernetes objects are validated by kubernetes-validate, which bundles the API's
JSON schemas (strict variant: unknown fields are errors) and needs no cluster or
network. The SparkApplication is a custom resource those schemas do not cover; it is
checked against SPARK_APPLICATION_SCHEMA below, the part of the Kubeflow spark-operator
v1beta2 CRD that the example uses, with its embedded core types (volumes, tolerations,
security contexts, ...) resolved to the same bundled Kubernetes definitions.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.resources
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from kubernetes_validate.utils import latest_version
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from netsift.errors import UsageError
from netsift.platform import deploy

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PRESETS = REPO / "src" / "netsift" / "platform" / "presets"
NETSIFT_UID = 10001
BASH = shutil.which("bash")
SH = shutil.which("sh")
# The oldest Kubernetes release docs/deploy.md supports, and the newest schemas bundled.
KUBERNETES_VERSIONS = ["1.30", latest_version()]
# Files under deploy/k8s that are not applied by the kustomization, and why.
NOT_IN_KUSTOMIZATION = {
    "kustomization.yaml": "the kustomization itself",
    "sparkapplication.yaml": "needs the spark-operator CRD",
    "storage/pv-moosefs.yaml": "alternative to storage/pv-nfs.yaml",
}


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def one(path: Path, kind: str) -> dict:
    found = [doc for doc in load(path) if doc["kind"] == kind]
    assert len(found) == 1, f"{path}: expected one {kind}, found {len(found)}"
    return found[0]


def yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def core_objects() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in yaml_files() for doc in load(path)
            if doc["kind"] not in ("Kustomization", "SparkApplication")]


def pod_specs() -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod the manifests define."""
    specs = []
    for path, doc in core_objects():
        if doc["kind"] == "Pod":
            specs.append((path.name, doc["spec"]))
        elif doc["kind"] == "DaemonSet":
            specs.append((path.name, doc["spec"]["template"]["spec"]))
    return specs


def dockerfile() -> str:
    """deploy/Dockerfile as Docker parses it: comment lines dropped (also inside an
    instruction's continuation lines), continuation lines joined, one instruction a line."""
    lines = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    return "\n".join(lines).replace("\\\n", " ")


def instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in dockerfile().splitlines()
            if line.split(None, 1)[:1] == [name]]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[0-9][0-9a-z.]*", version), f"not pinned: {line}"
            pins[name.lower()] = version
    return pins


def image_pyspark_version() -> str:
    match = re.search(r"\bpyspark==([0-9.]+)", " ".join(instructions("RUN")))
    assert match, "deploy/Dockerfile installs no pinned pyspark"
    return match.group(1)


# -- every YAML file ------------------------------------------------------------------

@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses_into_kubernetes_objects(path):
    docs = load(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schema(version):
    kinds = set()
    for path, doc in core_objects():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            pytest.fail(f"{path.relative_to(DEPLOY)}: {doc['kind']}: {where}: {error.message}")
        kinds.add(doc["kind"])
    assert kinds == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
                     "DaemonSet", "PersistentVolume", "PersistentVolumeClaim", "Pod"}


def test_the_schema_validator_rejects_unknown_fields_and_wrong_types():
    daemonset = one(K8S / "capture-agent.yaml", "DaemonSet")
    typo = copy.deepcopy(daemonset)
    typo["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    wrong_type = copy.deepcopy(daemonset)
    wrong_type["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


# -- kustomization ----------------------------------------------------------------------

def kustomization() -> dict:
    return load(K8S / "kustomization.yaml")[0]


def test_kustomization_applies_every_cluster_object_once():
    resources = kustomization()["resources"]
    assert len(resources) == len(set(resources))
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization lists missing {resource}"
    on_disk = {str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml")
               if "pod-templates" not in p.parts}
    assert set(resources) == on_disk - set(NOT_IN_KUSTOMIZATION)


def test_kustomize_build_renders_valid_objects_in_the_namespace(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    # An empty kubeconfig: rendering must not touch any cluster.
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "none"))
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True,
                              text=True, env=env, timeout=120, check=True).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert len(docs) == sum(len(load(K8S / r)) for r in kustomization()["resources"])
    cluster_scoped = {"Namespace", "PersistentVolume"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
        namespace = doc["metadata"].get("namespace")
        assert namespace == (None if doc["kind"] in cluster_scoped else "netsift"), doc


# -- capture agent -------------------------------------------------------------------------

def test_capture_agent_drops_all_capabilities_but_net_raw_and_net_admin():
    daemonset = one(K8S / "capture-agent.yaml", "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert sorted(security["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]
    assert security["readOnlyRootFilesystem"] is True
    assert "privileged" not in security
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == NETSIFT_UID
    assert pod["hostNetwork"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["args"] == ["netsift-capture-agent"]
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0
    env = {item["name"] for item in container["env"]}
    config = one(K8S / "capture-agent.yaml", "ConfigMap")["data"]
    assert {"NODE_NAME", "CAPTURE_ROOT"} <= env
    assert config["CAPTURE_ROTATE_SECONDS"] == "60" and config["CAPTURE_IFACE"]
    assert container["volumeMounts"] == [{"name": "captures", "mountPath": "/captures"}]


# -- Spark pod templates --------------------------------------------------------------------

def template(name: str) -> dict:
    return one(K8S / "pod-templates" / name, "Pod")


def test_gpu_executor_requests_a_gpu_on_gpu_nodes():
    pod = template("executor-gpu.yaml")["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in pod["tolerations"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) >= {"compute", "utility"}


@pytest.mark.parametrize("name", ["executor-cpu.yaml", "driver.yaml"])
def test_cpu_pods_request_no_gpu_and_need_no_gpu_node(name):
    pod = template(name)["spec"]
    assert "nvidia.com/gpu" not in json.dumps(pod["containers"])
    assert "nodeSelector" not in pod and "tolerations" not in pod
    preferred = pod["affinity"]["nodeAffinity"]
    # Only a preference: a cluster made of GPU nodes still runs them.
    assert set(preferred) == {"preferredDuringSchedulingIgnoredDuringExecution"}


SPARK_PODS = [(where, pod) for where, pod in pod_specs() if where != "capture-agent.yaml"]


@pytest.mark.parametrize("where,pod", SPARK_PODS, ids=[where for where, _ in SPARK_PODS])
def test_spark_pods_meet_the_restricted_pod_security_standard(where, pod):
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == NETSIFT_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert "image" not in container, "Spark sets the image (spark.kubernetes.container.image)"


# -- RBAC and storage -----------------------------------------------------------------------

def test_the_driver_account_may_manage_executor_pods_services_and_configmaps():
    rbac = K8S / "rbac.yaml"
    account, role, binding = (one(rbac, kind)
                              for kind in ("ServiceAccount", "Role", "RoleBinding"))
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    needed = {"create", "get", "list", "watch", "delete", "deletecollection"}
    for resource in ("pods", "services", "configmaps"):
        assert needed <= granted.get(resource, set()), resource
    assert "*" not in json.dumps(role["rules"])
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    assert template("driver.yaml")["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert spark_application()["spec"]["driver"]["serviceAccount"] == account["metadata"]["name"]


def test_every_pod_mounts_the_shared_read_write_many_claim():
    claim = one(K8S / "storage" / "pvc.yaml", "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = [one(path, "PersistentVolume") for path in sorted((K8S / "storage").glob("pv-*"))]
    assert len(volumes) == 2
    for volume in volumes:
        assert volume["metadata"]["name"] == claim["spec"]["volumeName"]
        assert volume["spec"]["accessModes"] == claim["spec"]["accessModes"]
        assert volume["spec"]["storageClassName"] == claim["spec"]["storageClassName"] == ""
        assert volume["spec"]["capacity"]["storage"] == claim["spec"]["resources"]["requests"][
            "storage"]
        assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert {"nfs", "csi"} == {key for volume in volumes for key in ("nfs", "csi")
                              if key in volume["spec"]}
    expected = [{"name": "captures",
                 "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}]
    for where, pod in pod_specs():
        assert pod["volumes"] == expected, where
    assert spark_application()["spec"]["volumes"] == expected


# -- SparkApplication -------------------------------------------------------------------

K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.api.core.v1."


def core(kind: str) -> dict:
    return {"$ref": K8S_DEFS + kind}


def core_list(kind: str) -> dict:
    return {"type": "array", "items": core(kind)}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# SparkPodSpec, DriverSpec and ExecutorSpec of api/v1beta2/sparkapplication_types.go.
SPARK_POD_FIELDS = {
    "template": {"type": "object"}, "cores": {"type": "integer", "minimum": 1},
    "coreLimit": {"type": "string"}, "memory": {"type": "string"},
    "memoryOverhead": {"type": "string"},
    "gpu": {"type": "object", "required": ["name", "quantity"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "quantity": {"type": "integer"}}},
    "image": {"type": "string"}, "configMaps": {"type": "array"}, "secrets": {"type": "array"},
    "env": core_list("EnvVar"), "envVars": STRING_MAP, "envFrom": core_list("EnvFromSource"),
    "envSecretKeyRefs": {"type": "object"}, "labels": STRING_MAP, "annotations": STRING_MAP,
    "volumeMounts": core_list("VolumeMount"), "affinity": core("Affinity"),
    "tolerations": core_list("Toleration"), "podSecurityContext": core("PodSecurityContext"),
    "securityContext": core("SecurityContext"), "schedulerName": {"type": "string"},
    "sidecars": core_list("Container"), "initContainers": core_list("Container"),
    "hostNetwork": {"type": "boolean"}, "nodeSelector": STRING_MAP,
    "dnsConfig": core("PodDNSConfig"), "terminationGracePeriodSeconds": {"type": "integer"},
    "serviceAccount": {"type": "string"}, "hostAliases": core_list("HostAlias"),
    "shareProcessNamespace": {"type": "boolean"}, "runtimeClassName": {"type": "string"},
    "coreRequest": {"type": "string"}, "javaOptions": {"type": "string"},
    "lifecycle": core("Lifecycle"), "ports": {"type": "array"},
    "priorityClassName": {"type": "string"},
}
DRIVER_FIELDS = {**SPARK_POD_FIELDS, "podName": {"type": "string"},
                 "kubernetesMaster": {"type": "string"}, "serviceAnnotations": STRING_MAP,
                 "serviceLabels": STRING_MAP}
EXECUTOR_FIELDS = {**SPARK_POD_FIELDS, "instances": {"type": "integer", "minimum": 1},
                   "deleteOnTermination": {"type": "boolean"}}
SPARK_APPLICATION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "sparkoperator.k8s.io/v1beta2"},
        "kind": {"const": "SparkApplication"},
        "metadata": {"$ref": "https://kubernetes.io/api/_definitions.json#/$defs/"
                             "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {
            "type": "object",
            # The CRD's required list for spec.
            "required": ["driver", "executor", "mainApplicationFile", "sparkVersion", "type"],
            "additionalProperties": False,
            "properties": {
                "type": {"enum": ["Java", "Python", "Scala", "R"]},
                "pythonVersion": {"enum": ["2", "3"]},
                "mode": {"enum": ["cluster", "client", "in-cluster-client"]},
                "sparkVersion": {"type": "string"},
                "image": {"type": "string"},
                "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                "imagePullSecrets": {"type": "array", "items": {"type": "string"}},
                "mainClass": {"type": "string"},
                "mainApplicationFile": {"type": "string"},
                "arguments": {"type": "array", "items": {"type": "string"}},
                "sparkConf": STRING_MAP,
                "hadoopConf": STRING_MAP,
                "nodeSelector": STRING_MAP,
                "volumes": core_list("Volume"),
                "restartPolicy": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "type": {"enum": ["Never", "Always", "OnFailure"]},
                        "onSubmissionFailureRetries": {"type": "integer", "minimum": 0},
                        "onFailureRetries": {"type": "integer", "minimum": 0},
                        "onSubmissionFailureRetryInterval": {"type": "integer", "minimum": 1},
                        "onFailureRetryInterval": {"type": "integer", "minimum": 1}}},
                "timeToLiveSeconds": {"type": "integer"},
                "driver": {"type": "object", "additionalProperties": False,
                           "properties": DRIVER_FIELDS},
                "executor": {"type": "object", "additionalProperties": False,
                             "properties": EXECUTOR_FIELDS},
            },
        },
    },
}


def spark_application() -> dict:
    return one(K8S / "sparkapplication.yaml", "SparkApplication")


def spark_application_validator(version: str) -> jsonschema.Draft202012Validator:
    folder = f"v{version}.0-local-strict" if version.count(".") == 1 else f"v{version}-local-strict"
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads((schemas / folder / "_definitions.json").read_text())
    registry = referencing.Registry().with_resource(
        definitions["$id"], referencing.Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(SPARK_APPLICATION_SCHEMA, registry=registry)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_spark_application_matches_the_operator_crd(version):
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}"
              for e in spark_application_validator(version).iter_errors(spark_application())]
    assert errors == []


@pytest.mark.parametrize("change", [
    lambda spec: spec.pop("sparkVersion"),
    lambda spec: spec.update(type="python"),
    lambda spec: spec["executor"]["gpu"].update(quantity="1"),
    lambda spec: spec["sparkConf"].update({"spark.executor.instances": 2}),
    lambda spec: spec["executor"].update(gpus={"name": "nvidia.com/gpu", "quantity": 1}),
    lambda spec: spec["executor"]["tolerations"][0].update(efect="NoSchedule"),
    lambda spec: spec["volumes"][0].update(persistentVolumeClaim={"readOnly": True}),
], ids=["no-sparkVersion", "bad-type", "string-quantity", "int-conf", "unknown-field",
        "toleration-typo", "claim-without-name"])
def test_spark_application_schema_catches_mistakes(change):
    broken = copy.deepcopy(spark_application())
    change(broken["spec"])
    assert list(spark_application_validator(KUBERNETES_VERSIONS[0]).iter_errors(broken))


def test_spark_application_agrees_with_the_gpu_preset_and_the_image():
    spec = spark_application()["spec"]
    preset = deploy.spark_conf("gpu")
    for key, value in spec["sparkConf"].items():
        assert preset[key] == value, key
    executor = spec["executor"]
    assert executor["gpu"] == {
        "name": preset["spark.executor.resource.gpu.vendor"] + "/gpu",
        "quantity": int(preset["spark.executor.resource.gpu.amount"])}
    assert executor["cores"] == int(preset["spark.executor.cores"])
    assert executor["nodeSelector"] == template("executor-gpu.yaml")["spec"]["nodeSelector"]
    assert executor["tolerations"] == template("executor-gpu.yaml")["spec"]["tolerations"]
    assert spec["sparkVersion"] == image_pyspark_version()
    assert spec["mainApplicationFile"] == "local:///opt/netsift/netsift_job.py"
    assert "deploy/spark/netsift_job.py /opt/netsift/netsift_job.py" in " ".join(
        instructions("COPY"))
    arguments = spec["arguments"]
    assert arguments[0] == "analyze"
    assert arguments[arguments.index("--engine") + 1] == "spark"
    assert arguments[arguments.index("--master") + 1].startswith("k8s://https://")
    images = {item["name"]: item for item in kustomization()["images"]}
    name, tag = spec["image"].rsplit(":", 1)
    assert images[name]["newTag"] == tag


# -- image ---------------------------------------------------------------------------------

def test_dockerfile_pins_its_base_image_and_python_packages():
    (base,) = instructions("FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert "latest" not in dockerfile()
    installs = [run for run in instructions("RUN") if re.search(r"\bpip install\b", run)]
    assert len(installs) == 1
    words = installs[0].split("pip install", 1)[1].split(";")[0].split()
    assert "--constraint" in words
    requirements = [w.strip('"') for w in words if not w.startswith("-")
                    and not w.startswith("/tmp/netsift/constraints")]
    for requirement in requirements:
        assert requirement.startswith("/tmp/netsift/src") or "==" in requirement, requirement
    pins = constraints()
    assert f"pyspark=={pins['pyspark']}" in requirements
    assert pins["pyspark"] == image_pyspark_version() and pins["pyspark"].startswith("4.")
    # The site-packages directory SPARK_HOME names is the base image's Python.
    assert "/usr/local/lib/python3.11/site-packages/pyspark" in " ".join(instructions("ENV"))


def test_every_package_the_image_installs_is_pinned():
    # Walks the dependency tree as installed in this environment (offline), from
    # netsift[spark] and the build backend down, on Linux with this Python.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    todo = [Requirement(text) for text in project["dependencies"]
            + project["optional-dependencies"]["spark"] + pyproject["build-system"]["requires"]]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo.extend(Requirement(text) for text in importlib.metadata.requires(name) or [])
    missing = seen - {canonicalize_name(name) for name in constraints()}
    assert not missing, f"add to deploy/constraints.txt: {sorted(missing)}"
    assert {"numpy", "pyspark", "py4j", "setuptools"} <= seen


def test_dockerfile_installs_java_17_capture_tools_and_runs_as_netsift():
    text = dockerfile()
    for package in ("openjdk-17-jre-headless", "tshark", "tcpdump", "tini"):
        assert re.search(rf"apt-get install [^;]*\b{package}\b", text), package
    (user,) = instructions("USER")
    assert user == f"{NETSIFT_UID}:{NETSIFT_UID}"
    assert re.search(rf"useradd [^;]*--uid {NETSIFT_UID} [^;]*\bnetsift\b", text)
    assert "setcap cap_net_raw,cap_net_admin=eip /usr/bin/tcpdump" in text
    (entrypoint,) = instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["/usr/bin/tini", "--", "/opt/netsift/entrypoint.sh"]


def test_dockerfile_copies_existing_files_to_the_paths_the_config_names():
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    destinations = {}
    for copy_args in instructions("COPY"):
        words = [w for w in copy_args.split() if not w.startswith("--")]
        for source in words[:-1]:
            assert (REPO / source).exists(), f"COPY of missing {source}"
            # The build context excludes everything but what the image copies.
            assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} not in context"
        destinations[words[-1]] = words[:-1]
    script = deploy.spark_conf("gpu")["spark.executor.resource.gpu.discoveryScript"]
    assert destinations[script] == ["deploy/spark/getGpusResources.sh"]
    assert destinations["/usr/local/bin/netsift-capture-agent"] == ["deploy/capture-agent.sh"]
    assert destinations["/usr/local/bin/netsift-spool-publish"] == ["deploy/spool-publish.sh"]


# -- presets ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpu.conf", "cpu.conf", "getGpusResources.sh"])
def test_deploy_copies_equal_the_packaged_presets(name):
    assert (DEPLOY / "spark" / name).read_bytes() == (PRESETS / name).read_bytes()


def test_gpu_preset():
    conf = deploy.spark_conf("gpu")
    assert conf["spark.executor.resource.gpu.amount"] == "1"
    assert conf["spark.executor.resource.gpu.vendor"] == "nvidia.com"
    assert conf["spark.executor.resource.gpu.discoveryScript"] == "/opt/spark/getGpusResources.sh"
    task = float(conf["spark.task.resource.gpu.amount"])
    assert 0 < task <= 1
    # GPU task slots equal core slots, or Spark leaves one of them idle.
    assert int(conf["spark.executor.cores"]) * task == float(
        conf["spark.executor.resource.gpu.amount"])
    assert not any(key.startswith(("spark.plugins", "spark.rapids", "spark.jars"))
                   for key in conf), "RAPIDS settings are optional: commented out"


def test_gpu_preset_rapids_block_is_pinned_and_valid_once_uncommented():
    text = deploy.preset_path("gpu").read_text()
    block = "\n".join(line[2:] for line in text.splitlines() if line.startswith("# spark."))
    rapids = deploy.parse_spark_properties(block)
    assert rapids["spark.plugins"] == "com.nvidia.spark.SQLPlugin"
    assert rapids["spark.rapids.sql.enabled"] == "true"
    match = re.fullmatch(r"https://repo1\.maven\.org/maven2/com/nvidia/rapids-4-spark_2\.13/"
                         r"(\d+\.\d+\.\d+)/rapids-4-spark_2\.13-(\d+\.\d+\.\d+)\.jar",
                         rapids["spark.jars"])
    assert match and match.group(1) == match.group(2)
    assert f"supports Spark {image_pyspark_version()}" in " ".join(text.split())


def test_cpu_preset_requests_no_gpu():
    conf = deploy.spark_conf("cpu")
    assert conf and not any("gpu" in key for key in conf)
    assert conf["spark.executor.cores"] == deploy.spark_conf("gpu")["spark.executor.cores"]


def test_unknown_preset_is_a_usage_error():
    with pytest.raises(UsageError, match="gpu"):
        deploy.spark_conf("tpu")


def test_properties_parser_reads_what_spark_submit_reads():
    text = textwrap.dedent("""\
        # comment
          ! also a comment
        a.b=1
        c.d : two words
        e.f   3
        g.h=#not-a-comment
        i.j=
        k.l
        """)
    assert deploy.parse_spark_properties(text) == {
        "a.b": "1", "c.d": "two words", "e.f": "3", "g.h": "#not-a-comment", "i.j": "",
        "k.l": ""}


@pytest.mark.parametrize("text", ["a=1\na=2\n", "a=one \\\n two\n", "a=c:\\\\path\n"])
def test_properties_parser_refuses_what_it_would_misread(text):
    with pytest.raises(UsageError):
        deploy.parse_spark_properties(text, source="x.conf")


def test_presets_are_package_data_of_the_wheel(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("netsift-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        script = archive.getinfo("netsift/platform/presets/getGpusResources.sh")
        assert (script.external_attr >> 16) & 0o111, "discovery script lost its exec bit"
    for name in ("gpu.conf", "cpu.conf", "getGpusResources.sh"):
        assert f"netsift/platform/presets/{name}" in names


# -- GPU discovery script ---------------------------------------------------------------------

def fake_program(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{SH}\n{body}\n")
    path.chmod(0o755)


def discover(tmp_path: Path, nvidia_smi: str | None) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        # Answers only the query the contract names.
        fake_program(bin_dir, "nvidia-smi", textwrap.dedent(f"""\
            [ "$*" = "--query-gpu=index --format=csv,noheader" ] || exit 64
            {nvidia_smi}"""))
    return subprocess.run([BASH, str(deploy.discovery_script_path())], capture_output=True,
                          text=True, env={"PATH": str(bin_dir)}, timeout=30)


def test_discovery_script_lists_the_gpus_nvidia_smi_reports(tmp_path):
    result = discover(tmp_path, r"printf '0\n1\n'")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "gpu", "addresses": ["0", "1"]}


def test_discovery_script_without_nvidia_smi_lists_no_gpu(tmp_path):
    result = discover(tmp_path, None)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "gpu", "addresses": []}


@pytest.mark.parametrize("nvidia_smi", [
    "echo 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2; exit 9",
    "echo 'No devices were found'"])
def test_discovery_script_fails_when_nvidia_smi_does(tmp_path, nvidia_smi):
    result = discover(tmp_path, nvidia_smi)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr


def test_discovery_script_is_executable():
    for path in (deploy.discovery_script_path(), DEPLOY / "spark" / "getGpusResources.sh"):
        assert os.access(path, os.X_OK), path


def test_spark_reads_the_gpus_the_discovery_script_reports(tmp_path):
    # Spark's own parser is the contract: a local driver that asks for two GPUs through
    # the script must see exactly the addresses the fake nvidia-smi reported.
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "nvidia-smi", r"printf '0\n1\n'")
    program = textwrap.dedent(f"""\
        import json
        from pyspark.sql import SparkSession
        spark = (SparkSession.builder.master("local[1]")
                 .config("spark.ui.enabled", "false")
                 .config("spark.driver.host", "127.0.0.1")
                 .config("spark.driver.bindAddress", "127.0.0.1")
                 .config("spark.driver.resource.gpu.amount", "2")
                 .config("spark.driver.resource.gpu.discoveryScript",
                         {str(deploy.discovery_script_path())!r})
                 .getOrCreate())
        print(json.dumps(spark.sparkContext.resources["gpu"].addresses))
        spark.stop()
        """)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["0", "1"]


# -- container scripts ---------------------------------------------------------------------------

def test_entrypoint_starts_a_spark_executor_as_spark_on_kubernetes_asks(tmp_path):
    spark_home = tmp_path / "spark"
    (spark_home / "jars").mkdir(parents=True)
    java_home = tmp_path / "java"
    fake_program(java_home / "bin", "java", 'for a in "$@"; do echo "$a"; done')
    env = {"PATH": os.environ["PATH"], "SPARK_HOME": str(spark_home),
           "JAVA_HOME": str(java_home), "SPARK_EXECUTOR_MEMORY": "8g",
           "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@driver-svc:7078",
           "SPARK_EXECUTOR_ID": "3", "SPARK_EXECUTOR_CORES": "4",
           "SPARK_APPLICATION_ID": "spark-app-1", "SPARK_EXECUTOR_POD_IP": "10.1.2.3",
           "SPARK_RESOURCE_PROFILE_ID": "0", "SPARK_EXECUTOR_POD_NAME": "exec-3",
           "SPARK_CONF_DIR": "/opt/spark/conf", "SPARK_JAVA_OPT_10": "-Dten=10",
           "SPARK_JAVA_OPT_2": "-Dtwo=a b", "SPARK_JAVA_OPT_0": "-Dzero=0"}
    result = subprocess.run([BASH, str(DEPLOY / "entrypoint.sh"), "executor"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "-Dzero=0", "-Dtwo=a b", "-Dten=10", "-Xms8g", "-Xmx8g",
        "-cp", f"/opt/spark/conf:{spark_home}/jars/*",
        "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend",
        "--driver-url", "spark://CoarseGrainedScheduler@driver-svc:7078",
        "--executor-id", "3", "--cores", "4", "--app-id", "spark-app-1",
        "--hostname", "10.1.2.3", "--resourceProfileId", "0", "--podName", "exec-3"]


def test_entrypoint_starts_the_driver_through_spark_submit_in_client_mode(tmp_path):
    spark_home = tmp_path / "spark"
    fake_program(spark_home / "bin", "spark-submit", 'for a in "$@"; do echo "$a"; done')
    env = {"PATH": os.environ["PATH"], "SPARK_HOME": str(spark_home),
           "SPARK_DRIVER_BIND_ADDRESS": "10.1.2.4"}
    args = ["--properties-file", "/opt/spark/conf/spark.properties",
            "local:///opt/netsift/netsift_job.py", "analyze"]
    result = subprocess.run([BASH, str(DEPLOY / "entrypoint.sh"), "driver", *args],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "--conf", "spark.driver.bindAddress=10.1.2.4", "--deploy-mode", "client", *args]


def test_entrypoint_runs_other_commands_as_given():
    result = subprocess.run([BASH, str(DEPLOY / "entrypoint.sh"), "echo", "a  b"],
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "a  b\n")


def test_job_entry_runs_the_netsift_cli(tmp_path):
    result = subprocess.run([sys.executable, str(DEPLOY / "spark" / "netsift_job.py"), "--help"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: netsift")


def test_spool_publish_moves_a_finished_capture_into_the_spool(tmp_path):
    incoming, spool = tmp_path / "incoming", tmp_path / "spool" / "node-a"
    incoming.mkdir()
    (incoming / "x.pcap").write_bytes(b"pcap")
    env = {"PATH": os.environ["PATH"], "CAPTURE_SPOOL": str(spool)}
    script = str(DEPLOY / "spool-publish.sh")
    subprocess.run([SH, script, str(incoming / "x.pcap")], env=env, check=True, timeout=30)
    assert [p.name for p in spool.iterdir()] == ["x.pcap"] and not any(incoming.iterdir())
    unset = subprocess.run([SH, script, str(spool / "x.pcap")], capture_output=True,
                           env={"PATH": os.environ["PATH"]}, timeout=30)
    assert unset.returncode != 0 and (spool / "x.pcap").exists()


FAKE_TCPDUMP = r"""
printf '%s\n' "$@" > "$FAKE_TCPDUMP_ARGS"
while [ $# -gt 0 ]; do
  case "$1" in -w) pattern=$2; shift ;; -z) hook=$2; shift ;; esac
  shift
done
first=$(date -u -d @0 +"$pattern"); second=$(date -u -d @60 +"$pattern")
printf 'first' > "$first"
"$hook" "$first"
printf 'second' > "$second"
trap 'exit 0' TERM
touch "$FAKE_TCPDUMP_ARGS.ready"
while :; do sleep 0.05; done
"""


def test_capture_agent_rotates_publishes_and_flushes_on_sigterm(tmp_path):
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "tcpdump", FAKE_TCPDUMP)
    (bin_dir / "netsift-spool-publish").symlink_to(DEPLOY / "spool-publish.sh")
    root = tmp_path / "captures"
    incoming, spool = root / "incoming" / "node-a", root / "spool" / "node-a"
    incoming.mkdir(parents=True)
    (incoming / "left-by-a-killed-agent.pcap").write_bytes(b"old")
    args_file = tmp_path / "tcpdump-args"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CAPTURE_IFACE": "eth0",
           "NODE_NAME": "node-a", "CAPTURE_ROOT": str(root), "CAPTURE_ROTATE_SECONDS": "60",
           "CAPTURE_FILTER": "not port 2049", "FAKE_TCPDUMP_ARGS": str(args_file)}
    agent = subprocess.Popen([SH, str(DEPLOY / "capture-agent.sh")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{args_file}.ready").exists():
            assert agent.poll() is None, agent.communicate()
            assert time.monotonic() < deadline, "fake tcpdump never started"
            time.sleep(0.05)
        assert sorted(p.name for p in spool.iterdir()) == [
            "19700101T000000Z.pcap", "left-by-a-killed-agent.pcap"]
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, stderr
    assert sorted(p.name for p in spool.iterdir()) == [
        "19700101T000000Z.pcap", "19700101T000100Z.pcap", "left-by-a-killed-agent.pcap"]
    assert not any(incoming.iterdir())
    args = args_file.read_text().splitlines()
    assert args[args.index("-i") + 1] == "eth0"
    assert args[args.index("-G") + 1] == "60"
    assert args[args.index("-z") + 1] == "netsift-spool-publish"
    assert args[args.index("-w") + 1] == f"{incoming}/%Y%m%dT%H%M%SZ.pcap"
    assert args[-3:] == ["not", "port", "2049"]


# -- docs ----------------------------------------------------------------------------------------

def test_docs_name_only_files_that_exist():
    text = (REPO / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"\bdeploy/[\w./-]*\w", text))
    assert len(named) >= 8
    for path in named:
        assert (REPO / path).exists(), f"docs/deploy.md names missing {path}"
