//! Tests of staging against a DuckDB file in a temporary directory.

use std::{path::Path, sync::atomic::Ordering, time::Duration};

use arrow_array::{StringArray, TimestampMicrosecondArray, cast::AsArray};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use prost::Message as _;

use super::db::wal_len;
use super::*;

/// `records` records of each service, timestamps in reverse order of arrival, bodies of
/// `body_bytes` bytes starting with "{service} line {n}".
fn request(services: &[&str], records: u64, body_bytes: usize) -> ExportLogsServiceRequest {
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
                    .map(|n| {
                        let mut body = format!("{service} line {n} ");
                        // Filler that does not compress, so the bytes staged are what the test says.
                        let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                        while body.len() < body_bytes {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            body.push(char::from(b'a' + (x % 26) as u8));
                        }
                        LogRecord {
                            time_unix_nano: 1_700_000_000_000_000_000 + (records - n) * 1_000,
                            body: string(&body),
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }
}

fn batch(request: &ExportLogsServiceRequest, source: Option<(i32, i64)>) -> Batch {
    Batch::new(
        &request.encode_to_vec(),
        telemetry_lake_common::otlp::records::check(request).accepted,
        source.map(|(partition, offset)| KafkaPosition { partition, offset }),
        0,
    )
}

/// Staging in `dir` with `memory_limit`, 2 GiB of room and batches of up to 16 MiB.
fn config(dir: &Path, memory_limit: ByteSize) -> StagingSettings {
    StagingSettings {
        path: dir.join("staging.duckdb"),
        memory_limit,
        max_bytes: ByteSize::gib(2),
        max_batch: ByteSize::mib(16),
    }
}

fn open_with(config: &StagingSettings) -> Staging {
    let (thresholds, _) = mpsc::channel(1);
    Staging::open(config, &FlushConfig::default(), thresholds).expect("open staging")
}

fn open(dir: &Path, memory_limit: ByteSize) -> Staging {
    open_with(&config(dir, memory_limit))
}

/// (service, timestamp, body) of every row `read_sorted` hands out, and how many batches.
fn read_all(reader: &SealedReader, condition: &str) -> Vec<(String, i64, String)> {
    let mut rows = Vec::new();
    let read = reader
        .read_sorted(condition, |batch| {
            let column = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
            let (services, times, bodies) = (column("service_name"), column("timestamp"), column("body"));
            let services = services.as_any().downcast_ref::<StringArray>().unwrap();
            let times = times.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
            let bodies = bodies.as_string::<i32>();
            for i in 0..batch.num_rows() {
                rows.push((services.value(i).to_string(), times.value(i), bodies.value(i).to_string()));
            }
            true
        })
        .expect("read");
    assert_eq!(read as usize, rows.len());
    rows
}

#[tokio::test]
async fn a_large_sealed_set_comes_back_sorted_with_every_record_once_through_spilled_runs() {
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB: runs of 4 MiB, so 12,000 rows of 1 KiB bodies spill several runs.
    let staging = open(dir.path(), ByteSize::mib(16));
    for _ in 0..4 {
        staging
            .append(vec![batch(&request(&["web", "db", "api"], 1_000, 1_000), None)])
            .await
            .expect("append");
    }
    let (sealed, reader) = staging.seal().await.expect("seal").expect("batches staged");
    assert_eq!(sealed.records, 12_000);
    assert_eq!(reader.summarize("TRUE").unwrap().records, 12_000);
    let rows = read_all(&reader, "TRUE");
    assert_eq!(rows.len(), 12_000);
    let keys: Vec<_> = rows.iter().map(|(s, t, _)| (s.clone(), *t)).collect();
    assert!(keys.is_sorted(), "rows are not in service_name, timestamp order");
    let mut bodies: Vec<&str> = rows.iter().map(|(_, _, b)| b.split(' ').take(3).last().unwrap()).collect();
    bodies.sort();
    assert_eq!(rows.iter().filter(|(s, _, b)| s == "web" && b.starts_with("web line 7 ")).count(), 4);
    assert!(!dir.path().join("staging.duckdb.spill").read_dir().is_ok_and(|mut d| d.next().is_some()));
}

#[tokio::test]
async fn a_sealed_set_survives_a_restart_and_appends_go_on_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let staging = open(dir.path(), ByteSize::mib(64));
    staging.append(vec![batch(&request(&["web"], 10, 10), None)]).await.unwrap();
    let (sealed, reader) = staging.seal().await.unwrap().unwrap();
    assert_eq!((sealed.records, sealed.resumed), (10, false));
    staging
        .append(vec![batch(&request(&["web"], 5, 10), None), batch(&request(&["db"], 2, 10), None)])
        .await
        .unwrap();
    assert_eq!(read_all(&reader, "TRUE").len(), 10, "the sealed set holds only what was staged before");
    drop(reader);
    drop(staging);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let reopened = open(dir.path(), ByteSize::mib(64));
    assert_eq!(reopened.counters().records.load(Ordering::Relaxed), 17);
    assert_eq!(reopened.counters().unsealed_records.load(Ordering::Relaxed), 7);
    let (again, reader) = reopened.seal().await.unwrap().unwrap();
    assert_eq!((again.seal_id, again.records, again.resumed), (sealed.seal_id, 10, true));
    assert_eq!(read_all(&reader, "TRUE").len(), 10);
    drop(reader);
    reopened.release(again.seal_id).await.unwrap();
    let (next, reader) = reopened.seal().await.unwrap().unwrap();
    assert_eq!((next.seal_id, next.records, next.resumed), (sealed.seal_id + 1, 7, false));
    assert_eq!(read_all(&reader, "TRUE").len(), 7);
}

#[tokio::test]
async fn kafka_batches_are_fenced_summarized_and_discarded_by_partition() {
    let dir = tempfile::tempdir().unwrap();
    let staging = open(dir.path(), ByteSize::mib(64));
    let kafka = |partition, offset| batch(&request(&["web"], 3, 10), Some((partition, offset)));
    staging.append(vec![kafka(0, 10), kafka(0, 11), kafka(1, 5)]).await.unwrap();
    staging.append(vec![kafka(2, 7)]).await.unwrap();
    // Partition 2 of the spans topic: another topic, nothing of it staged.
    let traces = table_bits(&[RowTable::Traces]);
    assert_eq!(staging.discard_unsealed_partitions(traces, vec![2]).await.unwrap(), 0);
    let logs = table_bits(&[RowTable::Logs]);
    assert_eq!(staging.discard_unsealed_partitions(logs, vec![2]).await.unwrap(), 3);
    let (sealed, reader) = staging.seal().await.unwrap().unwrap();
    assert_eq!(sealed.records, 9);
    let summary = reader
        .summarize(
            "kafka_partition IN (0, 1) AND kafka_offset >= CASE kafka_partition WHEN 0 THEN 11 ELSE 0 END",
        )
        .unwrap();
    assert_eq!(summary.records, 6);
    assert_eq!(summary.next_offsets, std::collections::BTreeMap::from([(0, 12), (1, 6)]));
    let rows = read_all(&reader, "kafka_partition = 1");
    assert_eq!(rows.len(), 3);
    assert_eq!(staging.discard_unsealed_partitions(logs, vec![0]).await.unwrap(), 0, "sealed batches stay");
}

#[tokio::test]
async fn once_full_staging_refuses_up_front_until_a_release_or_a_discard_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = |offset| batch(&request(&["web"], 10, 100), Some((0, offset)));
    let size = kafka(0).bytes();
    let staging = open_with(&StagingSettings {
        max_bytes: ByteSize(2 * size + size / 2),
        max_batch: ByteSize(size),
        ..config(dir.path(), ByteSize::mib(64))
    });
    staging.append(vec![kafka(0), kafka(1)]).await.unwrap();
    assert!(staging.refusing().is_none(), "room is left until an append finds none");

    let refused = staging.append(vec![kafka(2)]).await;
    assert!(matches!(refused, Err(StagingError::Full { .. })), "{refused:?}");
    let up_front = staging.refusing().expect("refusing once an append was refused");
    assert_eq!(up_front.to_string(), refused.unwrap_err().to_string());

    let (sealed, reader) = staging.seal().await.unwrap().unwrap();
    drop(reader);
    assert!(staging.refusing().is_some(), "sealing makes no room");
    staging.release(sealed.seal_id).await.unwrap();
    assert!(staging.refusing().is_none(), "a release makes room");

    staging.append(vec![kafka(2), kafka(3)]).await.unwrap();
    assert!(matches!(staging.append(vec![kafka(4)]).await, Err(StagingError::Full { .. })));
    assert!(staging.refusing().is_some());
    let logs = table_bits(&[RowTable::Logs]);
    assert_eq!(staging.discard_unsealed_partitions(logs, vec![0]).await.unwrap(), 20);
    assert!(staging.refusing().is_none(), "a discard makes room");
    staging.append(vec![kafka(2)]).await.unwrap();
}

#[tokio::test]
async fn a_failed_append_stops_staging_until_it_is_reopened_and_keeps_what_was_staged() {
    let dir = tempfile::tempdir().unwrap();
    let staging = open(dir.path(), ByteSize::mib(64));
    staging.append(vec![batch(&request(&["web"], 10, 10), None)]).await.expect("append");
    let (_, reader) = staging.seal().await.unwrap().unwrap();
    staging.append(vec![batch(&request(&["web"], 5, 10), None)]).await.expect("append");
    // Any failure inside an append counts: here the table it appends to is gone.
    reader.connection().execute_batch("ALTER TABLE staged_batches RENAME TO elsewhere").unwrap();
    drop(reader);

    let failed = staging.append(vec![batch(&request(&["web"], 3, 10), None)]).await;
    assert!(matches!(failed, Err(StagingError::AppendFailed(_))), "{failed:?}");
    assert!(staging.broken().is_cancelled(), "the service is told to stop");
    let refused = staging.append(vec![batch(&request(&["web"], 3, 10), None)]).await;
    assert!(matches!(refused, Err(StagingError::Broken { .. })), "{refused:?}");
    let message = staging.broken_error().expect("broken").to_string();
    assert!(message.contains("restart the appender"), "{message}");
    assert!(matches!(staging.seal().await, Err(StagingError::Broken { .. })));
    assert!(matches!(staging.release(1).await, Err(StagingError::Broken { .. })));
}

#[tokio::test]
async fn a_format_1_staging_file_is_refused_with_how_to_drain_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("staging.duckdb");
    {
        let old = duckdb::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE staged_rows (body VARCHAR); INSERT INTO staged_rows VALUES ('acknowledged');
             CREATE TABLE staging_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
             INSERT INTO staging_meta VALUES ('writer_id', 'w'), ('next_seal_id', '1');",
        )
        .unwrap();
    }
    let settings = config(dir.path(), ByteSize::mib(64));
    let (thresholds, _) = mpsc::channel(1);
    let Err(err) = Staging::open(&settings, &FlushConfig::default(), thresholds) else {
        panic!("opened a format 1 file")
    };
    let message = err.to_string();
    assert!(matches!(err, StagingError::OldFormat { .. }), "{message}");
    assert!(
        message.contains("format 1") && message.contains("Drain it with the release that wrote it"),
        "{message}"
    );
    let kept: String = duckdb::Connection::open(&path)
        .unwrap()
        .query_row("SELECT body FROM staged_rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, "acknowledged", "the old file is left as it was");
}

#[tokio::test]
async fn the_checkpointer_folds_the_wal_into_the_file_while_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // memory_limit 64 MiB: DuckDB gets 64 MiB and the checkpointer checkpoints at 16 MiB of
    // WAL. The staging thread checkpoints only after an append that leaves 32 MiB or more, so
    // it bounds the WAL at 32 MiB plus what an append adds while the checkpointer is busy.
    let staging = open(dir.path(), ByteSize::mib(64));
    let wal = dir.path().join("staging.duckdb.wal").display().to_string();
    let big = batch(&request(&["web"], 1_000, 1_000), None);
    let (mut appended, mut wal_max) = (0u64, 0u64);
    while appended * (big.compressed().len() as u64) < 3 * (16 << 20) {
        staging.append(vec![big.clone()]).await.expect("append");
        appended += 1;
        wal_max = wal_max.max(wal_len(&wal));
    }
    let bound = (32 << 20) + 4 * big.compressed().len() as u64 + (1 << 20);
    assert!(wal_max < bound, "the WAL reached {wal_max} bytes, past the staging thread's own bound");
    // The checkpointer alone, whatever the machine's load: the WAL is taken past 16 MiB (and
    // no further than one append past it), then nothing is appended, so the staging thread
    // checkpoints no more and only the checkpointer can bring it back under 16 MiB.
    while wal_len(&wal) < 16 << 20 {
        staging.append(vec![big.clone()]).await.expect("append");
        appended += 1;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while wal_len(&wal) >= 16 << 20 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint: the WAL holds {} bytes", wal_len(&wal));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!staging.broken().is_cancelled());
    assert_eq!(staging.counters().records.load(Ordering::Relaxed), appended * 1_000);
}

/// DuckDB 1.5.5 corrupted a row group when a checkpoint overlapped other work, so a checkpoint
/// that falls due while a query of a sealed set runs waits until the query is over, and a query
/// asked for while a checkpoint runs waits for the checkpoint.
#[tokio::test]
#[expect(
    clippy::await_holding_lock,
    reason = "the guards stand for a query and a checkpoint running meanwhile"
)]
async fn checkpoints_and_queries_of_a_sealed_set_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    // DuckDB gets 64 MiB; the checkpointer checkpoints at 16 MiB of WAL (the staging thread
    // at 32 MiB), so at 20 MiB a checkpoint is due.
    let staging = open(dir.path(), ByteSize::mib(64));
    let wal = dir.path().join("staging.duckdb.wal").display().to_string();
    staging.append(vec![batch(&request(&["web"], 10, 10), None)]).await.expect("append");
    let (_sealed, reader) = staging.seal().await.expect("seal").expect("batches staged");
    let query = reader.hold_query();
    let big = batch(&request(&["web"], 1_000, 1_000), None);
    while wal_len(&wal) < 20 << 20 {
        staging.append(vec![big.clone()]).await.expect("append");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(wal_len(&wal) >= 20 << 20, "a checkpoint ran while a query of the sealed set did");
    drop(query);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while wal_len(&wal) >= 16 << 20 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint once the query ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let checkpoint = reader.hold_checkpoint();
    let summary = {
        let reader = reader.try_clone().expect("clone the reader");
        std::thread::spawn(move || reader.summarize("TRUE").map(|summary| summary.records))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!summary.is_finished(), "a query of the sealed set ran while a checkpoint did");
    drop(checkpoint);
    assert_eq!(summary.join().unwrap(), Ok(10), "the sealed set holds the first batch");
    assert!(!staging.broken().is_cancelled());
}

#[tokio::test]
async fn a_release_is_checkpointed_by_the_checkpointer_however_small_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let staging = open(dir.path(), ByteSize::mib(64));
    let wal = dir.path().join("staging.duckdb.wal").display().to_string();
    staging.append(vec![batch(&request(&["web"], 100, 10), None)]).await.expect("append");
    let (sealed, reader) = staging.seal().await.expect("seal").expect("batches staged");
    drop(reader);
    staging.release(sealed.seal_id).await.expect("release");
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

#[test]
fn staged_frames_decompress_with_one_context_with_or_without_their_size() {
    let payload = request(&["web", "db"], 50, 100).encode_to_vec();
    let batch = batch(&request(&["web", "db"], 50, 100), None);
    let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
    for _ in 0..2 {
        assert_eq!(sealed::decompress(&mut decompressor, batch.compressed()).unwrap(), payload);
    }
    // The streaming encoder writes no size: decoded as it goes.
    let streamed = zstd::stream::encode_all(payload.as_slice(), 1).unwrap();
    assert_eq!(zstd::zstd_safe::get_frame_content_size(&streamed).unwrap(), None);
    assert_eq!(sealed::decompress(&mut decompressor, &streamed).unwrap(), payload);
    assert!(sealed::decompress(&mut decompressor, b"not zstd").is_err());
}

#[tokio::test]
async fn duckdb_hands_freed_memory_back_instead_of_caching_it() {
    let dir = tempfile::tempdir().unwrap();
    let staging = open(dir.path(), ByteSize::mib(256));
    staging.append(vec![batch(&request(&["web"], 10, 10), None)]).await.expect("append");
    let (_, reader) = staging.seal().await.unwrap().unwrap();
    let setting = |name: &str| -> String {
        reader
            .connection()
            .query_row(&format!("SELECT current_setting('{name}')::VARCHAR"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(setting("allocator_background_threads"), "true");
    for name in ["allocator_flush_threshold", "allocator_bulk_deallocation_flush_threshold"] {
        let value = setting(name);
        assert!(value.starts_with("4.0 MiB") || value == "4194304", "{name} = {value}");
    }
}

#[tokio::test]
async fn duckdb_never_gets_less_than_its_floor_however_small_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let staging =
        open_with(&StagingSettings { max_batch: ByteSize::mib(1), ..config(dir.path(), ByteSize::mib(16)) });
    staging.append(vec![batch(&request(&["web"], 10, 10), None)]).await.expect("append");
    let (_, reader) = staging.seal().await.unwrap().unwrap();
    let limit: String = reader
        .connection()
        .query_row("SELECT current_setting('memory_limit')::VARCHAR", [], |r| r.get(0))
        .unwrap();
    // Without the floor: three 1 MiB batches and 16 MiB, "19.0 MiB".
    assert_eq!(limit, "64.0 MiB");
}

#[tokio::test]
async fn a_format_2_staging_file_is_upgraded_and_its_logs_flushed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let staging = open(dir.path(), ByteSize::mib(64));
        staging.append(vec![batch(&request(&["web"], 3, 100), None)]).await.expect("append");
    }
    // What the previous release wrote: no `tables` column, format 2.
    let path = dir.path().join("staging.duckdb");
    {
        let conn = duckdb::Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE staged_batches DROP COLUMN tables;
             UPDATE staging_meta SET value = '2' WHERE key = 'format_version';",
        )
        .unwrap();
    }
    let staging = open(dir.path(), ByteSize::mib(64));
    assert_eq!(staging.counters().records.load(Ordering::Relaxed), 3);
    let (_, reader) = staging.seal().await.expect("seal").expect("the old batch is staged");
    assert_eq!(reader.tables().unwrap(), table_bits(&[RowTable::Logs]));
    let rows = read_all(&reader, "TRUE");
    assert_eq!(rows.len(), 3, "{rows:?}");
    let version: String = reader
        .connection()
        .query_row("SELECT value FROM staging_meta WHERE key = 'format_version'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, FORMAT_VERSION.to_string());
}

#[tokio::test]
async fn spans_staged_beside_logs_are_read_for_their_table_only_in_its_order() {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };
    let dir = tempfile::tempdir().unwrap();
    let staging = open(dir.path(), ByteSize::mib(16));
    let spans = |names: &[&str], start: u64| ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| Span {
                        name: name.to_string(),
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        start_time_unix_nano: start - i as u64 * 1_000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let traces = |request: ExportTraceServiceRequest| {
        Batch::new(&request.encode_to_vec(), 3, None, 0).holding(&[RowTable::Traces])
    };
    staging
        .append(vec![
            traces(spans(&["b", "a", "b"], 1_700_000_000_000_000_000)),
            batch(&request(&["web"], 5, 100), None),
            traces(spans(&["a", "c", "a"], 1_700_000_001_000_000_000)),
        ])
        .await
        .expect("append");
    let (_, reader) = staging.seal().await.expect("seal").expect("staged");
    assert_eq!(reader.tables().unwrap(), table_bits(&[RowTable::Logs, RowTable::Traces]));
    assert_eq!(read_all(&reader, "TRUE").len(), 5, "logs read alone");
    let mut names = Vec::new();
    let read = reader
        .read_table_sorted(RowTable::Traces, "TRUE", |batch| {
            let column = batch.column_by_name("span_name").unwrap().as_string::<i32>().clone();
            let times = batch.column_by_name("timestamp").unwrap().clone();
            let times = times.as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
            names.extend((0..batch.num_rows()).map(|i| (column.value(i).to_string(), times.value(i))));
            true
        })
        .expect("read traces");
    assert_eq!(read, TableRead { rows: 6, rejected: 0, items: 6 });
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(names, expected, "ordered by span name, then time");
    assert_eq!(names.iter().filter(|(n, _)| n == "a").count(), 3);
    let none = reader.read_table_sorted(RowTable::MetricsGauge, "TRUE", |_| true).expect("read gauges");
    assert_eq!(none, TableRead::default());
}
