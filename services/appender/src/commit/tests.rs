//! Tests of the committer against staging in a temporary directory and a SQLite catalog.

use std::time::Duration;

use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data},
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prometheus_client::registry::Registry;
use prost::Message as _;
use telemetry_lake_common::{
    config::{Config, FlushConfig},
    secrets::Redactor,
    settings::Settings,
};
use telemetry_lake_proto::RowTable;

use super::*;
use crate::staging::Batch;

fn settings(dir: &std::path::Path) -> Settings {
    let mut config = Config::default();
    config.iceberg.catalog_uri = format!("sqlite://{}/catalog.db", dir.display());
    config.iceberg.warehouse = format!("{}/warehouse", dir.display());
    config.staging.path = dir.join("staging.duckdb").display().to_string();
    Settings::from_config(config).expect("settings")
}

fn open_staging(settings: &Settings) -> Staging {
    let (thresholds, _) = mpsc::channel(1);
    Staging::open(&settings.staging, &FlushConfig::default(), thresholds).unwrap()
}

/// The lakes of `tables`, created if missing.
async fn open_lakes(settings: &Settings, tables: &[RowTable]) -> Vec<Arc<Lake>> {
    Lake::open_tables(&settings.iceberg, tables).await.unwrap().into_iter().map(Arc::new).collect()
}

/// Records staging holds, sealed or not.
fn staged_records(staging: &Staging) -> u64 {
    staging.counters().records.load(std::sync::atomic::Ordering::Relaxed)
}

fn committer(staging: &Staging, lakes: Vec<Arc<Lake>>) -> Committer {
    Committer {
        fencer: Fencer::Embedded,
        staging: staging.clone(),
        lakes,
        health: Health::default(),
        state: Arc::new(FlushState::default()),
        metrics: Arc::new(AppenderMetrics::register(&mut Registry::default())),
        interval: Duration::from_secs(3600),
    }
}

fn spans(n: usize) -> Batch {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        name: format!("span {i}"),
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        start_time_unix_nano: 1_700_000_000_000_000_000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Batch::new(&request.encode_to_vec(), n as u64, None, 0).holding(&[RowTable::Traces])
}

fn gauges(n: usize) -> Batch {
    gauges_counted(n, n as u64)
}

/// `n` gauge points, staged as `counted` items.
fn gauges_counted(n: usize, counted: u64) -> Batch {
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "depth".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: (0..n)
                            .map(|i| NumberDataPoint {
                                time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Batch::new(&request.encode_to_vec(), counted, None, 0).holding(&[RowTable::MetricsGauge])
}

/// Snapshots of the table holding rows, and its rows, from its snapshot summaries.
async fn table_rows(lake: &Lake) -> (usize, u64) {
    let summaries = lake.snapshot_summaries().await.unwrap();
    let added = |props: &std::collections::HashMap<String, String>| -> u64 {
        props.get("added-records").and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    (summaries.len(), summaries.iter().map(|(_, props)| added(props)).sum())
}

/// A flush that fails on its second table keeps the set staged; the next flush commits it to
/// the table that lacks it and not again to the one that has it.
#[tokio::test]
async fn a_set_committed_to_one_table_but_not_the_next_lands_once_in_each() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let staging = open_staging(&settings);
    staging.append(vec![spans(3), gauges(4)]).await.unwrap();
    let tables = [RowTable::Traces, RowTable::MetricsGauge];
    let lakes = open_lakes(&settings, &tables).await;
    // The gauge table disappears before the flush reaches it.
    let catalog = crate::lake::connect(&settings.iceberg, &Redactor::default()).await.unwrap();
    catalog.drop_table(lakes[1].table_ident()).await.unwrap();

    let first = committer(&staging, lakes.clone());
    assert!(first.flush(FlushTrigger::Admin).await.is_err(), "the gauge table is gone");
    assert_eq!(table_rows(&lakes[0]).await, (1, 3), "the traces table has the set");
    assert_eq!(staged_records(&staging), 7, "still staged");

    let lakes = open_lakes(&settings, &tables).await;
    let second = committer(&staging, lakes.clone());
    let done = second.flush(FlushTrigger::Admin).await.expect("the second flush");
    assert_eq!(done.records, 7, "3 spans found committed, 4 points committed now");
    assert_eq!(table_rows(&lakes[0]).await, (1, 3), "not committed twice");
    assert_eq!(table_rows(&lakes[1]).await, (1, 4));
    assert_eq!(staged_records(&staging), 0, "released");
    assert_eq!(second.metrics.rows_committed(RowTable::MetricsGauge), 4);
}

/// A sealed set whose batches read back as fewer items than staging counted for them is not
/// committed: the flush fails, naming both counts, and the set stays staged.
#[tokio::test]
async fn a_set_that_reads_back_fewer_items_than_were_staged_is_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let staging = open_staging(&settings);
    staging.append(vec![gauges_counted(4, 5)]).await.unwrap();
    let lakes = open_lakes(&settings, &[RowTable::MetricsGauge]).await;
    let error = committer(&staging, lakes.clone()).flush(FlushTrigger::Admin).await.unwrap_err();
    assert!(error.to_string().contains("read 4 sealed items where 5 were counted"), "{error}");
    assert_eq!(table_rows(&lakes[0]).await, (0, 0), "nothing committed");
    assert_eq!(staged_records(&staging), 5, "still staged");
}
