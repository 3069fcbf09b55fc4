//! The appender: OTLP logs, traces and metrics (embedded mode) or their Kafka topics (Kafka
//! mode), staged in DuckDB and appended to Iceberg tables. The modules follow the data:
//!
//! ```text
//!  source::otlp  (OTLP gRPC/HTTP, both modes) ---encoded requests--+
//!                                                                  +--> staging (DuckDB file,
//!  source::kafka (the topics, Kafka mode) ------encoded messages---+     group commit)
//!                                                                            | sealed sets
//!                                                                            v
//!  interval / thresholds / Flush / SIGUSR1 / shutdown --> commit (fence, summary) --> lake
//!                       (one Iceberg snapshot per table with rows, per sealed set: logs,
//!                        traces, metrics_gauge, metrics_sum, metrics_histogram, …)
//! ```
//!
//! `rows` turns OTLP into Arrow rows of each table's shape (`rows` for logs, `rows::spans`,
//! `rows::metrics`); `admin` answers Flush and Stats. An export is answered once its request is
//! durable in the staging file; a staged request leaves the staging file only after the
//! Iceberg commits that hold its rows, each table's commit checked against that table alone.

pub mod admin;
pub mod commit;
pub mod lake;
pub mod metrics;
pub mod rows;
pub mod source;
pub mod staging;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use prometheus_client::registry::Registry;
use telemetry_lake_common::{
    admin::FlushTrigger,
    health::Health,
    otlp::{Logs, Metrics, SignalKind, Traces},
    server::{self, BoundAddrs, Receivers, Service},
    settings::{IcebergSettings, Mode, Settings},
};
use telemetry_lake_proto::RowTable;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::AppenderAdmin,
    commit::{Committer, FlushRequest, FlushState, fence::Fencer},
    lake::Lake,
    metrics::AppenderMetrics,
    source::{
        kafka::KafkaSource,
        otlp::{EmbeddedExporter, ExportTotals},
    },
    staging::Staging,
};

/// The tables a signal's rows land in.
pub fn tables_of(signal: SignalKind) -> &'static [RowTable] {
    match signal {
        SignalKind::Logs => &[RowTable::Logs],
        SignalKind::Traces => &[RowTable::Traces],
        SignalKind::Metrics => &RowTable::METRICS,
    }
}

/// The signal whose rows land in `table`.
pub fn signal_of(table: RowTable) -> SignalKind {
    match table {
        RowTable::Logs => SignalKind::Logs,
        RowTable::Traces => SignalKind::Traces,
        _ => SignalKind::Metrics,
    }
}

/// The tables of the signals served: logs (always: the Kafka source and `appender query` need
/// it), traces and the five metrics tables unless `[signals]` switches them off.
fn tables_served(config: &Settings) -> Vec<RowTable> {
    let mut tables = vec![RowTable::Logs];
    for kind in [SignalKind::Traces, SignalKind::Metrics].into_iter().filter(|k| config.signals.serves(*k)) {
        tables.extend(tables_of(kind));
    }
    tables
}

/// Opens the tables, waiting with backoff while the catalog or storage is unreachable, so an
/// appender that starts before its catalog waits for it instead of crash-looping; a
/// configuration error, or a catalog database refusing the credentials, stops at once.
async fn open_lakes(
    config: &IcebergSettings,
    tables: &[RowTable],
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Arc<Lake>>> {
    let mut delay = Duration::from_secs(1);
    loop {
        let err = match Lake::open_tables(config, tables).await {
            Ok(lakes) => return Ok(lakes.into_iter().map(Arc::new).collect()),
            Err(err) if err.is_retryable() => err,
            Err(err) => return Err(err).context("cannot open the iceberg tables"),
        };
        tracing::warn!(error = %err, retry_in = ?delay, "cannot open the iceberg tables yet, retrying");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => {
                return Err(err).context("stopped while waiting for the iceberg tables");
            }
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Runs the appender until `shutdown`, then drains, flushes and returns: embedded when
/// `kafka.brokers` is empty, else consuming the topic. `flush_signal` is notified on SIGUSR1.
pub async fn run(
    config: &Settings,
    shutdown: CancellationToken,
    flush_signal: Arc<Notify>,
    on_bound: impl FnOnce(BoundAddrs),
) -> anyhow::Result<()> {
    let (threshold_tx, threshold_rx) = mpsc::channel(1);
    let staging = Staging::open(&config.staging, &config.flush, threshold_tx)?;
    // A broken staging database stops the service like SIGTERM does, then exits non-zero.
    let stop = shutdown.child_token();
    let broken = staging.broken().clone();
    let stop_on_broken = stop.clone();
    tokio::spawn(async move {
        broken.cancelled().await;
        stop_on_broken.cancel();
    });
    let lakes = open_lakes(&config.iceberg, &tables_served(config), &stop).await?;
    let mut registry = Registry::default();
    let metrics = Arc::new(AppenderMetrics::register(&mut registry));
    metrics.observe_staging(staging.counters());
    let health = Health::default();
    let flush_state = Arc::new(FlushState::default());
    let totals = Arc::new(ExportTotals::default());

    let consumer_stop = CancellationToken::new();
    let kafka = match &config.mode {
        Mode::Embedded => None,
        Mode::Kafka(kafka) => {
            let by_signal: Vec<(SignalKind, Vec<Arc<Lake>>)> = SignalKind::ALL
                .into_iter()
                .map(|signal| {
                    (signal, lakes.iter().filter(|l| signal_of(l.row()) == signal).cloned().collect())
                })
                .filter(|(_, lakes): &(_, Vec<_>)| !lakes.is_empty())
                .collect();
            let source = KafkaSource::start(kafka, staging.clone(), by_signal, consumer_stop.clone())
                .await
                .context("cannot start the kafka consumer")?;
            metrics::register_source(&mut registry, source.counters.clone());
            Some(Arc::new(source))
        }
    };

    let (flush_tx, flush_rx) = mpsc::channel::<FlushRequest>(64);
    let committer = Committer {
        fencer: kafka.clone().map_or(Fencer::Embedded, Fencer::Kafka),
        staging: staging.clone(),
        lakes,
        health: health.clone(),
        state: flush_state.clone(),
        metrics: metrics.clone(),
        interval: config.flush.interval,
    };
    let committer = tokio::spawn(committer.run(flush_rx, threshold_rx));
    if staging.counters().records.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        // Rows acknowledged before a crash or stop: commit them now.
        flush_tx.send(FlushRequest { trigger: FlushTrigger::Startup, reply: None }).await?;
    }
    let signal_flushes = flush_tx.clone();
    let signal_task = tokio::spawn(async move {
        loop {
            flush_signal.notified().await;
            if signal_flushes.send(FlushRequest { trigger: FlushTrigger::Signal, reply: None }).await.is_err()
            {
                break;
            }
        }
    });

    let exporter = Arc::new(EmbeddedExporter {
        staging: staging.clone(),
        totals: totals.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
    });
    let admin = Arc::new(AppenderAdmin {
        mode: if kafka.is_some() { "kafka" } else { "embedded" },
        kafka: kafka.clone(),
        staging: staging.clone(),
        flushes: flush_tx.clone(),
        flush_state,
        totals,
        signals: SignalKind::ALL.into_iter().filter(|kind| config.signals.serves(*kind)).collect(),
        metrics,
        health: health.clone(),
    });
    let receivers = Receivers::new(config, &mut registry)
        .serve::<Logs, _>(exporter.clone())
        .serve::<Traces, _>(exporter.clone())
        .serve::<Metrics, _>(exporter);
    let served = server::serve(config, Service { receivers, admin, health, registry }, stop, on_bound).await;
    signal_task.abort();
    consumer_stop.cancel();
    if let Some(source) = &kafka {
        let source = source.clone();
        tokio::task::spawn_blocking(move || source.join()).await?;
    }

    if let Some(err) = staging.broken_error() {
        // No final flush: the database refuses it. The next start reopens the file and commits.
        return Err(err.into());
    }
    // Drained: commit what is staged before exiting.
    let (reply, answer) = oneshot::channel();
    flush_tx.send(FlushRequest { trigger: FlushTrigger::Shutdown, reply: Some(reply) }).await?;
    drop(flush_tx);
    let flushed = answer.await.context("committer stopped before the final flush")?;
    committer.await.context("committer task failed")?;
    served?;
    match flushed {
        Ok(done) => {
            tracing::info!(records = done.records, snapshot_id = done.snapshot_id, "final flush done");
            Ok(())
        }
        Err(err) => Err(anyhow::anyhow!("final flush failed, rows stay staged for the next start: {err}")),
    }
}
