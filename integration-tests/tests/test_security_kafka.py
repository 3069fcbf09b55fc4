"""Kafka with SASL_SSL (SCRAM-SHA-512) and mTLS, against a real broker configured that way.

One `SecureBroker` per module: a SASL_SSL listener, an SSL listener that requires a client
certificate, and certificates `kafka/certs.sh` made for this run. The services reach it only
through the secured listeners, configured with `[kafka.tls]` / `[kafka.sasl]` (the ingester) or
librdkafka's keys in `[kafka.client]` (the appender), for every client: topic creation, the
ingester's producer and probe, the appender's id lookups, consumer and dead-letter producer. The
secrets come from a file (`${file:…}`) or an environment variable (`${env:…}`). The tests' own
Java client reads the topics over the broker's PLAINTEXT listener.

Every output of a run (logs at debug level, `/stats`, `/metrics`, gRPC `Stats`, errors) is
searched for the secrets it used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.config import merge_config
from harness.kafka import Ingester, SecureBroker
from harness.lake import APPENDERS, Appender, AppenderFactory
from harness.wait import wait_until
from otlp_client import LogSpec, loghub_records, send
from test_appender_kafka import assert_exactly, drain, kafka_config

# A wrong password must stop start-up within this (librdkafka answers in well under a second).
FAIL_FAST_SECONDS = 20


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    node = SecureBroker(tmp_path_factory.mktemp("kafka-secure")).start_and_wait()
    yield node
    node.close()


def secured(bootstrap: str, client: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Config overrides pointing a service at a secured listener with `[kafka.client]`."""
    return {"kafka": {"brokers": bootstrap, "client": client}, "log": {"level": "debug"}}


def sections(bootstrap: str, tables: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Config overrides pointing a service at a secured listener with `[kafka.tls]` and
    `[kafka.sasl]`."""
    return {"kafka": {"brokers": bootstrap, **tables}, "log": {"level": "debug"}}


def start_ingester(
    request: pytest.FixtureRequest,
    workdir: Path,
    broker: SecureBroker,
    topic: str,
    overrides: dict[str, Any],
    **kw: Any,
) -> Ingester:
    ingester = Ingester(workdir, broker, topic, overrides, **kw)
    request.node.stash.setdefault(APPENDERS, []).append(ingester)
    return ingester


def outputs(*services: Appender) -> str:
    """Everything the services showed: logs, `/stats`, `/metrics` and gRPC `Stats`."""
    parts = []
    for service in services:
        parts.append(service.log_text())
        if service.running:
            parts += [service.http("GET", "/stats", timeout=10).text, service.metrics(), str(service.stats_grpc())]
    return "\n".join(parts)


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:4]}…) appears in the services' output"


def flow(ingester: Ingester, appender: Appender, broker: SecureBroker, topic: str, tag: str) -> list[LogSpec]:
    """Records through the ingester and a garbage record on the topic: the records land in the
    table, the garbage on the dead-letter topic."""
    sent = loghub_records("OpenSSH", 300, tag=f"{tag}-a")
    send(ingester.ports, sent)
    broker.produce(topic, "OpenSSH", b"\x0a\xff\xff\xff not protobuf")
    more = loghub_records("Spark", 300, tag=f"{tag}-b")
    send(ingester.ports, more)
    sent += more
    drain(appender, len(sent))
    assert_exactly(appender, sent)
    wait_until(lambda: len(broker.records(f"{topic}-dlq")) == 1, timeout=60, what="one dead letter")
    assert appender.stats()["appender"]["dead_lettered"] == 1
    # The ingester created the topic through the secured listener, with kafka.partitions.
    assert broker.partitions(topic) == 4
    return sent


def test_sasl_ssl_scram_carries_records_and_dead_letters(
    request: pytest.FixtureRequest,
    make_appender: AppenderFactory,
    secure_broker: SecureBroker,
    topic: str,
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "kafka-password"
    password_file.write_text(secure_broker.password + "\n")
    # The ingester reads the password from a file, the appender from an environment variable.
    ingester = start_ingester(
        request,
        tmp_path / "ingester",
        secure_broker,
        topic,
        sections(secure_broker.sasl_bootstrap, secure_broker.sasl_sections(f"${{file:{password_file}}}")),
    )
    ingester.start_and_wait(timeout=60)
    # The appender has no ssl.ca.location: OpenSSL's default CAs, here the test CA through
    # SSL_CERT_FILE, as the system's CAs would be in production.
    client = secure_broker.sasl_client("${env:KAFKA_PASSWORD}")
    del client["ssl.ca.location"]
    lake = tmp_path / "lake"
    appender = make_appender(
        merge_config(kafka_config(secure_broker, topic, lake), secured(secure_broker.sasl_bootstrap, client)),
        env={"KAFKA_PASSWORD": secure_broker.password, "SSL_CERT_FILE": str(secure_broker.tls_dir / "ca.crt")},
    )
    flow(ingester, appender, secure_broker, topic, "sasl")
    assert_no_secret(outputs(ingester, appender), secure_broker.password)
    assert ingester.stop() == 0 and appender.stop() == 0
    assert_no_secret(outputs(ingester, appender), secure_broker.password)


def test_mtls_carries_records_and_dead_letters(
    request: pytest.FixtureRequest,
    make_appender: AppenderFactory,
    secure_broker: SecureBroker,
    topic: str,
    tmp_path: Path,
) -> None:
    key_password_file = tmp_path / "key-password"
    key_password_file.write_text(secure_broker.key_password + "\n")
    key_password = f"${{file:{key_password_file}}}"
    ingester = start_ingester(
        request,
        tmp_path / "ingester",
        secure_broker,
        topic,
        sections(secure_broker.ssl_bootstrap, secure_broker.mtls_sections(key_password)),
    )
    ingester.start_and_wait(timeout=60)
    lake = kafka_config(secure_broker, topic, tmp_path / "lake")
    client = secure_broker.mtls_client(key_password)
    appender = make_appender(merge_config(lake, secured(secure_broker.ssl_bootstrap, client)))
    flow(ingester, appender, secure_broker, topic, "mtls")
    assert_no_secret(outputs(ingester, appender), secure_broker.key_password)


def test_untrusted_certificates_are_refused_both_ways(
    request: pytest.FixtureRequest, secure_broker: SecureBroker, topic: str, tmp_path: Path
) -> None:
    """The mTLS listener lets in no client without a certificate, or with one from another CA;
    and a client that does not trust the broker's CA (no `ca_file`, and the system's CAs do not
    hold the test CA) does not talk to it, right password or not. Each ingester stays not
    ready and keeps trying, as for an unreachable broker."""
    ssl = secure_broker.ssl_bootstrap
    no_cert = {"security.protocol": "SSL", "ssl.ca.location": str(secure_broker.tls_dir / "ca.crt")}
    untrusted_broker = secure_broker.sasl_sections(secure_broker.password)
    untrusted_broker["tls"] = {}
    overrides = {
        "no-cert": (secured(ssl, no_cert), "certificate"),
        "rogue": (secured(ssl, secure_broker.mtls_client("", name="rogue")), "certificate"),
        "untrusted-broker": (sections(secure_broker.sasl_bootstrap, untrusted_broker), "certificate verify failed"),
    }
    ingesters = {
        name: start_ingester(request, tmp_path / name, secure_broker, topic, config).start()
        for name, (config, _) in overrides.items()
    }
    wait_until(
        lambda: all("kafka unreachable" in i.log_text() for i in ingesters.values()),
        timeout=30,
        what="every ingester to report kafka unreachable",
    )
    time.sleep(3)
    for name, ingester in ingesters.items():
        ingester.assert_alive()
        assert not ingester.ready(), ingester.log_tail()
        assert overrides[name][1] in ingester.log_text(), f"{name}:\n{ingester.log_tail()}"
    assert secure_broker.partitions(topic) == -1, "the topic was created without trusted certificates"
    assert_no_secret(outputs(*ingesters.values()), secure_broker.password)


def wait_exit(service: Appender, timeout: float) -> int:
    wait_until(lambda: not service.running, timeout=timeout, what=f"{service.name} to exit")
    code = service.process.poll() if service.process else None
    assert code is not None
    return code


def test_a_wrong_password_stops_start_up_with_a_clear_message(
    request: pytest.FixtureRequest,
    make_appender: AppenderFactory,
    secure_broker: SecureBroker,
    topic: str,
    tmp_path: Path,
) -> None:
    wrong = "wrong-" + secure_broker.password[::-1]
    ingester = start_ingester(
        request,
        tmp_path / "ingester",
        secure_broker,
        topic,
        sections(secure_broker.sasl_bootstrap, secure_broker.sasl_sections("${env:KAFKA_PASSWORD}")),
        env={"KAFKA_PASSWORD": wrong},
    )
    client = secure_broker.sasl_client("${env:KAFKA_PASSWORD}")
    lake = kafka_config(secure_broker, topic, tmp_path / "lake")
    appender = make_appender(
        merge_config(lake, secured(secure_broker.sasl_bootstrap, client)),
        env={"KAFKA_PASSWORD": wrong},
        start=False,
    )
    started = time.monotonic()
    ingester.start()
    appender.start()
    for service in (ingester, appender):
        code = wait_exit(service, FAIL_FAST_SECONDS)
        assert code != 0, f"{service.name} exited with 0 after a failed authentication"
        log = service.log_text()
        for part in ("kafka authentication failed", secure_broker.sasl_bootstrap, "SCRAM-SHA-512", "[kafka.sasl]"):
            assert part in log, f"{service.name}'s message lacks {part!r}:\n{service.log_tail()}"
        assert_no_secret(log, wrong, secure_broker.password)
    assert time.monotonic() - started < FAIL_FAST_SECONDS
    assert secure_broker.partitions(topic) == -1, "a topic was created with a wrong password"


def test_a_wrong_key_password_stops_start_up(
    request: pytest.FixtureRequest,
    make_appender: AppenderFactory,
    secure_broker: SecureBroker,
    topic: str,
    tmp_path: Path,
) -> None:
    """librdkafka cannot decrypt the client key: both services stop at once, naming the key
    file setting, not retrying."""
    wrong = "wrong-" + secure_broker.key_password[::-1]
    ingester = start_ingester(
        request,
        tmp_path / "ingester",
        secure_broker,
        topic,
        sections(secure_broker.ssl_bootstrap, secure_broker.mtls_sections("${env:KEY_PASSWORD}")),
        env={"KEY_PASSWORD": wrong},
    )
    lake = kafka_config(secure_broker, topic, tmp_path / "lake")
    client = secure_broker.mtls_client("${env:KEY_PASSWORD}")
    appender = make_appender(
        merge_config(lake, secured(secure_broker.ssl_bootstrap, client)), env={"KEY_PASSWORD": wrong}, start=False
    )
    ingester.start()
    appender.start()
    for service in (ingester, appender):
        assert wait_exit(service, FAIL_FAST_SECONDS) != 0, f"{service.name} exited with 0"
        assert "ssl.key.location failed" in service.log_text(), service.log_tail()
        assert_no_secret(service.log_text(), wrong, secure_broker.key_password)
    assert secure_broker.partitions(topic) == -1
