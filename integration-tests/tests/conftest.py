"""Fixtures: processes that are always killed after their test, with logs shown on failure."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.catalog import ObjectStore, RestCatalog
from harness.kafka import Broker, Ingester
from harness.lake import APPENDERS, Appender, AppenderFactory
from harness.process import Process

# The tests that measure the machine: memory (RSS) or a wall-clock bound on what the binaries do.
# run.sh runs every other test in parallel (pytest-xdist) first, then these alone (`-m serial`),
# so no other test's processes compete with them. A module name: all its tests.
SERIAL: dict[str, set[str] | None] = {
    "test_load.py": None,
    "test_bench_quick.py": None,
    "test_soak_quick.py": None,
    "test_exactly_once_rebalance.py": None,
    "test_bad_input.py": {"test_bombs_keep_memory_bounded"},
    "test_embedded.py": {"test_waits_for_an_unreachable_catalog_instead_of_exiting"},
    "test_ingester.py": {
        "test_broker_outage_gives_retryable_errors_and_health_flips",
        "test_sigterm_drains_an_export_in_flight",
    },
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SERIAL:
            names = SERIAL[item.path.name]
            if names is None or getattr(item, "originalname", item.name) in names:
                item.add_marker(pytest.mark.serial)


@pytest.fixture
def make_appender(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppenderFactory]:
    """Creates appenders in their own dirs under tmp_path (`appender-N`); by default nothing
    flushes on its own (see `AppenderFactory`)."""
    factory = AppenderFactory(request, tmp_path)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Kafka node per test module (tests use their own topics)."""
    node = Broker(tmp_path_factory.mktemp("kafka")).start_and_wait()
    yield node
    node.close()


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A Kafka topic of the test's own, named after it."""
    return re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name).strip("-")[:80]


@pytest.fixture
def ingester(request: pytest.FixtureRequest, tmp_path: Path, broker: Broker, topic: str) -> Iterator[Ingester]:
    """An ingester writing to `topic`, closed (logs shown on failure) with the test's appenders."""
    node = Ingester(tmp_path / "ingester", broker, topic)
    request.node.stash.setdefault(APPENDERS, []).append(node)
    node.start_and_wait(timeout=60)
    yield node
    node.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """One S3-compatible server (moto) per test module."""
    s3 = ObjectStore(tmp_path_factory.mktemp("s3")).start_and_wait()
    yield s3
    s3.close()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, store: ObjectStore) -> Iterator[RestCatalog]:
    """One Iceberg REST catalog on `store` per test module (tests use their own tables)."""
    rest = RestCatalog(tmp_path_factory.mktemp("rest"), store).start_and_wait()
    yield rest
    rest.close()


@pytest.fixture
def lake_appender(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppenderFactory]:
    """Appenders on a catalog of the test's choosing (`lake-appender-N`), killed after the test."""
    factory = AppenderFactory(request, tmp_path, "lake-appender")
    yield factory
    factory.close()


@pytest.fixture
def appender(make_appender: AppenderFactory) -> Appender:
    """A running appender that flushes only when asked."""
    return make_appender()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for i, process in enumerate(item.stash.get(APPENDERS, [])):
        report.sections.append((f"appender-{i} log ({process.log_path}, {report.when})", process.log_tail(200)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """After the fixtures' finalizers, kills whatever a test registered in `APPENDERS` and left
    running (an ingester a test started itself), so no process outlives its test."""
    yield
    for process in item.stash.get(APPENDERS, []):
        if isinstance(process, Process):
            process.close()
