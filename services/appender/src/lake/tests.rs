//! Tests of [`Lake`](super::Lake) against a SQLite catalog and a local warehouse.

use std::path::{Path, PathBuf};

use arrow_array::builder::{Int32Builder, Int64Builder, MapBuilder, MapFieldNames, StringBuilder};
use arrow_array::{Array, ArrayRef, TimestampMicrosecondArray};
use arrow_schema::{DataType, TimeUnit};
use iceberg::spec::{FormatVersion, NestedField, PrimitiveType, Transform, Type};

use super::*;

/// The lake's columns, as DESIGN.md lists them.
const COLUMNS: [&str; 21] = [
    "timestamp",
    "observed_timestamp",
    "severity_number",
    "severity_text",
    "body",
    "trace_id",
    "span_id",
    "trace_flags",
    "event_name",
    "service_name",
    "deployment_environment",
    "resource_attributes",
    "scope_attributes",
    "log_attributes",
    "scope_name",
    "scope_version",
    "resource_schema_url",
    "scope_schema_url",
    "dropped_attributes_count",
    "kafka_partition",
    "kafka_offset",
];

fn test_schema() -> Schema {
    RowTable::Logs.iceberg_schema()
}

struct TestLake {
    dir: tempfile::TempDir,
    config: IcebergSettings,
}

fn test_lake() -> TestLake {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = telemetry_lake_common::config::Config::default();
    config.iceberg.catalog_uri = format!("sqlite://{}/catalog/catalog.db", dir.path().display());
    config.iceberg.warehouse = format!("{}/warehouse", dir.path().display());
    let config = telemetry_lake_common::settings::Settings::from_config(config).expect("settings").iceberg;
    TestLake { dir, config }
}

/// 2026-11-27T10:00:00Z in microseconds.
const DAY1: i64 = 1_795_773_600_000_000;
const DAY: i64 = 86_400_000_000;

struct Row {
    ts: i64,
    service: &'static str,
    body: &'static str,
    severity: i32,
    attributes: Vec<(&'static str, &'static str)>,
    offset: Option<i64>,
}

fn row(ts: i64, service: &'static str, body: &'static str, offset: i64) -> Row {
    Row {
        ts,
        service,
        body,
        severity: 9,
        attributes: vec![("http.method", "GET"), ("n", body)],
        offset: Some(offset),
    }
}

/// A batch in the staging shape: "Etc/UTC" timestamps, maps with `entries`/`key`/`value`.
fn staging_batch(rows: &[Row]) -> RecordBatch {
    let ts = |f: fn(&Row) -> i64| {
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(f).collect::<Vec<_>>()).with_timezone("Etc/UTC"),
        ) as ArrayRef
    };
    let strings = |f: fn(&Row) -> Option<&'static str>| {
        let mut b = StringBuilder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let ints = |f: fn(&Row) -> Option<i32>| {
        let mut b = Int32Builder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let map = |f: fn(&Row) -> Vec<(&'static str, &'static str)>| {
        let names = MapFieldNames { entry: "entries".into(), key: "key".into(), value: "value".into() };
        let mut b = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
        for r in rows {
            for (k, v) in f(r) {
                b.keys().append_value(k);
                b.values().append_value(v);
            }
            b.append(true).expect("map entry");
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let mut offsets = Int64Builder::new();
    rows.iter().for_each(|r| offsets.append_option(r.offset));
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("timestamp", ts(|r| r.ts)),
        ("observed_timestamp", ts(|r| r.ts + 1)),
        ("severity_number", ints(|r| Some(r.severity))),
        ("severity_text", strings(|_| Some("INFO"))),
        ("body", strings(|r| Some(r.body))),
        ("trace_id", strings(|_| Some("5b8efff798038103d269b633813fc60c"))),
        ("span_id", strings(|_| None)),
        ("trace_flags", ints(|_| Some(1))),
        ("event_name", strings(|_| None)),
        ("service_name", strings(|r| Some(r.service))),
        ("deployment_environment", strings(|_| Some("prod"))),
        ("resource_attributes", map(|r| vec![("service.name", r.service)])),
        ("scope_attributes", map(|_| vec![])),
        ("log_attributes", map(|r| r.attributes.clone())),
        ("scope_name", strings(|_| Some("io.test"))),
        ("scope_version", strings(|_| Some("1.0"))),
        ("resource_schema_url", strings(|_| None)),
        ("scope_schema_url", strings(|_| None)),
        ("dropped_attributes_count", ints(|_| Some(0))),
        ("kafka_partition", ints(|r| r.offset.map(|_| 3))),
        ("kafka_offset", Arc::new(offsets.finish()) as ArrayRef),
    ];
    RecordBatch::try_from_iter(columns).expect("staging batch")
}

/// Every row as strings, in `COLUMNS` order, sorted: comparable across Arrow shapes.
fn rows_of(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for batch in batches {
        for i in 0..batch.num_rows() {
            let row = COLUMNS
                .iter()
                .map(|name| {
                    let column = batch.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
                    if column.is_null(i) {
                        return "NULL".to_string();
                    }
                    // Timestamps compare as instants, whatever their timezone label.
                    let column = match column.data_type() {
                        DataType::Timestamp(TimeUnit::Microsecond, _) => {
                            arrow_cast::cast(column, &DataType::Int64).expect("timestamp as int")
                        }
                        _ => column.clone(),
                    };
                    arrow_cast::display::array_value_to_string(&column, i).expect("displayable")
                })
                .collect();
            rows.push(row);
        }
    }
    rows.sort();
    rows
}

async fn scan(lake: &Lake) -> Vec<RecordBatch> {
    let table = lake.load_table().await.expect("load");
    let stream = table.scan().build().expect("scan").to_arrow().await.expect("to_arrow");
    futures::TryStreamExt::try_collect(stream).await.expect("read table")
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn batches(list: Vec<RecordBatch>) -> impl Stream<Item = Result<RecordBatch, LakeError>> + Send + Unpin {
    futures::stream::iter(list.into_iter().map(Ok))
}

fn props(pairs: &[(&str, &str)]) -> CommitProperties {
    CommitProperties {
        summary: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        table: HashMap::new(),
    }
}

#[tokio::test]
async fn lake_open_creates_namespace_and_table_then_reuses_it() {
    let t = test_lake();
    let lake = Lake::open(&t.config, RowTable::Logs).await.expect("open");
    assert!(t.dir.path().join("catalog/catalog.db").is_file(), "sqlite catalog file created");
    assert_eq!(
        lake.table_ident().to_string(),
        TableIdent::from_strs(["default", "logs"]).unwrap().to_string()
    );
    assert!(lake.catalog.namespace_exists(&NamespaceIdent::new("default".into())).await.unwrap());

    let table = lake.load_table().await.expect("load");
    let metadata = table.metadata();
    assert_eq!(metadata.format_version(), FormatVersion::V2);
    let warehouse = format!("file://{}/warehouse", t.dir.path().display());
    assert_eq!(metadata.location(), format!("{warehouse}/default/logs"));
    let schema = metadata.current_schema();
    let names: Vec<&str> = schema.as_struct().fields().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, COLUMNS);
    let ts_id = schema.field_by_name("timestamp").unwrap().id;
    let service_id = schema.field_by_name("service_name").unwrap().id;
    let spec = metadata.default_partition_spec();
    assert_eq!(spec.fields().len(), 1);
    assert_eq!(
        (spec.fields()[0].source_id, spec.fields()[0].transform, spec.fields()[0].name.as_str()),
        (ts_id, Transform::Day, PARTITION_FIELD)
    );
    let sort: Vec<i32> = metadata.default_sort_order().fields.iter().map(|f| f.source_id).collect();
    assert_eq!(sort, vec![service_id, ts_id]);
    assert_eq!(metadata.snapshots().len(), 0);
    let uuid = metadata.uuid();

    drop(lake);
    let again = Lake::open(&t.config, RowTable::Logs).await.expect("reopen");
    assert_eq!(again.load_table().await.unwrap().metadata().uuid(), uuid, "same table reused");
}

#[tokio::test]
async fn lake_open_refuses_a_table_whose_columns_differ() {
    let t = test_lake();
    Lake::open(&t.config, RowTable::Logs).await.expect("open");
    let mut fields: Vec<_> = test_schema().as_struct().fields().to_vec();
    fields[20] = Arc::new(NestedField::optional(21, "kafka_offset", Type::Primitive(PrimitiveType::String)));
    let changed = Schema::builder().with_fields(fields).build().unwrap();
    let catalog = super::catalog::connect(&t.config, &Redactor::default()).await.unwrap();
    let err = Lake::open_in(catalog, &t.config, RowTable::Logs, changed, Redactor::default())
        .await
        .expect_err("type changed");
    assert!(matches!(err, LakeError::Schema { .. }), "{err}");
    assert!(err.to_string().contains("kafka_offset"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn lake_append_two_days_commits_one_snapshot_readable_by_scan() {
    let t = test_lake();
    let lake = Lake::open(&t.config, RowTable::Logs).await.expect("open");
    let first = staging_batch(&[
        row(DAY1, "checkout", "one", 10),
        row(DAY1 + DAY, "cart", "two", 11),
        row(DAY1 + 60_000_000, "cart", "three", 12),
    ]);
    let second =
        staging_batch(&[row(DAY1 + DAY + 5, "checkout", "four", 13), row(DAY1 + 7, "auth", "five", 14)]);
    let expected = rows_of(&[first.clone(), second.clone()]);

    let info = lake
        .append(batches(vec![first, second]), props(&[("telemetry-lake.offsets", "3:15")]), None)
        .await
        .expect("append")
        .expect("committed");
    assert_eq!((info.data_files, info.records), (2, 5));
    assert!(info.file_bytes > 0);

    let table = lake.load_table().await.unwrap();
    assert_eq!(table.metadata().snapshots().len(), 1, "exactly one snapshot");
    let snapshot = table.metadata().current_snapshot().unwrap();
    assert_eq!(snapshot.snapshot_id(), info.snapshot_id);
    let summary = &snapshot.summary().additional_properties;
    assert_eq!(summary.get("telemetry-lake.offsets").map(String::as_str), Some("3:15"));
    assert_eq!(summary.get("added-records").map(String::as_str), Some("5"));

    let files = parquet_files(&t.dir.path().join("warehouse"));
    assert_eq!(files.len(), 2, "one file per day: {files:?}");
    let days: Vec<String> = files
        .iter()
        .map(|f| f.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(days, vec!["timestamp_day=2026-11-27", "timestamp_day=2026-11-28"]);

    let read = scan(&lake).await;
    assert_eq!(rows_of(&read), expected, "rows read back equal rows appended");
    assert_eq!(
        read[0].schema().field_with_name("timestamp").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
    );
}

#[tokio::test]
async fn lake_snapshot_summaries_lists_newest_first() {
    let t = test_lake();
    let lake = Lake::open(&t.config, RowTable::Logs).await.expect("open");
    assert!(lake.snapshot_summaries().await.unwrap().is_empty());
    let mut ids = Vec::new();
    for (i, body) in ["a", "b", "c"].into_iter().enumerate() {
        let batch = staging_batch(&[row(DAY1 + i as i64, "svc", body, i as i64)]);
        let flush = i.to_string();
        let info =
            lake.append(batches(vec![batch]), props(&[("flush", &flush)]), None).await.unwrap().unwrap();
        ids.push(info.snapshot_id);
    }
    let summaries = lake.snapshot_summaries().await.unwrap();
    let seen: Vec<(i64, &str)> = summaries
        .iter()
        .map(|(id, props)| (*id, props.get("flush").map(String::as_str).unwrap_or("-")))
        .collect();
    assert_eq!(seen, vec![(ids[2], "2"), (ids[1], "1"), (ids[0], "0")]);
    assert_eq!(rows_of(&scan(&lake).await).len(), 3);
}

fn one_row(
    body: &'static str,
    offset: i64,
) -> impl Stream<Item = Result<RecordBatch, LakeError>> + Send + Unpin {
    batches(vec![staging_batch(&[row(DAY1 + offset, "svc", body, offset)])])
}

#[tokio::test]
async fn lake_append_lands_on_a_newer_state_only_if_the_check_accepts_it() {
    let t = test_lake();
    let ours = Lake::open(&t.config, RowTable::Logs).await.expect("open");
    let other = Lake::open(&t.config, RowTable::Logs).await.expect("open a second writer");
    ours.append(one_row("first", 1), props(&[]), None).await.unwrap().unwrap();
    let checked_at = ours.snapshot_summaries().await.unwrap()[0].0;
    // Another writer commits between our check and our commit.
    let theirs = other.append(one_row("theirs", 2), props(&[("who", "other")]), None).await.unwrap().unwrap();

    let refuse = |newer: &[SnapshotSummary]| {
        assert_eq!(newer.len(), 1, "shown exactly the snapshot committed since the check");
        assert_eq!(newer[0].1.get("who").map(String::as_str), Some("other"));
        Err("they took partition 3".to_string())
    };
    let checked = CheckedBase { snapshot_id: Some(checked_at), rebase: &refuse };
    let err = ours.append(one_row("mine", 3), props(&[]), Some(&checked)).await.expect_err("refused");
    assert!(matches!(err, LakeError::Conflict { .. }) && err.is_retryable(), "{err}");
    assert!(err.to_string().contains("they took partition 3"), "{err}");
    assert_eq!(ours.snapshot_summaries().await.unwrap().len(), 2, "nothing committed");

    // Accepted: the commit lands with the properties the check gives for the newer state.
    let accept = |_: &[SnapshotSummary]| {
        let mut rebased = props(&[("offsets", "rebased")]);
        rebased.table.insert("offsets".into(), "rebased".into());
        Ok(rebased)
    };
    let checked = CheckedBase { snapshot_id: Some(checked_at), rebase: &accept };
    let mut prepared = props(&[("offsets", "prepared")]);
    prepared.table.insert("offsets".into(), "prepared".into());
    let mine = ours.append(one_row("mine", 3), prepared, Some(&checked)).await.unwrap().unwrap();
    let state = ours.state().await.unwrap();
    let history: Vec<i64> = state.summaries.iter().map(|(id, _)| *id).collect();
    assert_eq!(history, vec![mine.snapshot_id, theirs.snapshot_id, checked_at], "rebased on theirs");
    assert_eq!(state.summaries[0].1.get("offsets").map(String::as_str), Some("rebased"));
    assert!(state.summaries[0].1.contains_key(summary::COMMIT_ID), "the commit id is kept");
    assert_eq!(state.properties.get("offsets").map(String::as_str), Some("rebased"), "table properties too");
    let bodies: Vec<String> = rows_of(&scan(&ours).await).into_iter().map(|r| r[4].clone()).collect();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
}

/// Applies every commit and then reports a timeout, as a catalog behind a flaky network does.
#[derive(Debug)]
struct LosesCommitReplies;

#[async_trait::async_trait]
impl super::pinned::Intercept for LosesCommitReplies {
    async fn update_table(
        &self,
        inner: &dyn Catalog,
        commit: iceberg::TableCommit,
    ) -> iceberg::Result<Table> {
        inner.update_table(commit).await?;
        Err(iceberg::Error::new(ErrorKind::Unexpected, "timed out waiting for the catalog"))
    }
}

#[tokio::test]
async fn lake_append_whose_reply_was_lost_is_found_in_the_history_not_repeated() {
    let t = test_lake();
    let mut lake = Lake::open(&t.config, RowTable::Logs).await.expect("open");
    lake.catalog = Arc::new(super::pinned::Intercepted::new(lake.catalog.clone(), LosesCommitReplies));

    let info = lake.append(one_row("once", 1), props(&[]), None).await.expect("found").expect("committed");
    let history = lake.snapshot_summaries().await.unwrap();
    assert_eq!(history.len(), 1, "committed exactly once");
    assert_eq!(history[0].0, info.snapshot_id);
    assert!(history[0].1.contains_key(summary::COMMIT_ID));
    assert_eq!(rows_of(&scan(&lake).await).len(), 1);
}

#[tokio::test]
async fn lake_empty_stream_commits_nothing() {
    let t = test_lake();
    let lake = Lake::open(&t.config, RowTable::Logs).await.expect("open");
    let none = lake.append(batches(vec![]), props(&[("flush", "1")]), None).await.expect("empty append");
    assert_eq!(none, None);
    let empty = staging_batch(&[]);
    let none = lake.append(batches(vec![empty]), props(&[("flush", "2")]), None).await.expect("empty batch");
    assert_eq!(none, None);
    assert!(lake.snapshot_summaries().await.unwrap().is_empty(), "no snapshot");
    assert!(parquet_files(&t.dir.path().join("warehouse")).is_empty(), "no file");
}

#[tokio::test]
async fn lake_an_empty_batch_ends_a_sorted_run_and_its_files_in_one_snapshot() {
    let t = test_lake();
    let lake = Lake::open(&t.config, RowTable::Logs).await.expect("open");
    let run =
        |service: &'static str| staging_batch(&[row(DAY1, service, "a", 1), row(DAY1, service, "b", 2)]);
    let empty = staging_batch(&[]);
    let stream = batches(vec![run("a"), empty.clone(), empty.clone(), run("b"), run("c"), empty]);
    let info = lake.append(stream, props(&[("flush", "1")]), None).await.expect("append").expect("rows");
    assert_eq!((info.data_files, info.records), (2, 6), "{info:?}");
    assert_eq!(parquet_files(&t.dir.path().join("warehouse")).len(), 2, "one file per run");
    assert_eq!(lake.snapshot_summaries().await.unwrap().len(), 1, "one snapshot");
}

#[tokio::test]
async fn lake_failed_stream_commits_nothing_and_is_retryable() {
    let t = test_lake();
    let lake = Lake::open(&t.config, RowTable::Logs).await.expect("open");
    let items = vec![
        Ok(staging_batch(&[row(DAY1, "svc", "a", 1)])),
        Err(LakeError::staging(std::io::Error::other("staging database closed"))),
    ];
    let err = lake.append(futures::stream::iter(items), props(&[]), None).await.expect_err("stream failed");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("staging database closed"), "{err}");
    assert!(lake.snapshot_summaries().await.unwrap().is_empty(), "nothing committed");
}

#[tokio::test]
async fn lake_appends_duckdb_staging_batches_by_column_name() {
    let t = test_lake();
    let lake = Lake::open(&t.config, RowTable::Logs).await.expect("open");
    let db = duckdb::Connection::open_in_memory().expect("duckdb");
    db.execute_batch(&telemetry_lake_proto::RowTable::Logs.duckdb_create_table("staging"))
        .expect("staging table");
    db.execute_batch(
        "SET TimeZone = 'UTC';
         INSERT INTO staging VALUES
           ('2026-11-27 10:00:00+00', '2026-11-27 10:00:01+00', 9, 'INFO', 'hello', NULL, NULL, 0, NULL,
            'checkout', 'prod', MAP {'service.name': 'checkout'}, MAP {}, MAP {'k': 'v', 'n': '1'},
            'scope', '1.0', NULL, NULL, 0, 2, 41),
           ('2026-11-27 23:59:59.999999+00', NULL, 17, 'ERROR', 'boom', 'ab', 'cd', 1, 'ev',
            'cart', NULL, MAP {}, MAP {'s': 't'}, MAP {}, NULL, NULL, 'https://r', 'https://s', 3, 2, 42),
           ('2026-11-28 00:00:00+00', '2026-11-28 00:00:00+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .expect("staged rows");
    // Columns deliberately out of table order: matching is by name.
    let mut stmt = db
        .prepare("SELECT kafka_offset, body, * EXCLUDE (kafka_offset, body) FROM staging ORDER BY service_name, timestamp")
        .expect("prepare");
    let staged: Vec<RecordBatch> = stmt.query_arrow([]).expect("query_arrow").collect();
    let staged_schema = staged[0].schema();
    assert_eq!(staged_schema.field(0).name(), "kafka_offset");
    assert!(matches!(
        staged_schema.field_with_name("timestamp").unwrap().data_type(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(_))
    ));
    assert!(matches!(
        staged_schema.field_with_name("log_attributes").unwrap().data_type(),
        DataType::Map(..)
    ));
    let expected = rows_of(&staged);
    assert_eq!(expected.len(), 3);

    let info = lake.append(batches(staged), props(&[("flush", "duckdb")]), None).await.unwrap().unwrap();
    assert_eq!((info.records, info.data_files), (3, 2));
    assert_eq!(rows_of(&scan(&lake).await), expected);
}

#[test]
fn lake_conform_names_the_column_that_does_not_fit() {
    let target = Arc::new(schema_to_arrow_schema(&test_schema()).unwrap());
    let batch = staging_batch(&[row(DAY1, "svc", "a", 1)]);

    let extra = RecordBatch::try_from_iter(
        batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| (f.name().clone(), c.clone()))
            .chain([("surprise".to_string(), Arc::new(arrow_array::Int32Array::from(vec![1])) as ArrayRef)]),
    )
    .unwrap();
    assert!(conform(&extra, &target).unwrap_err().contains("surprise"));

    let without_timestamp = batch.project(&(1..batch.num_columns()).collect::<Vec<_>>()).unwrap();
    assert!(conform(&without_timestamp, &target).unwrap_err().contains("timestamp"));

    let without_body = {
        let keep: Vec<usize> =
            (0..batch.num_columns()).filter(|i| batch.schema().field(*i).name() != "body").collect();
        batch.project(&keep).unwrap()
    };
    let conformed = conform(&without_body, &target).expect("optional column filled with nulls");
    assert_eq!(conformed.column_by_name("body").unwrap().null_count(), 1);
    assert_eq!(conformed.schema(), target);
}

#[tokio::test]
async fn lake_debug_and_errors_of_an_open_lake_hide_secrets() {
    let mut t = test_lake();
    t.config.properties.insert("s3.secret-access-key".into(), "AKsecretVALUE".into());
    let lake = Lake::open(&t.config, RowTable::Logs).await.expect("open");
    assert!(!format!("{lake:?}").contains("AKsecretVALUE"));
    let err = lake.catalog_error(
        "commit the snapshot",
        iceberg::Error::new(ErrorKind::Unexpected, "signing with AKsecretVALUE failed"),
    );
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(!text.contains("AKsecretVALUE") && text.contains("commit the snapshot"), "{text}");
}
