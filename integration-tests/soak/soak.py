#!/usr/bin/env python3
"""The soak: a million real log lines through everything that goes wrong in production, counted.

What flows: OTLP/HTTP protobuf exports of Loghub lines (`shared/data/loghub`), each record with a
unique `soak.seq` attribute, into the `ingester`, which produces them to a Kafka topic; 3 Kafka-mode
`appender`s in one consumer group write one Iceberg table (`default.soak`) through the Iceberg REST
catalog on an S3-compatible store (moto behind a gate). The services, broker, catalog and store
are the integration tests' harness (`integration-tests/tests/harness/`).

While the load runs, a chaos thread does, spread over the run (each one when the acknowledged
records cross its share of the total): `kill -9` of a random appender (restarted after a few
seconds), broker restarts (two controlled, the last a `kill -9`), rebalances (an extra appender
joins the group, later leaves it with SIGTERM), a catalog outage (its JVM stopped), an object
store outage (connections refused), a second writer (pyiceberg appends a few rows of its own, no
telemetry-lake properties) and a snapshot expiry (every snapshot but the current one).

At the end it waits for the table to settle (every partition's lag 0, staging empty), reads the
`soak.seq` of every row with pyiceberg and prints: records sent, acknowledged (HTTP 200 and no
`partial_success` rejections), in the table, lost (acknowledged, not in the table), doubled (in
the table more than once), the disruptions done and the duration. Exit 1 when anything was lost
or doubled (or a planned disruption could not be done), 2 on a harness failure.

    soak.py [--records N] [--seed S] [--quick] [--workdir DIR] [--json FILE]

Run it through `run.sh` beside this file (release binaries, the tests' venv).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import requests  # noqa: E402
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from pyiceberg.exceptions import CommitFailedException  # noqa: E402
from pyiceberg.table import Table  # noqa: E402

from harness.catalog import ObjectStore, RestCatalog, pyiceberg_rest, rest_config  # noqa: E402
from harness.clients import http_session  # noqa: E402
from harness.config import merge_config  # noqa: E402
from harness.kafka import Broker, Ingester  # noqa: E402
from harness.lake import Appender, without_field_ids  # noqa: E402
from harness.paths import bin_dir  # noqa: E402
from otlp_client import loghub_lines, severity_of  # noqa: E402

TABLE = "soak"
TOPIC = "soak-logs"
SEQ = "soak.seq"
FOREIGN = "soak.foreign"
PARTITIONS = 6
SYSTEMS = ("Apache", "HDFS", "Hadoop", "Linux", "OpenSSH", "OpenStack", "Spark", "Zookeeper")
BASE_NS = 1_795_780_800 * 10**9  # 2026-11-27T12:00:00Z
STEP_NS = 250_000_000  # a million records span about three days (three day partitions)
# Catalog calls give up after 10 s of silence (as in test_outages.py), so a flush during an
# outage fails instead of hanging for minutes.
FAST_FAILURE = {"rest.client.socket-timeout-ms": "10000"}


@dataclass(frozen=True)
class Profile:
    records: int
    batch: int
    senders: int
    min_load_seconds: float  # the load is paced to last at least this long
    flush_interval: str
    outage_seconds: float
    kills: int
    broker_restarts: int
    rebalances: int
    foreign_writes: int
    settle_timeout: float


FULL = Profile(1_000_000, 500, 2, 540, "5s", 30, 10, 3, 5, 2, 600)
QUICK = Profile(15_000, 200, 2, 60, "2s", 5, 2, 1, 2, 1, 150)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the load: OTLP exports with a sequence id per record ------------------------------------


class Lines:
    """Real log lines per system, cycled through."""

    def __init__(self) -> None:
        self.lines = {system: loghub_lines(system) for system in SYSTEMS}

    def request(self, first_seq: int, count: int, rng: random.Random) -> bytes:
        """An export of records `first_seq` .. `first_seq + count - 1`, under two resources
        (services `<system>-<n>`, so the keys spread over the partitions)."""
        request = ExportLogsServiceRequest()
        half = count // 2
        for part, (start, n) in enumerate(((first_seq, half), (first_seq + half, count - half))):
            system = SYSTEMS[rng.randrange(len(SYSTEMS))]
            resource_logs = request.resource_logs.add()
            attribute = resource_logs.resource.attributes.add()
            attribute.key, attribute.value.string_value = "service.name", f"{system}-{(first_seq // count + part) % 4}"
            scope_logs = resource_logs.scope_logs.add()
            scope_logs.scope.name, scope_logs.scope.version = "telemetry-lake-soak", "1"
            lines = self.lines[system]
            for seq in range(start, start + n):
                line = lines[seq % len(lines)]
                number, text = severity_of(line)
                record = scope_logs.log_records.add()
                record.time_unix_nano = BASE_NS + seq * STEP_NS
                record.observed_time_unix_nano = BASE_NS + seq * STEP_NS + 1_000
                record.severity_number, record.severity_text = number, text
                record.body.string_value = line
                seq_attribute = record.attributes.add()
                seq_attribute.key, seq_attribute.value.string_value = SEQ, str(seq)
        return request.SerializeToString()


@dataclass
class LoadState:
    sent: int = 0  # records sent at least once
    acknowledged: int = 0
    resent_records: int = 0  # records of batches sent again after an unanswered attempt
    refused_batches: list[str] = field(default_factory=list)  # non-retryable answers
    answers: Counter[str] = field(default_factory=Counter)
    acked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    resent: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


class Load:
    """`profile.senders` threads POSTing batches of consecutive sequence ids to the ingester,
    paced to last at least `min_load_seconds`, each batch retried until answered 200 as an OTLP
    exporter does (429/503 after `Retry-After`, capped at 2 s; no answer: again after 1 s)."""

    GIVE_UP_SECONDS = 600

    def __init__(self, url: str, records: int, profile: Profile, seed: int) -> None:
        self.url = url
        self.records = records
        self.profile = profile
        self.seed = seed
        self.lines = Lines()
        self.state = LoadState(acked=np.zeros(records, dtype=bool), resent=np.zeros(records, dtype=bool))
        self.lock = threading.Lock()
        self.next_batch = 0
        self.batches = (records + profile.batch - 1) // profile.batch
        self.rate = records / profile.min_load_seconds
        self.threads: list[threading.Thread] = []
        self.started = 0.0
        self.halted = threading.Event()

    def start(self) -> Load:
        self.started = time.monotonic()
        for n in range(self.profile.senders):
            thread = threading.Thread(target=self._run, args=(n,), name=f"load-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    @property
    def done(self) -> bool:
        return all(not t.is_alive() for t in self.threads)

    def halt(self) -> None:
        """Stops sending: no new batch, no more retries (a disruption failed; the run is over)."""
        self.halted.set()

    def acknowledged(self) -> int:
        with self.lock:
            return self.state.acknowledged

    def _take(self) -> int | None:
        with self.lock:
            if self.next_batch >= self.batches or self.halted.is_set():
                return None
            self.next_batch += 1
            return self.next_batch - 1

    def _run(self, n: int) -> None:
        session = http_session()
        rng = random.Random(self.seed * 1000 + n)
        try:
            while (number := self._take()) is not None:
                first = number * self.profile.batch
                count = min(self.profile.batch, self.records - first)
                due = self.started + first / self.rate
                time.sleep(max(0.0, due - time.monotonic()))
                self._send(session, self.lines.request(first, count, rng), first, count)
        except Exception:  # noqa: BLE001 - a sender that dies is reported, the rest go on
            log(f"sender {n} failed:\n{traceback.format_exc()}")
        finally:
            session.close()

    def _send(self, session: requests.Session, payload: bytes, first: int, count: int) -> None:
        with self.lock:
            self.state.sent += count
        deadline = time.monotonic() + self.GIVE_UP_SECONDS
        while time.monotonic() < deadline and not self.halted.is_set():
            try:
                response = session.post(
                    self.url, data=payload, headers={"Content-Type": "application/x-protobuf"}, timeout=60
                )
            except requests.RequestException as error:
                with self.lock:
                    self.state.answers[f"no answer ({type(error).__name__})"] += 1
                    if not self.state.resent[first]:
                        self.state.resent[first : first + count] = True
                        self.state.resent_records += count
                time.sleep(1)
                continue
            with self.lock:
                self.state.answers[str(response.status_code)] += 1
            if response.status_code == 200:
                rejected = ExportLogsServiceResponse.FromString(response.content).partial_success
                with self.lock:
                    if rejected.rejected_log_records:
                        self.state.refused_batches.append(
                            f"seq {first}..{first + count - 1}: {rejected.rejected_log_records} rejected "
                            f"({rejected.error_message})"
                        )
                    else:
                        self.state.acked[first : first + count] = True
                        self.state.acknowledged += count
                return
            if response.status_code in (429, 503):
                retry_after = response.headers.get("retry-after", "1")
                time.sleep(min(float(retry_after) if retry_after.isdigit() else 1.0, 2.0))
                continue
            with self.lock:
                self.state.refused_batches.append(
                    f"seq {first}..{first + count - 1}: HTTP {response.status_code} {response.text[:200]}"
                )
            return
        why = "abandoned, the run was halted" if self.halted.is_set() else f"gave up after {self.GIVE_UP_SECONDS} s"
        with self.lock:
            self.state.refused_batches.append(f"seq {first}..{first + count - 1}: {why}")


# ---- the lake and the chaos ------------------------------------------------------------------


class Lake:
    """Broker, store, catalog, ingester and the appenders of one consumer group."""

    def __init__(self, workdir: Path, profile: Profile, rng: random.Random) -> None:
        self.workdir = workdir
        self.profile = profile
        self.rng = rng
        self.broker = Broker(workdir / "kafka")
        self.store = ObjectStore(workdir / "s3")
        self.catalog = RestCatalog(workdir / "rest", self.store)
        self.ingester: Ingester | None = None
        self.appenders: list[Appender] = []  # every one ever started (logs)
        self.members: list[Appender] = []  # the group's current members
        self.extra: list[Appender] = []  # members that joined for a rebalance

    def start(self, appenders: int) -> None:
        log(f"starting Kafka, moto, the REST catalog (binaries from {bin_dir()})")
        kafka = threading.Thread(target=self.broker.start_and_wait, name="start-kafka")
        kafka.start()
        self.store.start_and_wait()
        self.catalog.start_and_wait(timeout=120)
        kafka.join()
        if not self.broker.running:
            raise AssertionError(f"Kafka did not start; see {self.broker.log_path}")
        self.ingester = Ingester(self.workdir / "ingester", self.broker, TOPIC, {"kafka": {"partitions": PARTITIONS}})
        self.ingester.start_and_wait(timeout=120)
        # The ingester created the topic: the appenders all join at once, one rebalance.
        self.members = [self.new_appender().start() for _ in range(appenders)]
        for appender in self.members:
            appender.wait_ready(timeout=120)
        log(f"{len(self.members)} appenders up in group {TOPIC}-appenders")

    def new_appender(self) -> Appender:
        config = merge_config(
            rest_config(self.catalog, TABLE, FAST_FAILURE),
            {
                "kafka": {"brokers": self.broker.bootstrap, "topic": TOPIC, "group_id": f"{TOPIC}-appenders"},
                "flush": {"interval": self.profile.flush_interval, "max_records": 100_000, "max_bytes": "64MiB"},
            },
            # A member killed with -9 holds its partitions until its session times out (librdkafka's
            # default: 45 s); 10 s keeps the soak moving.
            {"kafka": {"consumer": {"session.timeout.ms": "10000"}}},
        )
        appender = Appender(self.workdir / f"appender-{len(self.appenders)}", config)
        self.appenders.append(appender)
        return appender

    def table(self) -> Table:
        return pyiceberg_rest(self.catalog).load_table(f"default.{TABLE}")

    def close(self) -> None:
        for process in [*self.appenders, self.ingester]:
            if process is not None:
                process.close()
        for service in (self.catalog, self.store, self.broker):
            try:
                service.close()
            except Exception as error:  # noqa: BLE001 - close the rest anyway
                log(f"closing {type(service).__name__}: {error}")


def retry_commit(what: str, action: Callable[[], None], attempts: int = 20) -> None:
    """A pyiceberg commit that may race the appenders' commits: tried again on a conflict."""
    for attempt in range(attempts):
        try:
            action()
            return
        except CommitFailedException as error:
            log(f"{what}: commit conflict ({error}), attempt {attempt + 1}; again")
            time.sleep(0.5)
    raise AssertionError(f"{what}: {attempts} commit conflicts in a row")


class Chaos:
    """The disruptions, each one a method; `counts` says how many were done."""

    def __init__(self, lake: Lake, profile: Profile, rng: random.Random) -> None:
        self.lake = lake
        self.profile = profile
        self.rng = rng
        self.counts: Counter[str] = Counter()
        self.foreign_rows = 0
        self.notes: list[str] = []

    def plan(self) -> list[str]:
        """The events in order: the outages, the second writer and the expiry in the middle,
        kills, broker restarts and rebalances spread between them."""
        p = self.profile
        middle = ["catalog_outage", "foreign_write", "snapshot_expiry", "s3_outage"] + ["foreign_write"] * (
            p.foreign_writes - 1
        )
        others = ["kill"] * p.kills + ["broker_restart"] * p.broker_restarts + ["rebalance"] * p.rebalances
        self.rng.shuffle(others)
        # The middle events after the first third of the others, so the expiry has history.
        split = len(others) // 3
        events = others[:split]
        rest = others[split:]
        step = max(1, len(rest) // (len(middle) + 1))
        for i, event in enumerate(middle):
            events += rest[i * step : (i + 1) * step] + [event]
        events += rest[len(middle) * step :]
        return events

    def do(self, event: str) -> None:
        started = time.monotonic()
        getattr(self, event)()
        self.counts[event] += 1
        log(f"{event} #{self.counts[event]} done in {time.monotonic() - started:.1f} s")

    def kill(self) -> None:
        victim = self.rng.choice(self.lake.members)
        log(f"kill -9 {victim.workdir.name} (pid {victim.pid})")
        victim.kill9()
        time.sleep(self.rng.uniform(1, 5))
        victim.start_and_wait(timeout=180)

    def broker_restart(self) -> None:
        hard = self.counts["broker_restart"] == self.profile.broker_restarts - 1 and self.profile.broker_restarts > 1
        log(f"broker {'kill -9' if hard else 'stop'} and start")
        if hard:
            self.lake.broker.kill9()
        else:
            self.lake.broker.stop()
        time.sleep(3)
        self.lake.broker.start_and_wait(timeout=180)

    def rebalance(self) -> None:
        """An extra appender joins the group, or the last one that joined leaves it (SIGTERM)."""
        if self.lake.extra and self.counts["rebalance"] % 2 == 1:
            leaving = self.lake.extra.pop()
            log(f"{leaving.workdir.name} leaves the group")
            self.lake.members.remove(leaving)
            code = leaving.stop(timeout=120)
            if code != 0:
                self.notes.append(f"{leaving.workdir.name} exited with {code} on SIGTERM")
        else:
            joining = self.lake.new_appender()
            log(f"{joining.workdir.name} joins the group")
            joining.start_and_wait(timeout=180)
            self.lake.members.append(joining)
            self.lake.extra.append(joining)

    def catalog_outage(self) -> None:
        log(f"catalog down for {self.profile.outage_seconds:.0f} s")
        self.lake.catalog.stop()
        time.sleep(self.profile.outage_seconds)
        self.lake.catalog.start_and_wait(timeout=180)

    def s3_outage(self) -> None:
        log(f"object store down for {self.profile.outage_seconds:.0f} s")
        self.lake.store.down()
        time.sleep(self.profile.outage_seconds)
        self.lake.store.up()

    def foreign_write(self) -> None:
        """Another tool appends 3 rows of its own: pyarrow writes a Parquet file next to the
        appenders' data, pyiceberg adds it in a snapshot with no telemetry-lake properties."""
        n = self.counts["foreign_write"]

        def append() -> None:
            table = self.lake.table()
            rows = table.scan(limit=3).to_arrow()
            if rows.num_rows == 0:
                raise AssertionError("the table is still empty; the foreign writer needs a row to copy")
            plain = without_field_ids(rows)
            count = plain.num_rows
            schema = plain.schema
            columns = {
                "body": pa.array([f"foreign writer row {n}-{i}" for i in range(count)], schema.field("body").type),
                "log_attributes": pa.array(
                    [[(FOREIGN, f"{n}-{i}")] for i in range(count)], schema.field("log_attributes").type
                ),
                # One day partition for the whole file (add_files takes its partition from the stats).
                "timestamp": pa.array([plain.column("timestamp")[0].as_py()] * count, schema.field("timestamp").type),
                "kafka_partition": pa.nulls(count, schema.field("kafka_partition").type),
                "kafka_offset": pa.nulls(count, schema.field("kafka_offset").type),
            }
            for name, column in columns.items():
                plain = plain.set_column(schema.get_field_index(name), schema.field(name), column)
            buffer = pa.BufferOutputStream()
            pq.write_table(plain, buffer)
            path = f"{table.location()}/data/foreign-{n}-{uuid.uuid4().hex}.parquet"
            with table.io.new_output(path).create() as out:
                out.write(buffer.getvalue().to_pybytes())
            table.add_files([path])
            self.foreign_rows += count

        retry_commit("foreign write", append)

    def snapshot_expiry(self) -> None:
        def expire() -> None:
            table = self.lake.table()
            current = table.current_snapshot()
            if current is None:
                raise AssertionError("no snapshot to keep")
            old = [s.snapshot_id for s in table.snapshots() if s.snapshot_id != current.snapshot_id]
            if old:
                table.maintenance.expire_snapshots().by_ids(old).commit()
            log(f"expired {len(old)} snapshots, kept {current.snapshot_id}")

        retry_commit("snapshot expiry", expire)

    def run(self, events: list[str], load: Load, records: int, stop: threading.Event, min_gap: float) -> None:
        last_end = time.monotonic()
        for i, event in enumerate(events):
            threshold = records * (i + 1) / (len(events) + 1)
            while not stop.is_set() and not (
                (load.acknowledged() >= threshold or load.done) and time.monotonic() - last_end >= min_gap
            ):
                time.sleep(0.5)
            if stop.is_set():
                return
            try:
                self.do(event)
            except Exception:  # noqa: BLE001 - reported; the run goes on and counts what was done
                self.notes.append(f"{event} failed: {traceback.format_exc(limit=3)}")
                log(f"{event} FAILED:\n{traceback.format_exc()}")
            last_end = time.monotonic()


# ---- settling and counting -------------------------------------------------------------------


def settled(lake: Lake) -> tuple[bool, str]:
    """Every partition assigned to a running member, with lag 0, and every staging empty."""
    partitions: dict[int, int] = {}
    buffered = 0
    for appender in lake.members:
        if not appender.running:
            return False, f"{appender.workdir.name} is not running"
        try:
            stats = appender.stats()
        except Exception as error:  # noqa: BLE001 - not yet
            return False, f"{appender.workdir.name}: {error}"
        buffered += int(stats["buffer_records"])
        for p in stats["appender"]["partitions"]:
            partitions[p["partition"]] = p["lag"]
    lag = sum(partitions.values())
    ok = len(partitions) == PARTITIONS and lag == 0 and buffered == 0
    return ok, f"{len(partitions)}/{PARTITIONS} partitions, lag {lag}, staged {buffered}"


def sequence_counts(table: Table, records: int) -> tuple[np.ndarray, int, int]:
    """How often each sequence id is in the table; rows with a foreign marker; other rows."""
    rows = table.scan(selected_fields=("log_attributes",)).to_arrow().column("log_attributes").combine_chunks()
    keys, items = rows.keys, rows.items
    seqs = pc.filter(items, pc.equal(keys, SEQ)).cast(pa.int64()).to_numpy(zero_copy_only=False)
    foreign = int(pc.sum(pc.equal(keys, FOREIGN)).as_py() or 0)
    unknown = len(rows) - len(seqs) - foreign + int(np.count_nonzero((seqs < 0) | (seqs >= records)))
    counts = np.bincount(seqs[(seqs >= 0) & (seqs < records)], minlength=records)
    return counts, foreign, unknown


def ranges(ids: np.ndarray, limit: int = 20) -> str:
    """`ids` (sorted) as `a..b` runs, the first `limit` of them."""
    if len(ids) == 0:
        return "-"
    runs, start, prev = [], ids[0], ids[0]
    for x in ids[1:]:
        if x != prev + 1:
            runs.append((start, prev))
            start = x
        prev = x
    runs.append((start, prev))
    text = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in runs[:limit])
    return text + (f", ... ({len(runs)} runs)" if len(runs) > limit else "")


# ---- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, help="log records to send (default 1,000,000; --quick 20,000)")
    parser.add_argument("--seed", type=int, default=1, help="chooses the order of events and their victims")
    parser.add_argument("--quick", action="store_true", help="a small run of about two minutes")
    parser.add_argument("--workdir", type=Path, help="where the services live (default: a new temp dir, kept)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args()

    profile = QUICK if args.quick else FULL
    records = args.records or profile.records
    rng = random.Random(args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="telemetry-lake-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"soak: {records:,} records, seed {args.seed}, {'quick' if args.quick else 'full'}; workdir {workdir}")

    started = time.monotonic()
    lake = Lake(workdir, profile, rng)
    chaos = Chaos(lake, profile, rng)
    events = chaos.plan()
    log("plan: " + ", ".join(events))
    stop = threading.Event()
    try:
        lake.start(3)
        assert lake.ingester is not None
        load = Load(lake.ingester.ports.otlp_http_url, records, profile, args.seed).start()
        chaos_thread = threading.Thread(
            target=chaos.run, args=(events, load, records, stop, 3 if args.quick else 10), name="chaos", daemon=True
        )
        chaos_thread.start()
        last = 0.0
        while not load.done or chaos_thread.is_alive():
            if chaos.notes:  # a disruption failed: what follows would only wait for it
                log("a disruption failed; halting the load and counting what is in the table")
                stop.set()
                load.halt()
                chaos_thread.join()
                break
            time.sleep(1)
            if time.monotonic() - last >= (10 if args.quick else 30):
                last = time.monotonic()
                state = load.state
                log(
                    f"sent {state.sent:,}, acknowledged {state.acknowledged:,}, events "
                    f"{sum(chaos.counts.values())}/{len(events)}, members {len(lake.members)}"
                )
        load_seconds = time.monotonic() - started
        log(f"load and chaos done after {load_seconds:.0f} s; waiting for the table to settle")
        deadline = time.monotonic() + profile.settle_timeout
        ok, why = settled(lake)
        while not ok and not chaos.notes and time.monotonic() < deadline:
            time.sleep(2)
            ok, why = settled(lake)
        if not ok and not chaos.notes:
            chaos.notes.append(f"the table did not settle within {profile.settle_timeout:.0f} s: {why}")
        log(f"settled: {ok} ({why})")
        counts, foreign, unknown = sequence_counts(lake.table(), records)
        snapshots = len(lake.table().snapshots())
    except Exception:  # noqa: BLE001 - the harness failed: say where the logs are
        stop.set()
        log(f"the soak itself failed (logs under {workdir}):\n{traceback.format_exc()}")
        return 2
    finally:
        stop.set()
        lake.close()
    duration = time.monotonic() - started

    state = load.state
    acked = state.acked
    lost_ids = np.flatnonzero(acked & (counts == 0))
    doubled_ids = np.flatnonzero(counts > 1)
    unacked_in_table = int(np.count_nonzero(~acked & (counts > 0)))
    planned = Counter(events)
    result: dict[str, Any] = {
        "halted": load.halted.is_set(),
        "records_sent": state.sent,
        "acknowledged": state.acknowledged,
        "in_table": int(np.count_nonzero(counts)),
        "lost": len(lost_ids),
        "doubled": len(doubled_ids),
        "doubled_of_resent": int(np.count_nonzero(state.resent[doubled_ids])) if len(doubled_ids) else 0,
        "in_table_not_acknowledged": unacked_in_table,
        "resent_after_no_answer": state.resent_records,
        "foreign_rows": foreign,
        "foreign_rows_written": chaos.foreign_rows,
        "unknown_rows": unknown,
        "snapshots_at_end": snapshots,
        "disruptions": {event: chaos.counts[event] for event in planned},
        "planned": dict(planned),
        "answers": dict(state.answers),
        "refused": state.refused_batches[:20],
        "notes": chaos.notes,
        "lost_ids": ranges(lost_ids),
        "doubled_ids": ranges(doubled_ids),
        "duration_seconds": round(duration),
        "seed": args.seed,
        "workdir": str(workdir),
    }

    rows = [
        ("records sent", f"{result['records_sent']:,}"),
        ("acknowledged (OTLP success)", f"{result['acknowledged']:,}"),
        ("in the table", f"{result['in_table']:,}"),
        ("lost (acknowledged, not in the table)", f"{result['lost']:,}"),
        ("doubled (sequence id more than once)", f"{result['doubled']:,}"),
        ("foreign rows (second writer)", f"{foreign} of {chaos.foreign_rows} written"),
        ("appender kill -9 (and restart)", f"{chaos.counts['kill']}"),
        ("Kafka broker restarts", f"{chaos.counts['broker_restart']}"),
        ("rebalances (appender joins/leaves)", f"{chaos.counts['rebalance']}"),
        ("catalog outages", f"{chaos.counts['catalog_outage']} ({profile.outage_seconds:.0f} s)"),
        ("S3 outages", f"{chaos.counts['s3_outage']} ({profile.outage_seconds:.0f} s)"),
        ("second-writer commits (pyiceberg)", f"{chaos.counts['foreign_write']}"),
        ("snapshot expiries", f"{chaos.counts['snapshot_expiry']}"),
        ("duration", f"{duration / 60:.1f} min"),
    ]
    width = max(len(name) for name, _ in rows)
    vwidth = max(len(value) for _, value in rows)
    print()
    print(f"| {'soak':<{width}} | {'':>{vwidth}} |")
    print(f"|{'-' * (width + 2)}|{'-' * (vwidth + 1)}:|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value:>{vwidth}} |")
    print()
    print(f"answers from the ingester: {dict(state.answers)}; resent after no answer: {state.resent_records}")
    if unacked_in_table:
        print(f"in the table but never acknowledged (sent, not answered 200): {unacked_in_table}")
    if unknown:
        print(f"rows with neither {SEQ} nor {FOREIGN}, or an unknown sequence id: {unknown}")
    for line in state.refused_batches[:20]:
        print(f"refused: {line}")
    for note in chaos.notes:
        print(f"note: {note}")
    if len(lost_ids) and not load.halted.is_set():
        print(f"LOST sequence ids: {result['lost_ids']}")
    if len(doubled_ids):
        print(f"DOUBLED sequence ids: {result['doubled_ids']} ({result['doubled_of_resent']} of them were resent)")
    print(f"logs: {workdir}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))

    failed = result["lost"] or result["doubled"] or unknown or foreign != chaos.foreign_rows
    incomplete = dict(chaos.counts) != dict(planned) or state.refused_batches or chaos.notes
    if load.halted.is_set():
        print("SOAK INCOMPLETE: a disruption failed (see the notes), so the run was halted before the table")
        print("settled; records missing from the table may still be staged, and nothing is judged lost")
        return 1
    if failed:
        print("SOAK FAILED: records were lost or doubled (or rows appeared that nobody wrote)")
        return 1
    if incomplete:
        print("SOAK INCOMPLETE: not every planned disruption was done, or a batch was refused")
        return 1
    if not args.workdir and args.quick:
        shutil.rmtree(workdir, ignore_errors=True)  # a full run's logs are kept for a look
    print("SOAK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
