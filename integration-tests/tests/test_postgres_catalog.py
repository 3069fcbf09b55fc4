"""The SQL catalog on PostgreSQL (`iceberg.catalog_uri = "postgres://..."`), data on S3.

A throwaway PostgreSQL cluster (catalog/postgres.sh) with a password checked by scram-sha-256,
and moto behind its gate for the data. The appender commits; pyiceberg's SqlCatalog on the same
database reads the rows back. The password never shows in the appender's log, stats or errors,
not even when it is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.catalog import ObjectStore, Postgres, postgres_config, pyiceberg_postgres
from harness.lake import AppenderFactory
from otlp_client import Transport, loghub_records, send, table_mismatches


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    postgres = Postgres(tmp_path_factory.mktemp("postgres"))
    postgres.start_and_wait()
    yield postgres
    postgres.close()


def test_appender_commits_through_postgres_and_pyiceberg_reads_it_back(
    lake_appender: AppenderFactory, db: Postgres, store: ObjectStore
) -> None:
    appender = lake_appender(postgres_config(db, store, "pg", "logs"))
    first = loghub_records("Zookeeper", 1200, tag="pg-1")
    second = loghub_records("HDFS", 800, tag="pg-2")
    send(appender.ports, first, Transport.GRPC)
    assert appender.flush_http()["records"] == len(first)
    send(appender.ports, second, Transport.HTTP_PROTOBUF)
    assert appender.flush_http()["records"] == len(second)

    catalog = pyiceberg_postgres(db, store, "pg")
    table = catalog.load_table("default.logs")
    assert table.metadata_location.startswith("s3://lake/pg/default/logs/metadata/"), table.metadata_location
    assert len(table.snapshots()) == 2
    problems = table_mismatches(table.scan().to_arrow(), first + second)
    assert not problems, "pyiceberg read differs from what was sent:\n  " + "\n  ".join(problems)

    # A restart finds the same table in postgres and adds to it.
    appender.restart()
    third = loghub_records("Apache", 100, tag="pg-3")
    send(appender.ports, third, Transport.GRPC)
    appender.flush_http()
    table = catalog.load_table("default.logs")
    assert len(table.snapshots()) == 3
    assert not table_mismatches(table.scan().to_arrow(), first + second + third)

    for leak in (db.password, store.secret_access_key):
        assert leak not in appender.log_text(), "a secret is in the appender's log"
        assert leak not in appender.http("GET", "/stats").text
        assert leak not in appender.metrics()


def test_a_wrong_postgres_password_stops_the_appender_naming_the_catalog_not_the_password(
    lake_appender: AppenderFactory, db: Postgres, store: ObjectStore
) -> None:
    """A catalog that is down is waited for, but one refusing the credentials cannot start
    working with the same credentials: the appender exits non-zero at once, its log giving the
    database's refusal and the catalog URI with the password replaced by `***`."""
    config = postgres_config(db, store, "pg-wrong", "logs")
    wrong = "not-" + db.password
    config["iceberg"]["catalog_uri"] = db.uri.replace(db.password, wrong)
    appender = lake_appender(config, start=False)
    appender.start()
    code = appender.process.wait(timeout=30)
    assert code != 0, "the appender exited 0 without a catalog"
    log = appender.log_text()
    assert "password authentication failed" in log, "the error should give the refusal: " + log[-2000:]
    assert log.count("password authentication failed") == 1, "the refused login was retried: " + log[-2000:]
    assert "postgres://lake:***@127.0.0.1" in log, "the error should name the catalog (redacted): " + log[-2000:]
    assert wrong not in log and db.password not in log, "the password is in the appender's log"
