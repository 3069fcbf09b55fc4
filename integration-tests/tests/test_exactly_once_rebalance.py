"""Exactly once, and no stalls, through rebalances while commits are slow and staging is full.

Appenders in one group read a topic that keeps being written to; a proxy in front of the REST
catalog holds every table commit for a while, so staging (small here) fills up, consumption
pauses with messages in hand, and a commit is in flight whenever the group rebalances.

- A third appender joins and leaves: every acknowledged record is in the table exactly once
  (messages read before a revocation are not staged after it); and, with commits slower than
  a member may take to rejoin, the revocations do not wait for them (the newcomer gets its
  partitions within seconds, nobody is evicted).
- An appender paused by a full staging gains partitions (the other one leaves): those do not
  fetch while it is paused (before, each message they brought was sought back, again and
  again: the consumer thread spun).
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.catalog import RestCatalog, load_rest_table, rest_config
from harness.catalog_proxy import CatalogProxy
from harness.config import merge_config
from harness.kafka import Broker, Ingester
from harness.lake import Appender, AppenderFactory
from harness.wait import wait_until
from otlp_client import LogSpec, loghub_records, send, table_mismatches

# What librdkafka logs when a member was (or is about to be) thrown out of the group.
EVICTED = re.compile(r"PollExceeded|poll interval .* exceeded|UNKNOWN_MEMBER_ID|Unknown member|fenced", re.IGNORECASE)


class SlowCommitProxy(CatalogProxy):
    """Holds every table commit for `delay` seconds before sending it on."""

    def __init__(self, target: str) -> None:
        super().__init__(target, "slow-commit-proxy")
        self.delay = 0.0
        self.held = 0
        self.commits = 0
        self.released = threading.Event()

    def commit(self, path: str, headers: dict[str, str], body: bytes) -> bool:
        if self.delay > 0:
            with self.lock:
                self.held += 1
            self.released.wait(timeout=self.delay)
            with self.lock:
                self.held -= 1
        return True

    def committed(self) -> None:
        with self.lock:
            self.commits += 1

    def fast(self) -> None:
        """Commits go straight through from now on, held ones included."""
        self.delay = 0.0
        self.released.set()

    def close(self) -> None:
        self.fast()
        super().close()


@pytest.fixture
def proxy(catalog: RestCatalog) -> Iterator[SlowCommitProxy]:
    node = SlowCommitProxy(catalog.uri)
    yield node
    node.close()


def group_config(proxy: SlowCommitProxy, catalog: RestCatalog, broker: Broker, topic: str) -> dict[str, Any]:
    """Appenders of one group on the REST catalog behind `proxy`, with a small staging, and a
    group that evicts a member which does not rejoin within 15 s."""
    config = merge_config(
        rest_config(catalog, topic.replace("-", "_"), {"rest.client.socket-timeout-ms": "60000"}),
        {
            "kafka": {
                "brokers": broker.bootstrap,
                "topic": topic,
                "group_id": f"{topic}-appenders",
                "consumer": {
                    "session.timeout.ms": "10000",
                    "heartbeat.interval.ms": "1000",
                    "max.poll.interval.ms": "15000",
                },
            },
            "staging": {"max_bytes": "96KiB"},
            "flush": {"interval": "1s", "max_records": 100_000_000, "max_bytes": "32KiB"},
        },
    )
    config["iceberg"]["catalog_uri"] = proxy.uri
    return config


class Producer:
    """Sends small batches to the ingester until stopped; keeps what was acknowledged."""

    def __init__(self, ingester: Ingester, tag: str) -> None:
        self.ingester = ingester
        self.tag = tag
        self.sent: list[LogSpec] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="producer", daemon=True)
        self.thread.start()

    def run(self) -> None:
        systems = ("Apache", "HDFS", "Hadoop", "Linux", "OpenSSH", "OpenStack", "Spark", "Zookeeper")
        i = 0
        while not self.stopped.is_set():
            batch = loghub_records(systems[i % len(systems)], 20, start=(20 * i) % 1500, tag=f"{self.tag}-{i}")
            send(self.ingester.ports, batch)
            self.sent += batch
            i += 1
            time.sleep(0.05)

    def stop(self) -> list[LogSpec]:
        self.stopped.set()
        self.thread.join(timeout=60)
        return self.sent


def assigned(appender: Appender) -> list[int]:
    return sorted(p["partition"] for p in appender.log_partitions())


def full(appender: Appender) -> bool:
    return "staging is full" in appender.log_text()


def assert_all_landed_once(
    appenders: list[Appender], proxy: SlowCommitProxy, catalog: RestCatalog, topic: str, sent: list[LogSpec]
) -> list[str]:
    """Flushes every appender until the table holds what was sent; returns the mismatches."""
    proxy.fast()
    table = topic.replace("-", "_")

    def landed() -> bool:
        for appender in appenders:
            appender.http("POST", "/flush")
        return len(load_rest_table(catalog, table).scan().to_arrow()) >= len(sent)

    try:
        wait_until(landed, timeout=120, what=f"{len(sent)} rows in the table", interval=2.0)
    except Exception:  # noqa: BLE001 - the mismatches below say what is missing
        pass
    time.sleep(3)
    for appender in appenders:
        appender.http("POST", "/flush")
    rows = load_rest_table(catalog, table).scan().to_arrow()
    return table_mismatches(rows, sent, from_kafka=True)


@dataclasses.dataclass
class Rebalanced:
    """What a third appender joining and leaving the group did."""

    problems: list[str]
    joined_in: float
    left_in: float
    logs: dict[str, str]


def join_and_leave(
    lake_appender: AppenderFactory,
    config: dict[str, Any],
    proxy: SlowCommitProxy,
    catalog: RestCatalog,
    ingester: Ingester,
    topic: str,
    delay: float,
) -> Rebalanced:
    """Two appenders share the topic while records flow; commits take `delay` s from when
    both stagings are full; a third appender joins, then leaves; then commits are fast again
    and everything is flushed."""
    first, second = lake_appender(config), lake_appender(config)
    wait_until(
        lambda: sorted(assigned(first) + assigned(second)) == [0, 1, 2, 3] and assigned(first) and assigned(second),
        timeout=60,
        what="both appenders own partitions",
    )
    producer = Producer(ingester, "flow")
    time.sleep(3)

    # Commits are slow from now on: staging fills up, consumption pauses with messages in hand.
    proxy.delay = delay
    wait_until(lambda: full(first) and full(second), timeout=90, what="both stagings full", interval=0.5)
    wait_until(lambda: proxy.held >= 2, timeout=60, what="a commit of each in flight", interval=0.2)

    third = lake_appender(config, start=False)
    joined_at = time.monotonic()
    third.start_and_wait()

    def spread() -> bool:
        owned = [assigned(first), assigned(second), assigned(third)]
        return all(owned) and sorted(sum(owned, [])) == [0, 1, 2, 3]

    wait_until(spread, timeout=90, what="the partitions spread over three appenders", interval=0.5)
    joined_in = time.monotonic() - joined_at

    time.sleep(5)
    # It leaves the group as it stops, then commits what it staged (slowly: in the background).
    left_at = time.monotonic()
    stopped: list[int] = []
    stopping = threading.Thread(target=lambda: stopped.append(third.stop(timeout=120)), daemon=True)
    stopping.start()
    wait_until(
        lambda: sorted(assigned(first) + assigned(second)) == [0, 1, 2, 3] and assigned(first) and assigned(second),
        timeout=90,
        what="the partitions back with two appenders",
        interval=0.5,
    )
    left_in = time.monotonic() - left_at
    time.sleep(5)
    sent = producer.stop()

    problems = assert_all_landed_once([first, second], proxy, catalog, topic, sent)
    stopping.join(timeout=120)
    assert stopped == [0], f"the third appender's exit: {stopped}"
    logs = {f"appender {i}": appender.log_text() for i, appender in enumerate((first, second, third))}
    return Rebalanced(problems, joined_in, left_in, logs)


@pytest.mark.timeout(420)
def test_messages_read_before_a_rebalance_are_not_staged_after_it(
    lake_appender: AppenderFactory,
    catalog: RestCatalog,
    proxy: SlowCommitProxy,
    broker: Broker,
    ingester: Ingester,
    topic: str,
) -> None:
    """Item 5 alone: librdkafka's default max.poll.interval.ms (300 s), so a revocation that
    waits for a 10 s commit is slow but evicts nobody."""
    config = group_config(proxy, catalog, broker, topic)
    for key in ("session.timeout.ms", "max.poll.interval.ms"):
        del config["kafka"]["consumer"][key]
    done = join_and_leave(lake_appender, config, proxy, catalog, ingester, topic, delay=10.0)
    assert not done.problems, "records lost or doubled:\n  " + "\n  ".join(done.problems)
    dropped = sum("messages read before their partitions were revoked" in text for text in done.logs.values())
    assert dropped >= 1, "no appender had messages of revoked partitions in hand: the test proved nothing"


@pytest.mark.timeout(420)
def test_revocations_do_not_wait_for_slow_commits(
    lake_appender: AppenderFactory,
    catalog: RestCatalog,
    proxy: SlowCommitProxy,
    broker: Broker,
    ingester: Ingester,
    topic: str,
) -> None:
    """Item 7a: commits take 25 s, a member must rejoin within 15 s (max.poll.interval.ms)."""
    config = group_config(proxy, catalog, broker, topic)
    done = join_and_leave(lake_appender, config, proxy, catalog, ingester, topic, delay=25.0)
    evicted = {name: EVICTED.findall(text)[:3] for name, text in done.logs.items() if EVICTED.search(text)}
    not_waited = sum("revoking without waiting for the commit in flight" in text for text in done.logs.values())
    failures = []
    if done.problems:
        failures.append("records lost or doubled:\n  " + "\n  ".join(done.problems))
    # A revocation that waits for the 25 s commit keeps the group from completing the rebalance.
    if done.joined_in > 15:
        failures.append(f"the third appender got its partitions only after {done.joined_in:.1f} s")
    if done.left_in > 15:
        failures.append(f"the partitions of the third appender were taken over only after {done.left_in:.1f} s")
    if evicted:
        failures.append(f"members were evicted from the group: {evicted}")
    assert not failures, "\n".join(failures)
    assert not_waited >= 1, "no revocation went on without waiting for a commit in flight"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(300)
def test_partitions_gained_while_paused_do_not_fetch(
    lake_appender: AppenderFactory,
    catalog: RestCatalog,
    proxy: SlowCommitProxy,
    broker: Broker,
    ingester: Ingester,
    topic: str,
) -> None:
    # Cooperative: the first only gains partitions, no revocation waits for its commits. Logs
    # only: cooperative-sticky balances the count of partitions over every topic, so with the
    # traces and metrics topics one member could own all the logs partitions from the start.
    config = merge_config(
        group_config(proxy, catalog, broker, topic),
        {
            "kafka": {"consumer": {"partition.assignment.strategy": "cooperative-sticky"}},
            "signals": {"traces": False, "metrics": False},
        },
    )
    first, second = lake_appender(config), lake_appender(config)
    wait_until(lambda: assigned(first) and assigned(second), timeout=60, what="both appenders own partitions")
    producer = Producer(ingester, "flow")
    time.sleep(2)
    proxy.delay = 120.0
    wait_until(lambda: full(first), timeout=90, what="the first appender's staging full", interval=0.5)
    # Gone without a word: the group gives its partitions to the first after session.timeout.ms.
    second.kill9()
    wait_until(lambda: assigned(first) == [0, 1, 2, 3], timeout=60, what="every partition with the first")
    # The producer goes on: the gained partitions always have messages to fetch.
    time.sleep(2)
    pid, resumed = first.pid, first.log_text().count("consumption resumed")
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(10)
    used, elapsed = cpu_seconds(pid) - before, time.monotonic() - started
    still_paused = first.log_text().count("consumption resumed") == resumed
    sent = producer.stop()
    assert still_paused, "staging drained while the commits were held; the test measured nothing"
    assert used < 0.25 * elapsed, (
        f"the paused appender used {used:.1f} CPU-s in {elapsed:.1f} s: its gained partitions are fetched and "
        "sought back over and over"
    )
    problems = assert_all_landed_once([first], proxy, catalog, topic, sent)
    assert not problems, "records lost or doubled:\n  " + "\n  ".join(problems)
