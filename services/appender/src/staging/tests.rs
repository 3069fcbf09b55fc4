//! Tests of staging against a DuckDB file in a temporary directory.

use arrow_array::{Array, StringArray, TimestampMicrosecondArray, cast::AsArray};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};

use std::{path::Path, sync::atomic::Ordering, time::Duration};

use super::db::{STAGED_ROWS, wal_len};
use super::*;

/// `records` records of each service, timestamps in reverse order of arrival.
fn request(services: &[&str], records: u64) -> ExportLogsServiceRequest {
    let string = |s: &str| Some(AnyValue { value: Some(Value::StringValue(s.into())) });
    let resource_logs = services
        .iter()
        .map(|service| ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: string(service),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: (0..records)
                    .map(|n| LogRecord {
                        time_unix_nano: 1_700_000_000_000_000_000 + (records - n) * 1_000,
                        body: string(&format!("{service} line {n}")),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }
}

fn open(dir: &Path, memory_limit: ByteSize) -> Staging {
    let config =
        StagingSettings { path: dir.join("staging.duckdb"), memory_limit, max_bytes: ByteSize::gib(2) };
    let (thresholds, _) = mpsc::channel(1);
    Staging::open(&config, &FlushConfig::default(), thresholds).expect("open staging")
}

#[tokio::test]
async fn a_large_sealed_set_is_read_as_sorted_runs_holding_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let staging = open(dir.path(), ByteSize::mib(16));
    for _ in 0..3 {
        let mut rows = crate::rows::to_rows(&request(&["web", "db", "api"], 700), None, 0);
        // Charged as large rows, so a sort may hold only the minimum 1,000 of them.
        rows.bytes = rows.batch.num_rows() as u64 * 10_000;
        staging.append(rows).await.expect("append");
    }
    let (sealed, reader) = staging.seal().await.expect("seal").expect("rows staged");
    assert_eq!(sealed.records, 6_300);
    assert_eq!(reader.sort_rows, 1_000);

    let mut runs: Vec<Vec<(String, i64, String)>> = vec![Vec::new()];
    let read = read_sealed(&reader, "TRUE", |batch| {
        if batch.num_rows() == 0 {
            runs.push(Vec::new());
            return true;
        }
        let column = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let (services, times, bodies) = (column("service_name"), column("timestamp"), column("body"));
        let services = services.as_any().downcast_ref::<StringArray>().unwrap();
        let times = times.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        let bodies = bodies.as_string::<i32>();
        let run = runs.last_mut().unwrap();
        for i in 0..batch.num_rows() {
            run.push((services.value(i).to_string(), times.value(i), bodies.value(i).to_string()));
        }
        true
    })
    .expect("read");
    assert_eq!(read, 6_300);
    assert_eq!(runs.pop(), Some(Vec::new()), "every run ends with an empty batch");
    assert_eq!(runs.len(), 7, "6,300 rows in runs of 1,000 rows");
    for run in &runs {
        assert!(run.len() <= 1_000, "a run of {} rows", run.len());
        let keys: Vec<_> = run.iter().map(|(s, t, _)| (s.clone(), *t)).collect();
        assert!(keys.is_sorted(), "a run is not in service_name, timestamp order");
    }
    let mut bodies: Vec<String> = runs.into_iter().flatten().map(|(_, _, body)| body).collect();
    bodies.sort();
    let before = bodies.len();
    bodies.dedup();
    assert_eq!((before, bodies.len()), (6_300, 2_100), "each of 2,100 distinct records three times");
}

#[tokio::test]
async fn a_failed_append_stops_staging_until_it_is_reopened_and_keeps_what_was_staged() {
    let dir = tempfile::tempdir().unwrap();
    let staging = open(dir.path(), ByteSize::mib(64));
    staging.append(crate::rows::to_rows(&request(&["web"], 10), None, 0)).await.expect("append");
    let (_, reader) = staging.seal().await.unwrap().unwrap();
    staging.append(crate::rows::to_rows(&request(&["web"], 5), None, 0)).await.expect("append");
    // Any failure inside an append counts: here the table it appends to is gone.
    reader.execute_batch(&format!("ALTER TABLE {STAGED_ROWS} RENAME TO elsewhere")).unwrap();
    drop(reader);

    let failed = staging.append(crate::rows::to_rows(&request(&["web"], 3), None, 0)).await;
    assert!(matches!(failed, Err(StagingError::AppendFailed(_))), "{failed:?}");
    assert!(staging.broken().is_cancelled(), "the service is told to stop");
    let refused = staging.append(crate::rows::to_rows(&request(&["web"], 3), None, 0)).await;
    assert!(matches!(refused, Err(StagingError::Broken { .. })), "{refused:?}");
    let message = staging.broken_error().expect("broken").to_string();
    assert!(message.contains("restart the appender"), "{message}");
    assert!(matches!(staging.seal().await, Err(StagingError::Broken { .. })));
    assert!(matches!(staging.release(1).await, Err(StagingError::Broken { .. })));

    drop(staging);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reopened = open(dir.path(), ByteSize::mib(64));
    assert!(!reopened.broken().is_cancelled());
    let (sealed, _) = reopened.seal().await.unwrap().unwrap();
    assert_eq!((sealed.records, sealed.resumed), (10, true), "the sealed set survived");
}

#[tokio::test]
async fn the_checkpointer_folds_the_wal_into_the_file_while_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // memory_limit 64 MiB: checkpoint at 16 MiB of WAL; the staging thread itself only at 32.
    let staging = open(dir.path(), ByteSize::mib(64));
    let wal = dir.path().join("staging.duckdb.wal").display().to_string();
    let mut request = request(&["web"], 1_000);
    for record in &mut request.resource_logs[0].scope_logs[0].log_records {
        record.body = Some(AnyValue { value: Some(Value::StringValue("x".repeat(1_000))) });
    }
    let mut appended = 0;
    while wal_len(&wal) < 17 << 20 {
        staging.append(crate::rows::to_rows(&request, None, 0)).await.expect("append");
        appended += 1;
        assert!(appended < 100, "the WAL did not grow: {} bytes", wal_len(&wal));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while wal_len(&wal) >= 16 << 20 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint: the WAL holds {} bytes", wal_len(&wal));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!staging.broken().is_cancelled());
    assert_eq!(staging.counters().records.load(Ordering::Relaxed), appended * 1_000);
}

#[tokio::test]
async fn a_release_is_checkpointed_by_the_checkpointer_however_small_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let staging = open(dir.path(), ByteSize::mib(64));
    let wal = dir.path().join("staging.duckdb.wal").display().to_string();
    staging.append(crate::rows::to_rows(&request(&["web"], 100), None, 0)).await.expect("append");
    let (sealed, reader) = staging.seal().await.expect("seal").expect("rows staged");
    drop(reader);
    staging.release(sealed.seal_id).await.expect("release");
    // Far below the 16 MiB threshold: only the release's request checkpoints it.
    assert!(wal_len(&wal) > 0, "the release is in the WAL");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while wal_len(&wal) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the release was not checkpointed: {} bytes",
            wal_len(&wal)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(staging.counters().records.load(Ordering::Relaxed), 0);
}
