"""TLS, mTLS and bearer tokens on the listeners, with real clients (issue 16, inbound half).

The services (an embedded appender, and an ingester on a real Kafka broker) run with
`otlp.tls` / `admin.tls`, `otlp.auth` / `admin.auth` and the plain-text probe port
`admin.health_endpoint`; certificates are made by the test (harness/tls.py, `openssl`). The
clients are the ones users run: the OpenTelemetry Collector's `otlp_grpc` exporter with `tls`
and the `bearertokenauth` extension (tools/collector/otlp-grpc-tls-token.yaml, as the README
shows it), grpcurl with `-cacert`, `-cert`/`-key` and `-H 'authorization: Bearer …'`, curl over
HTTPS, and grpc-health-probe on the probe port. Readiness of every service here is checked
through the probe port, as Kubernetes would.

Checked: what a right token and certificate get through lands; a missing, wrong or garbage
token gets UNAUTHENTICATED / 401 and stages nothing; an untrusted, expired or missing client
certificate, plain text to a TLS port, TLS to a plain port and a too-old TLS version each get a
clear error on the client side and a counted refusal (`Stats.refusals`, `/metrics`), and the
server keeps serving; a certificate rotated on disk is served without a restart and a broken
replacement keeps the old one; a replaced tokens file takes effect; no token shows in logs,
`/stats` or `/metrics`.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests

from harness.clients import http_session, prometheus_samples
from harness.collector import COLLECTOR_CONFIGS, Collector, run_tool, tool
from harness.config import NEVER_FLUSH, ConfigOverrides, merge_config
from harness.kafka import Broker, Ingester
from harness.lake import APPENDERS, Appender, read_table
from harness.ports import free_ports
from harness.tls import Pair, Pki
from harness.wait import wait_until
from otlp_client import loghub_records, otlp_protobuf, send, table_mismatches

OTLP_TOKEN = "otlp-T0ken.alpha_7Qz"
ADMIN_TOKEN = "admin-T0ken~beta/9Xw="
TLS_COLLECTOR = COLLECTOR_CONFIGS / "otlp-grpc-tls-token.yaml"
HEALTH_SERVICE = "grpc.health.v1.Health/Check"
ADMIN = "telemetry_lake.admin.v1.Admin"


# ---- services whose readiness is read on the probe port ---------------------------------------


class ProbedReady:
    """`ready()` through `admin.health_endpoint` (plain text, no token), as a kubelet probes."""

    health_port: int

    def ready(self) -> bool:
        try:
            with http_session() as session:
                return session.get(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False


class SecureAppender(ProbedReady, Appender):
    def __init__(self, workdir: Path, config: ConfigOverrides, env: Mapping[str, str] | None = None) -> None:
        self.health_port = free_ports(1)[0]
        probe = {"admin": {"health_endpoint": f"127.0.0.1:{self.health_port}"}}
        super().__init__(workdir, merge_config(NEVER_FLUSH, probe, config), env)


class SecureIngester(ProbedReady, Ingester):
    def __init__(
        self, workdir: Path, broker: Broker, topic: str, config: ConfigOverrides, env: Mapping[str, str] | None = None
    ) -> None:
        self.health_port = free_ports(1)[0]
        probe = {"admin": {"health_endpoint": f"127.0.0.1:{self.health_port}"}}
        super().__init__(workdir, broker, topic, merge_config(probe, config), env)


class Started(Protocol):
    def __call__(self, node: Any) -> Any: ...


@pytest.fixture
def started(request: pytest.FixtureRequest) -> Iterator[Started]:
    """Starts a service or Collector and waits for it; killed after the test, its log shown when
    the test fails."""
    created: list[Any] = []

    def start(node: Any) -> Any:
        created.append(node)
        request.node.stash.setdefault(APPENDERS, []).append(node)
        return node.start_and_wait()

    yield start
    for node in created:
        node.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


# ---- clients ----------------------------------------------------------------------------------


def curl(*args: str) -> tuple[int, str, str]:
    """`curl -sS ARGS -w '\\n%{http_code}'`: (HTTP status, body, stderr); status 0 when curl failed."""
    out = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "-m", "20", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    body, _, code = out.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body, out.stderr


# grpc.health.v1 as published by gRPC: the OTLP ports serve no reflection, so grpcurl is given it.
HEALTH_PROTO = """syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"""


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    """grpcurl ARGS; a call of grpc.health.v1.Health/Check goes by health.proto, not reflection."""
    if args and args[-1] == HEALTH_SERVICE:
        proto_dir = Path(tempfile.gettempdir()) / "telemetry-lake-health-proto"
        proto_dir.mkdir(exist_ok=True)
        (proto_dir / "health.proto").write_text(HEALTH_PROTO)
        args = ("-import-path", str(proto_dir), "-proto", "health.proto", *args)
    return run_tool("grpcurl", *args, timeout=30)


def token_flag(token: str) -> list[str]:
    return ["-H", f"authorization: Bearer {token}"]


def admin_stats(node: Appender, ca: Path) -> dict[str, Any]:
    """`Stats` over admin gRPC with TLS and the admin token, as grpcurl prints it."""
    out = grpcurl("-cacert", str(ca), *token_flag(ADMIN_TOKEN), node.ports.admin_grpc_target, f"{ADMIN}/Stats")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def refusals(stats: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """`Stats.refusals` as {(listener, reason): count} (grpcurl prints uint64 as a string)."""
    return {(r["listener"], r["reason"]): int(r["count"]) for r in stats.get("refusals", [])}


def tls_collector(workdir: Path, target: str, ca: Path, token_file: Path, client: Pair | None = None) -> Collector:
    """The README's Collector config, unchanged but for its addresses and file paths."""
    overrides = {
        "exporters.otlp_grpc.endpoint": target,
        "exporters.otlp_grpc.tls.ca_file": str(ca),
        "extensions.bearertokenauth.filename": str(token_file),
    }
    if client is not None:
        overrides["exporters.otlp_grpc.tls.cert_file"] = str(client.cert)
        overrides["exporters.otlp_grpc.tls.key_file"] = str(client.key)
    return Collector(workdir, TLS_COLLECTOR, overrides)


def wait_collector_sent(collector: Collector, expected: int) -> None:
    wait_until(
        lambda: collector.metric_sum("otelcol_exporter_sent_log_records") >= expected,
        timeout=60,
        what=f"the collector to export {expected} log records",
        interval=0.2,
    )


def write_tokens(path: Path, *tokens: str) -> Path:
    """A tokens file, replaced by a rename as a Secret volume update lands."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# one token a line\n" + "".join(f"{t}\n" for t in tokens))
    os.replace(tmp, path)
    return path


# ---- tests ------------------------------------------------------------------------------------


def test_tls_and_tokens_on_every_port_with_the_collector_grpcurl_curl_and_the_probe(
    tmp_path: Path, pki: Pki, started: Started
) -> None:
    pki.ca("lake-ca")
    otlp_pair = pki.server("otlp", "lake-ca")
    admin_pair = pki.server("admin", "lake-ca")
    tokens = write_tokens(tmp_path / "otlp-tokens", OTLP_TOKEN)
    appender = started(
        SecureAppender(
            tmp_path / "appender",
            {
                "otlp": {
                    "tls": {"cert_file": otlp_pair.cert, "key_file": otlp_pair.key},
                    "auth": {"tokens_file": tokens},
                },
                "admin": {
                    "tls": {"cert_file": admin_pair.cert, "key_file": admin_pair.key},
                    "auth": {"tokens_env": "LAKE_ADMIN_TOKENS"},
                },
                # Every library's debug output too, for the check that no token is logged.
                "log": {"level": "debug"},
            },
            env={"LAKE_ADMIN_TOKENS": f"{ADMIN_TOKEN},another-admin-token"},
        )
    )
    ca = str(otlp_pair.ca)
    probe = f"127.0.0.1:{appender.health_port}"

    # The probe port: plain text, no token, health only.
    out = run_tool("grpc-health-probe", f"-addr={probe}", timeout=30)
    assert out.returncode == 0 and "status: SERVING" in out.stderr, (out.stdout, out.stderr)
    out = run_tool("grpc-health-probe", f"-addr={probe}", "-service=telemetry_lake.liveness", timeout=30)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert curl(f"http://{probe}/healthz")[0] == 200
    assert curl(f"http://{probe}/readyz")[:2] == (200, "ready\n")
    assert curl(f"http://{probe}/stats")[0] == 404, "the probe port serves nothing else"
    assert curl("-X", "POST", f"http://{probe}/flush")[0] in (404, 405)
    listed = grpcurl("-plaintext", probe, "list")
    assert listed.returncode != 0, f"no reflection on the probe port: {listed.stdout}"
    assert grpcurl("-plaintext", "-d", "{}", probe, f"{ADMIN}/Flush").returncode != 0

    # The Collector: otlp_grpc with tls.ca_file and bearertokenauth.
    token_file = tmp_path / "collector-token"
    token_file.write_text(OTLP_TOKEN + "\n")
    collector = started(
        tls_collector(tmp_path / "collector", appender.ports.otlp_grpc_target, otlp_pair.ca, token_file)
    )
    specs = loghub_records("OpenSSH", 60, tag="tls-collector")
    send(collector.ports, specs)
    wait_collector_sent(collector, len(specs))

    # A Collector with a wrong token: its log says why.
    wrong_file = tmp_path / "wrong-token"
    wrong_file.write_text("not-the-token\n")
    wrong = started(tls_collector(tmp_path / "wrong", appender.ports.otlp_grpc_target, otlp_pair.ca, wrong_file))
    send(wrong.ports, loghub_records("Spark", 5, tag="wrong-token"))
    wait_until(
        lambda: "code = Unauthenticated desc = invalid bearer token" in wrong.log_text(),
        timeout=30,
        what="the collector to log the refusal",
    )
    wrong.close()

    # curl over HTTPS: the right token is served, a missing or wrong one gets 401 and stages nothing.
    body = tmp_path / "one.pb"
    one = loghub_records("Apache", 1, tag="tls-curl")
    body.write_bytes(otlp_protobuf(one))
    post = ["--cacert", ca, "-H", "content-type: application/x-protobuf", "--data-binary", f"@{body}"]
    url = f"https://127.0.0.1:{appender.ports.otlp_http}/v1/logs"
    assert curl(*post, "-H", f"authorization: Bearer {OTLP_TOKEN}", url)[0] == 200
    status, text, _ = curl(*post, url)
    assert status == 401 and "missing bearer token" in text, (status, text)
    status, _, _ = curl(*post, "-H", "authorization: Bearer not-the-token", url)
    assert status == 401
    status, text, _ = curl("--cacert", ca, "-H", "content-type: application/json", "-d", "{}", url)
    assert status == 401 and json.loads(text)["code"] == 16, text
    # The admin port has its own tokens: the OTLP one is refused there.
    admin_url = f"https://127.0.0.1:{appender.ports.admin_http}"
    assert curl("--cacert", ca, "-H", f"authorization: Bearer {OTLP_TOKEN}", f"{admin_url}/stats")[0] == 401
    status, text, _ = curl("--cacert", ca, "-H", "authorization: Bearer another-admin-token", f"{admin_url}/stats")
    assert status == 200 and json.loads(text)["mode"] == "embedded"

    # grpcurl on the OTLP gRPC port: no token, a garbage header, then the token.
    target = appender.ports.otlp_grpc_target
    out = grpcurl("-cacert", ca, target, HEALTH_SERVICE)
    assert out.returncode != 0 and "Unauthenticated" in out.stderr and "missing bearer token" in out.stderr, out.stderr
    out = grpcurl("-cacert", ca, "-H", "authorization: Basic b3RscA==", target, HEALTH_SERVICE)
    assert "Unauthenticated" in out.stderr and "malformed authorization header" in out.stderr, out.stderr
    out = grpcurl("-cacert", ca, *token_flag(OTLP_TOKEN), target, HEALTH_SERVICE)
    assert out.returncode == 0 and "SERVING" in out.stdout, out.stderr

    # Flush with grpcurl on the admin port (TLS + admin token): exactly what was let in landed.
    out = grpcurl("-cacert", ca, *token_flag(ADMIN_TOKEN), appender.ports.admin_grpc_target, f"{ADMIN}/Flush")
    assert out.returncode == 0, out.stderr
    problems = table_mismatches(read_table(appender), specs + one)
    assert not problems, problems
    stats = admin_stats(appender, otlp_pair.ca)
    assert int(stats["appender"]["recordsReceived"]) == len(specs) + 1, "refused requests staged nothing"
    counts = refusals(stats)
    assert counts.pop(("otlp_grpc", "wrong_token")) >= 1, "the collector with the wrong token"
    assert counts == {
        ("otlp_http", "missing_token"): 2,
        ("otlp_http", "wrong_token"): 1,
        ("admin_http", "wrong_token"): 1,
        ("otlp_grpc", "missing_token"): 1,
        ("otlp_grpc", "malformed_header"): 1,
    }, stats.get("refusals")
    status, metrics, _ = curl("--cacert", ca, "-H", f"authorization: Bearer {ADMIN_TOKEN}", f"{admin_url}/metrics")
    assert status == 200
    samples = prometheus_samples(metrics)
    assert samples['listener_refusals_total{listener="otlp_http",reason="missing_token"}'] == 2
    assert samples['listener_refusals_total{listener="otlp_grpc",reason="malformed_header"}'] == 1

    # No token anywhere in what the service says.
    for text in (appender.log_text(), json.dumps(stats), metrics):
        for secret in (OTLP_TOKEN, ADMIN_TOKEN, "another-admin-token"):
            assert secret not in text


def test_mtls_refuses_missing_untrusted_and_expired_client_certificates(
    tmp_path: Path, pki: Pki, started: Started
) -> None:
    pki.ca("lake-ca")
    pki.ca("clients-ca")
    pki.ca("stranger-ca")
    server = pki.server("otlp", "lake-ca")
    client = pki.client("collector", "clients-ca")
    stranger = pki.client("stranger", "stranger-ca")
    expired = pki.expired_client("expired", "clients-ca")
    appender = started(
        SecureAppender(
            tmp_path / "appender",
            {
                "otlp": {
                    "tls": {
                        "cert_file": server.cert,
                        "key_file": server.key,
                        "client_ca_file": pki.dir / "clients-ca.crt",
                    }
                }
            },
        )
    )
    ca = str(server.ca)
    target = appender.ports.otlp_grpc_target

    def health(pair: Pair | None) -> subprocess.CompletedProcess[str]:
        identity = ["-cert", str(pair.cert), "-key", str(pair.key)] if pair else []
        return grpcurl("-connect-timeout", "2", "-cacert", ca, *identity, target, HEALTH_SERVICE)

    # grpcurl: served with the client certificate, refused without one or with a bad one.
    # (With TLS 1.3 the refusal reaches a Go client after its handshake, as an alert on its
    # first read; grpcurl's blocking dial then reports only "context deadline exceeded". The
    # Collector below and curl show the alert itself.)
    out = health(client)
    assert out.returncode == 0 and "SERVING" in out.stdout, out.stderr
    for pair in (None, stranger, expired):
        assert health(pair).returncode != 0

    # curl over HTTPS on the OTLP/HTTP port: OpenSSL names each alert.
    url = f"https://127.0.0.1:{appender.ports.otlp_http}/v1/logs"
    body = tmp_path / "one.pb"
    one = loghub_records("Linux", 1, tag="mtls")
    body.write_bytes(otlp_protobuf(one))
    post = ["--cacert", ca, "-H", "content-type: application/x-protobuf", "--data-binary", f"@{body}", url]

    def identity(pair: Pair) -> list[str]:
        return ["--cert", str(pair.cert), "--key", str(pair.key)]

    for args, alert in (
        ([], "alert certificate required"),
        (identity(stranger), "alert unknown ca"),
        (identity(expired), "alert certificate expired"),
    ):
        status, _, err = curl(*args, *post)
        assert status == 0 and alert in err, (alert, err)
    assert curl(*identity(client), *post)[0] == 200

    # The Collector: without its certificate it logs why; with it, its records land.
    token_file = tmp_path / "collector-token"
    token_file.write_text("unused-by-this-server\n")
    bare = started(tls_collector(tmp_path / "bare-collector", target, server.ca, token_file))
    send(bare.ports, loghub_records("Linux", 3, tag="bare"))
    wait_until(
        lambda: "tls: certificate required" in bare.log_text(), timeout=30, what="the collector to log the refusal"
    )
    bare.close()
    collector = started(tls_collector(tmp_path / "collector", target, server.ca, token_file, client))
    specs = loghub_records("Hadoop", 30, tag="mtls-collector")
    send(collector.ports, specs)
    wait_collector_sent(collector, len(specs))
    # The server kept serving: the trusted client again.
    assert health(client).returncode == 0

    counts = refusals(appender.stats())
    # gRPC clients reconnect, so a refused client may count more than once on the gRPC port.
    assert counts[("otlp_grpc", "missing_client_certificate")] >= 2, counts
    assert counts[("otlp_grpc", "untrusted_client_certificate")] >= 2, counts
    assert counts[("otlp_http", "missing_client_certificate")] == 1, counts
    assert counts[("otlp_http", "untrusted_client_certificate")] == 2, counts
    appender.flush_http()
    problems = table_mismatches(read_table(appender), specs + one)
    assert not problems, problems


def test_certificate_and_tokens_replaced_on_disk_without_a_restart(tmp_path: Path, pki: Pki, started: Started) -> None:
    pki.ca("ca-1")
    pki.ca("ca-2")
    first = pki.server("first", "ca-1")
    second = pki.server("second", "ca-2")
    third = pki.server("third", "ca-1")
    secret = tmp_path / "secret"  # cert-manager's Secret layout: tls.crt, tls.key, ca.crt
    first.install(secret)
    tokens = write_tokens(tmp_path / "tokens", "token-one")
    appender = started(
        SecureAppender(
            tmp_path / "appender",
            {
                "otlp": {
                    "tls": {"cert_file": secret / "tls.crt", "key_file": secret / "tls.key"},
                    "auth": {"tokens_file": tokens},
                }
            },
        )
    )
    target = appender.ports.otlp_grpc_target

    def check(ca: Path, token: str) -> subprocess.CompletedProcess[str]:
        return grpcurl("-cacert", str(ca), *token_flag(token), target, HEALTH_SERVICE)

    assert check(first.ca, "token-one").returncode == 0
    out = check(second.ca, "token-one")
    assert out.returncode != 0 and "certificate signed by unknown authority" in out.stderr, out.stderr

    second.install(secret)
    wait_until(lambda: check(second.ca, "token-one").returncode == 0, timeout=10, what="the rotated certificate")
    assert check(first.ca, "token-one").returncode != 0, "the old certificate is no longer served"
    assert "certificate files changed, reloaded" in appender.log_text()

    # Half a rotation: a new certificate beside the old key. The old pair keeps serving.
    broken = "cannot be loaded, serving the previous certificate"
    logged = appender.log_text().count(broken)
    third.install(secret, key=False)
    assert check(second.ca, "token-one").returncode == 0, "the previous pair still serves"
    wait_until(lambda: appender.log_text().count(broken) > logged, timeout=10, what="the broken pair to be logged")
    # The key arrives: the new pair serves.
    third.install(secret)
    wait_until(lambda: check(third.ca, "token-one").returncode == 0, timeout=10, what="the completed rotation")

    # Tokens: the file is replaced; the old token is refused, the new one served.
    write_tokens(tokens, "token-two")
    wait_until(
        lambda: check(third.ca, "token-two").returncode == 0 and check(third.ca, "token-one").returncode != 0,
        timeout=10,
        what="the new tokens file to take effect",
    )
    # A broken tokens file keeps the tokens.
    tokens.write_text("token three with spaces\n")
    wait_until(
        lambda: check(third.ca, "token-two").returncode == 0 and "keeping the previous tokens" in appender.log_text(),
        timeout=10,
        what="the broken tokens file to be logged while the tokens stay",
    )
    assert appender.running


def test_wrong_protocol_and_old_tls_get_a_clear_error_and_a_counted_refusal(
    tmp_path: Path, pki: Pki, started: Started
) -> None:
    pki.ca("lake-ca")
    server = pki.server("otlp", "lake-ca")
    appender = started(
        SecureAppender(
            tmp_path / "appender",
            {"otlp": {"tls": {"cert_file": server.cert, "key_file": server.key, "min_version": "1.3"}}},
        )
    )
    ca = str(server.ca)
    otlp_grpc, admin_grpc = appender.ports.otlp_grpc_target, appender.ports.admin_grpc_target

    # Plain text to the TLS ports: every call is answered that TLS is required.
    out = grpcurl("-plaintext", otlp_grpc, HEALTH_SERVICE)
    assert "Code: Unauthenticated" in out.stderr and "this port requires TLS" in out.stderr, out.stderr
    status, text, _ = curl(f"http://127.0.0.1:{appender.ports.otlp_http}/v1/logs")
    assert status == 400 and "this port requires TLS" in text, (status, text)
    # TLS to the plain-text admin ports.
    out = grpcurl("-connect-timeout", "2", "-cacert", ca, admin_grpc, HEALTH_SERVICE)
    assert out.returncode != 0 and "first record does not look like a TLS handshake" in out.stderr, out.stderr
    status, _, err = curl("--cacert", ca, f"https://127.0.0.1:{appender.ports.admin_http}/stats")
    assert status == 0 and "wrong version number" in err, err
    # TLS 1.2 to a port that takes 1.3 only.
    status, _, err = curl("--cacert", ca, "--tls-max", "1.2", f"https://127.0.0.1:{appender.ports.otlp_http}/v1/logs")
    assert status == 0 and "alert protocol version" in err, err

    # Everyone else is still served.
    assert grpcurl("-cacert", ca, otlp_grpc, HEALTH_SERVICE).returncode == 0
    assert grpcurl("-plaintext", admin_grpc, HEALTH_SERVICE).returncode == 0
    counts = refusals(appender.stats())
    assert counts.pop(("admin_grpc", "tls_to_plaintext_port")) >= 1, "a gRPC client may retry"
    assert counts == {
        ("otlp_grpc", "plaintext_to_tls_port"): 1,
        ("otlp_http", "plaintext_to_tls_port"): 1,
        ("admin_http", "tls_to_plaintext_port"): 1,
        ("otlp_http", "tls_handshake"): 1,
    }, counts


def test_ingester_with_tls_tokens_and_the_collector(
    tmp_path: Path, pki: Pki, started: Started, broker: Broker, topic: str
) -> None:
    """The ingester shares the listeners: the Collector's records reach Kafka over TLS with a
    token, a wrong token is refused and counted, the probe port answers."""
    pki.ca("lake-ca")
    server = pki.server("ingester", "lake-ca")
    tokens = write_tokens(tmp_path / "tokens", OTLP_TOKEN)
    tls = {"cert_file": server.cert, "key_file": server.key}
    ingester = started(
        SecureIngester(
            tmp_path / "ingester",
            broker,
            topic,
            {
                "otlp": {"tls": tls, "auth": {"tokens_file": tokens}},
                "admin": {"tls": tls, "auth": {"tokens_file": tokens}},
            },
        )
    )
    out = run_tool("grpc-health-probe", f"-addr=127.0.0.1:{ingester.health_port}", timeout=30)
    assert out.returncode == 0, (out.stdout, out.stderr)
    token_file = tmp_path / "collector-token"
    token_file.write_text(OTLP_TOKEN + "\n")
    collector = started(tls_collector(tmp_path / "collector", ingester.ports.otlp_grpc_target, server.ca, token_file))
    specs = loghub_records("Zookeeper", 40, tag="tls-ingester")
    send(collector.ports, specs)
    wait_collector_sent(collector, len(specs))

    out = grpcurl("-cacert", str(server.ca), *token_flag("wrong"), ingester.ports.otlp_grpc_target, HEALTH_SERVICE)
    assert "Unauthenticated" in out.stderr, out.stderr
    body = tmp_path / "refused.pb"
    body.write_bytes(otlp_protobuf(loghub_records("Apache", 5, tag="refused")))
    status, _, _ = curl(
        "--cacert", str(server.ca), "-H", "content-type: application/x-protobuf", "--data-binary", f"@{body}",
        f"https://127.0.0.1:{ingester.ports.otlp_http}/v1/logs",
    )  # fmt: skip
    assert status == 401
    out = grpcurl(
        "-cacert", str(server.ca), *token_flag(OTLP_TOKEN), ingester.ports.admin_grpc_target, f"{ADMIN}/Stats"
    )
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert int(stats["ingester"]["recordsReceived"]) == len(specs), "the refused export produced nothing"
    assert int(stats["ingester"]["recordsDelivered"]) == len(specs), stats
    assert refusals(stats) == {("otlp_grpc", "wrong_token"): 1, ("otlp_http", "missing_token"): 1}, stats
    assert OTLP_TOKEN not in ingester.log_text()


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    """The Go tools, built once (cached); before any test's timeout starts."""
    for name in ("otelcol", "grpcurl", "grpc-health-probe"):
        tool(name)
