"""Fixtures: appenders that are always killed after their test, with logs shown on failure."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

from kafka_harness import Broker
from lake_harness import NEVER_FLUSH, Appender, ConfigOverrides, merge_config

if TYPE_CHECKING:  # catalog_harness imports this module: import it at run time only in fixtures
    from catalog_harness import AppenderFactory, ObjectStore, RestCatalog

APPENDERS = pytest.StashKey[list[Appender]]()


class MakeAppender(Protocol):
    def __call__(
        self,
        config: ConfigOverrides | None = None,
        *,
        env: Mapping[str, str] | None = None,
        start: bool = True,
        config_in_env: bool = False,
    ) -> Appender: ...


@pytest.fixture
def make_appender(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeAppender]:
    """Creates appenders in their own dirs under tmp_path; by default nothing flushes on its own.

    `config` is merged over `NEVER_FLUSH` (a huge interval and thresholds), so a test that
    checks a trigger sets only that trigger. Started and ready unless `start=False`; the
    config goes in a file, or in environment variables only with `config_in_env=True`.
    """
    created: list[Appender] = []
    request.node.stash[APPENDERS] = created

    def make(
        config: ConfigOverrides | None = None,
        *,
        env: Mapping[str, str] | None = None,
        start: bool = True,
        config_in_env: bool = False,
    ) -> Appender:
        appender = Appender(
            tmp_path / f"appender-{len(created)}",
            merge_config(NEVER_FLUSH, config),
            env,
            config_in_env=config_in_env,
        )
        created.append(appender)
        if start:
            appender.start_and_wait()
        return appender

    yield make
    for appender in created:
        appender.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Kafka node per test module (tests use their own topics)."""
    node = Broker(tmp_path_factory.mktemp("kafka")).start_and_wait()
    yield node
    node.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """One S3-compatible server (moto) per test module."""
    from catalog_harness import ObjectStore

    s3 = ObjectStore(tmp_path_factory.mktemp("s3")).start_and_wait()
    yield s3
    s3.close()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, store: ObjectStore) -> Iterator[RestCatalog]:
    """One Iceberg REST catalog on `store` per test module (tests use their own tables)."""
    from catalog_harness import RestCatalog

    rest = RestCatalog(tmp_path_factory.mktemp("rest"), store).start_and_wait()
    yield rest
    rest.close()


@pytest.fixture
def lake_appender(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppenderFactory]:
    """Appenders on a catalog of the test's choosing, killed after the test."""
    from catalog_harness import AppenderFactory

    factory = AppenderFactory(request, tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def appender(make_appender: MakeAppender) -> Appender:
    """A running appender that flushes only when asked."""
    return make_appender()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for i, appender in enumerate(item.stash.get(APPENDERS, [])):
        report.sections.append((f"appender-{i} log ({appender.log_path}, {report.when})", appender.log_tail(200)))
