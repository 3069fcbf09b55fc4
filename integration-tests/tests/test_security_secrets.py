"""Secrets: from files and the environment, to a REST catalog that wants a token, to S3, and never
into any output.

In: Iceberg's REST catalog server on moto's S3 (as in test_rest_catalog.py), with `CatalogProxy`
in front of it as a catalog that refuses every request without a valid bearer token and serves an
OAuth2 token endpoint (client credentials -> access token); moto behind a forwarder that records
which access key signed each request; a Kafka broker and an ingester for the full run; the Helm
chart. The secrets reach the binaries as `${file:...}` and `${env:...}` references in their config
or as the standard AWS variables, never written in it.

Out: proof that the appender lands rows with a static token and with OAuth2 client credentials
(the proxy saw the token exchange, with the configured scope, at `oauth2-server-uri`); that a
refused token or client secret stops start-up with a clear message and a non-zero exit instead of
retrying; that S3 requests are signed with keys from the environment or from files; and that in
a full run (both services at debug level, a failing flush too) no secret shows in either
service's output, `/stats`, `Stats` over gRPC, `/metrics`, or the rendered Helm chart outside its
Secret objects.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from pyiceberg.catalog.sql import SqlCatalog
from test_deploy import helm, helm_template, render, rendered_config  # noqa: F401 - helm is a fixture

from harness.catalog import BUCKET, REGION, ObjectStore, RestCatalog, load_rest_table, rest_config
from harness.catalog_proxy import CatalogProxy
from harness.kafka import Broker, Ingester
from harness.lake import APPENDERS, Appender, AppenderFactory
from harness.wait import wait_until
from otlp_client import loghub_records, send, table_mismatches


def new_secret(kind: str) -> str:
    """A secret no output could hold by chance."""
    return f"{kind}-{secrets.token_urlsafe(18)}"


def secret_file(path: Path, value: str) -> str:
    """Writes `value` as a Kubernetes Secret mounted as a file has it (a trailing newline) and
    returns the `${file:...}` reference to it."""
    path.write_text(value + "\n")
    path.chmod(0o600)
    return f"${{file:{path}}}"


def leaks(outputs: Mapping[str, str], used: Mapping[str, str]) -> list[str]:
    """Which secret (by name) shows in which output, with the line."""
    found = []
    for secret_name, value in used.items():
        for output_name, text in outputs.items():
            for line in text.splitlines():
                if value in line:
                    found.append(f"{secret_name} in {output_name}: {line[:300]}")
    return found


@pytest.fixture
def proxies() -> Iterator[list[CatalogProxy]]:
    """Catalog proxies a test starts, shut down after it."""
    started: list[CatalogProxy] = []
    yield started
    for proxy in started:
        proxy.close()


def guarded_catalog(
    catalog: RestCatalog,
    proxies: list[CatalogProxy],
    tokens: list[str] | None = None,
    clients: dict[str, str] | None = None,
) -> CatalogProxy:
    """The REST catalog behind a proxy that refuses requests without a valid bearer token."""
    proxy = CatalogProxy(catalog.uri, tokens=tokens, clients=clients)
    proxies.append(proxy)
    refused = requests.get(f"{proxy.uri}/v1/config", timeout=10)
    assert refused.status_code == 401, f"the guarded catalog answered {refused.status_code} without a token"
    proxy.refusals.clear()
    return proxy


def guarded_config(
    catalog: RestCatalog, proxy: CatalogProxy, table: str, properties: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    config = rest_config(catalog, table, properties, catalog_uri=proxy.uri)
    config["log"] = {"level": "debug"}
    return config


def land(appender: Appender, catalog: RestCatalog, table: str, tag: str) -> None:
    """Sends records, flushes, and checks pyiceberg (straight to the catalog) reads them all."""
    specs = loghub_records("HDFS", 300, tag=tag)
    send(appender.ports, specs)
    flushed = appender.flush_http()
    assert flushed["records"] == len(specs), flushed
    problems = table_mismatches(load_rest_table(catalog, table).scan().to_arrow(), specs)
    assert not problems, "the table differs from what was sent:\n  " + "\n  ".join(problems)


# ---- references that cannot be resolved -------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        ("${env:LAKE_TEST_UNSET_SECRET}", "environment variable LAKE_TEST_UNSET_SECRET is not set"),
        ("${file:/nonexistent/catalog-token}", "cannot read file /nonexistent/catalog-token"),
        ("${vault:catalog/token}", 'unknown source "vault"'),
    ],
)
def test_an_unresolvable_reference_stops_start_up_naming_the_key_and_reference(
    make_appender: AppenderFactory, reference: str, reason: str
) -> None:
    literal = new_secret("literal")
    appender = make_appender({"iceberg": {"properties": {"token": f"{literal}:{reference}"}}}, start=False)
    appender.start()
    assert appender.process is not None
    assert appender.process.wait(timeout=30) == 2
    log = appender.log_text()
    expected = f'invalid configuration: iceberg.properties.token = "{reference}": {reason}'
    assert expected in log, log
    assert literal not in log, "the text around a reference is not shown either"


# ---- REST catalog: static token, OAuth2 client credentials, refused credentials ----------------


def test_a_static_token_from_a_file_lands_rows_on_a_catalog_that_requires_one(
    lake_appender: AppenderFactory, catalog: RestCatalog, proxies: list[CatalogProxy], tmp_path: Path
) -> None:
    token = new_secret("static-token")
    proxy = guarded_catalog(catalog, proxies, tokens=[token])
    reference = secret_file(tmp_path / "catalog-token", token)
    appender = lake_appender(guarded_config(catalog, proxy, "static_token", {"token": reference}))
    land(appender, catalog, "static_token", "static")
    assert proxy.authorized[token] >= 3, proxy.authorized
    assert not proxy.refusals and not proxy.exchanges, (proxy.refusals, proxy.exchanges)
    assert not leaks({"appender log": appender.log_text()}, {"token": token})


def test_oauth2_client_credentials_from_the_environment_land_rows(
    lake_appender: AppenderFactory, catalog: RestCatalog, proxies: list[CatalogProxy]
) -> None:
    client_id, client_secret = "lake-appender", new_secret("client-secret")
    proxy = guarded_catalog(catalog, proxies, clients={client_id: client_secret})
    properties = {
        "credential": f"{client_id}:${{env:LAKE_CATALOG_CLIENT_SECRET}}",
        "oauth2-server-uri": f"{proxy.uri}/oauth2/token",
        "scope": "lake-write",
    }
    appender = lake_appender(
        guarded_config(catalog, proxy, "oauth2", properties), env={"LAKE_CATALOG_CLIENT_SECRET": client_secret}
    )
    land(appender, catalog, "oauth2", "oauth2")
    assert proxy.exchanges, "no token exchange reached the OAuth2 endpoint"
    for exchange in proxy.exchanges:
        assert exchange["granted"] and exchange["client_id"] == client_id, exchange
        assert exchange["path"] == "/oauth2/token" and exchange["scope"] == "lake-write", exchange
    issued = {e["token"] for e in proxy.exchanges}
    assert set(proxy.authorized) <= issued and sum(proxy.authorized.values()) >= 3, proxy.authorized
    assert not proxy.refusals, proxy.refusals
    used = {"client secret": client_secret, **{f"access token {i}": t for i, t in enumerate(issued)}}
    assert not leaks({"appender log": appender.log_text()}, used)


@pytest.mark.parametrize("refused", ["token", "credential"])
def test_a_refused_credential_stops_start_up_with_a_clear_message(
    lake_appender: AppenderFactory, catalog: RestCatalog, proxies: list[CatalogProxy], tmp_path: Path, refused: str
) -> None:
    proxy = guarded_catalog(catalog, proxies, tokens=[new_secret("right-token")], clients={"lake": new_secret("right")})
    wrong = new_secret("wrong")
    properties = {"token": wrong} if refused == "token" else {"credential": f"lake:{wrong}"}
    appender = lake_appender(guarded_config(catalog, proxy, "refused", properties), start=False)
    appender.start()
    assert appender.process is not None
    code = appender.process.wait(timeout=60)
    log = appender.log_text()
    assert code != 0, f"exit {code}:\n{log[-3000:]}"
    refusal = "failed to authenticate: the rest catalog refused the credentials (HTTP 401 Unauthorized)"
    assert refusal in log, log[-3000:]
    assert "check iceberg.properties token, or credential" in log
    assert "retrying" not in log, "refused credentials are not retried"
    if refused == "token":
        assert proxy.refusals and not proxy.exchanges, (proxy.refusals, proxy.exchanges)
    else:
        assert proxy.exchanges and not any(e["granted"] for e in proxy.exchanges), proxy.exchanges
    assert not leaks({"appender log": log}, {"wrong secret": wrong})


# ---- S3: keys from the environment or from files -----------------------------------------------


class SigningRecorder(CatalogProxy):
    """Forwards every request to the S3 server and records the access key id that signed it."""

    def __init__(self, target: str) -> None:
        super().__init__(target, "s3-recorder")
        self.key_ids: list[str] = []

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        authorization = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        found = re.search(r"Credential=([^/]+)/", authorization)
        with self.lock:
            self.key_ids.append(found.group(1) if found else "(unsigned)")
        return super().forward(method, path, headers, body)


@pytest.mark.parametrize("source", ["environment", "files"])
def test_s3_requests_are_signed_with_keys_from_the_environment_or_files(
    make_appender: AppenderFactory, store: ObjectStore, tmp_path: Path, source: str
) -> None:
    recorder = SigningRecorder(store.endpoint)
    try:
        key_id, secret_key = "AKIA" + secrets.token_hex(8).upper(), new_secret("s3-secret")
        properties = {
            "s3.endpoint": recorder.uri,
            "s3.region": REGION,
            "s3.path-style-access": "true",
            "s3.disable-ec2-metadata": "true",
        }
        if source == "environment":
            env = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret_key}
        else:
            properties["s3.access-key-id"] = secret_file(tmp_path / "access-key-id", key_id)
            properties["s3.secret-access-key"] = secret_file(tmp_path / "secret-access-key", secret_key)
            # The configured keys win over the environment's.
            env = {"AWS_ACCESS_KEY_ID": "AKIANOTTHEONE", "AWS_SECRET_ACCESS_KEY": new_secret("not-used")}
        prefix = f"signed-{source}"
        catalog_db = tmp_path / "catalog.db"
        config = {
            "iceberg": {
                "catalog_type": "sql",
                "catalog_uri": f"sqlite://{catalog_db}",
                "warehouse": f"s3://{BUCKET}/{prefix}",
                "properties": properties,
            },
            "log": {"level": "debug"},
        }
        appender = make_appender(config, env={**env, "HOME": str(tmp_path)})
        specs = loghub_records("OpenSSH", 200, tag=prefix)
        send(appender.ports, specs)
        assert appender.flush_http()["records"] == len(specs)

        reader = SqlCatalog(
            "telemetry_lake", uri=f"sqlite:///{catalog_db}", warehouse=f"s3://{BUCKET}/{prefix}", **store.properties()
        )
        problems = table_mismatches(reader.load_table("default.logs").scan().to_arrow(), specs)
        assert not problems, "\n  ".join(problems)
        assert recorder.key_ids and set(recorder.key_ids) == {key_id}, sorted(set(recorder.key_ids))
        assert not leaks({"appender log": appender.log_text()}, {"access key id": key_id, "secret key": secret_key})
    finally:
        recorder.close()


# ---- every output of a full run ---------------------------------------------------------------


@pytest.mark.timeout(600)
def test_no_secret_shows_in_any_output_of_a_full_run(
    request: pytest.FixtureRequest,
    make_appender: AppenderFactory,
    broker: Broker,
    catalog: RestCatalog,
    store: ObjectStore,
    proxies: list[CatalogProxy],
    helm: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    topic: str,
) -> None:
    """OTLP -> ingester -> Kafka -> appender -> REST catalog (OAuth2) on S3, both services at
    debug level, then a flush refused by the catalog (its error goes to logs and Stats); every
    output is searched for every secret the run used."""
    client_secret, sasl_password = new_secret("client-secret"), new_secret("sasl-password")
    s3_key_id, s3_secret = "AKIA" + secrets.token_hex(8).upper(), new_secret("s3-secret")
    proxy = guarded_catalog(catalog, proxies, clients={"lake": client_secret})
    files = tmp_path / "secrets"
    files.mkdir()
    kafka_secrets = {"sasl.password": "${env:LAKE_SASL_PASSWORD}"}
    config: dict[str, dict[str, Any]] = {
        "kafka": {
            "brokers": broker.bootstrap,
            "topic": topic,
            "partitions": 2,
            "group_id": f"{topic}-appenders",
            "producer": kafka_secrets,
            "consumer": kafka_secrets,
        },
        "iceberg": {
            "catalog_type": "rest",
            "catalog_uri": proxy.uri,
            "warehouse": catalog.warehouse,
            "table": "full_run",
            "properties": {
                "credential": f"lake:{secret_file(files / 'client-secret', client_secret)}",
                "s3.endpoint": store.endpoint,
                "s3.region": REGION,
                "s3.path-style-access": "true",
                "s3.access-key-id": secret_file(files / "s3-key-id", s3_key_id),
                "s3.secret-access-key": secret_file(files / "s3-secret", s3_secret),
            },
        },
        "log": {"level": "debug"},
    }
    env = {"LAKE_SASL_PASSWORD": sasl_password}
    ingester = Ingester(tmp_path / "ingester", broker, topic, config, env)
    request.node.stash.setdefault(APPENDERS, []).append(ingester)
    appender: Appender | None = None
    try:
        ingester.start_and_wait(timeout=60)
        appender = make_appender(config, env=env)
        specs = loghub_records("Zookeeper", 300, tag="full-run")
        send(ingester.ports, specs)

        def landed() -> bool:
            appender.flush_http()
            return len(load_rest_table(catalog, "full_run").scan().to_arrow()) >= len(specs)

        wait_until(landed, timeout=120, what="the records in the table", interval=1.0)
        problems = table_mismatches(load_rest_table(catalog, "full_run").scan().to_arrow(), specs, from_kafka=True)
        assert not problems, "\n  ".join(problems)

        # The catalog stops taking the token: a flush fails, and its error goes to Stats and logs.
        proxy.revoke_tokens()
        send(ingester.ports, loghub_records("Zookeeper", 50, tag="after-revoke"))
        wait_until(lambda: appender.stats()["buffer_records"] > 0, timeout=60, what="records staged")
        refused_flush = appender.http("POST", "/flush")
        assert refused_flush.status_code != 200, refused_flush.text
        stats = appender.stats()
        assert stats["last_flush"]["outcome"] == "failed" and "401" in stats["last_flush"]["error"], stats

        outputs = {
            "the refused flush's answer": refused_flush.text,
            "appender /stats": appender.http("GET", "/stats").text,
            "ingester /stats": ingester.http("GET", "/stats").text,
            "appender Stats (gRPC)": str(appender.stats_grpc()),
            "ingester Stats (gRPC)": str(ingester.stats_grpc()),
            "appender /metrics": appender.metrics(),
            "ingester /metrics": ingester.metrics(),
        }
    finally:
        for service in (ingester, appender):
            if service is not None and service.running:
                service.stop()
        ingester.close()
    outputs["appender stdout/stderr"] = appender.log_text()
    outputs["ingester stdout/stderr"] = ingester.log_text()
    for name in ("appender stdout/stderr", "ingester stdout/stderr"):
        assert " DEBUG " in outputs[name], f"{name} is not at debug level"

    # The Helm chart, with the same secrets given through its values.
    values = {
        "objectStore": {"accessKeyId": s3_key_id, "secretAccessKey": s3_secret},
        "secrets": {
            "files": [{"secretName": "catalog-oauth", "services": ["appender"]}],
            "env": [{"name": "LAKE_SASL_PASSWORD", "secretName": "kafka-user", "key": "password"}],
        },
        "config": {
            "kafka": {"producer": kafka_secrets, "consumer": kafka_secrets},
            "iceberg": {
                "properties": {"credential": "lake:${file:/var/run/secrets/telemetry-lake/catalog-oauth/secret}"}
            },
        },
    }
    docs = render(helm, tmp_path, values)
    secret_docs = [d for d in docs if d["kind"] == "Secret"]
    assert any(s3_secret in yaml.safe_dump(d) for d in secret_docs), "the Secret holds the S3 key"
    for doc in docs:
        if doc["kind"] != "Secret":
            outputs[f"chart {doc['kind']}/{doc['metadata']['name']}"] = yaml.safe_dump(doc)
    assert "${file:/var/run/secrets/telemetry-lake/catalog-oauth/secret}" in rendered_config(docs)[0]
    # A secret written into the chart's config is refused, and the refusal does not show it.
    plain = {"config": {"iceberg": {"properties": {"credential": f"lake:{client_secret}"}}}}
    refused_render = helm_template(helm, tmp_path, plain)
    assert refused_render.returncode != 0, "the chart put a secret in its ConfigMap"
    outputs["the chart's refusal"] = refused_render.stdout + refused_render.stderr

    used = {
        "OAuth2 client secret": client_secret,
        "Kafka SASL password": sasl_password,
        "S3 access key id": s3_key_id,
        "S3 secret key": s3_secret,
        **{f"access token {i}": e["token"] for i, e in enumerate(proxy.exchanges) if e["token"]},
    }
    assert proxy.exchanges, "the appender never asked for a token"
    found = leaks(outputs, used)
    assert not found, "secrets in the outputs:\n  " + "\n  ".join(found)
