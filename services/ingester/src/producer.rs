//! The Kafka side of the export path: OTLP requests of every signal in, acknowledged Kafka
//! records out, one [`KafkaExporter`] (and topic) per signal.
//!
//! ```text
//!  export(request) --split.rs--> batches --send (non-blocking)--> librdkafka queue --> broker
//!        ^                                                                              |
//!        +---- oneshot per batch <---- IngestContext::delivery (acks=all) <-------------+
//! ```
//!
//! Guarantee: [`KafkaExporter::export`] answers `Ok` only after every batch of the request was
//! acknowledged by Kafka with `acks=all` from an idempotent producer (guarantee 1): the producer
//! is built by `telemetry_lake_common::kafka::producer_config`, which `[kafka.producer]` cannot
//! talk out of it.
//!
//! Backpressure (guarantee 4): a full producer queue is `Overloaded` (gRPC
//! `RESOURCE_EXHAUSTED` + `RetryInfo`, HTTP 429); no reachable broker, a missing topic or a
//! delivery that failed or timed out (`message.timeout.ms`, 30 s unless configured) is
//! `Unavailable` (gRPC `UNAVAILABLE` + `RetryInfo`, HTTP 503). While the broker watcher reports
//! no broker, exports fail at once instead of queueing. A request that fails after some of its
//! batches were delivered may be sent again by the client: Kafka then holds those records twice
//! (at least once, never lost).
//!
//! Records the appender could not stage (a malformed trace or span id) are refused here, with
//! the appender's own message, as OTLP partial success: they never reach Kafka
//! ([`split::check_and_split`]). Spans and metric data points with malformed ids are refused the
//! same way (`telemetry_lake_common::otlp::records`), so every record on the traces and metrics
//! topics decodes in the OpenTelemetry Collector too.
//!
//! Accounting happens in the delivery callback, not in the awaiting request, so a client that
//! disconnects mid-export cannot leave records counted as in flight forever.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
};
use rdkafka::{
    ClientConfig, ClientContext, bindings as rdsys,
    config::RDKafkaLogLevel,
    error::{IsError, KafkaError, RDKafkaErrorCode},
    message::DeliveryResult,
    producer::{Producer, ProducerContext, ThreadedProducer},
    util::IntoOpaque,
};
use telemetry_lake_common::otlp::{
    ExportError, ExportOutcome, Exporter, Logs, LogsRequest, Metrics, SignalKind, Traces, records,
    signal::Decoded,
};
#[cfg(test)]
use telemetry_lake_common::{kafka, settings::KafkaSettings};
use tokio::sync::Notify;

use crate::split::{self, Split};

/// `content-type` header of every record.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// `telemetry-lake-schema` header of every record of the logs topic: what the value holds.
pub const SCHEMA: &str = "otlp-logs-v1";

/// The `telemetry-lake-schema` header of `signal`'s records: [`SCHEMA`] for logs.
pub fn schema(signal: SignalKind) -> &'static str {
    match signal {
        SignalKind::Logs => SCHEMA,
        SignalKind::Traces => "otlp-traces-v1",
        SignalKind::Metrics => "otlp-metrics-v1",
    }
}
/// librdkafka's own default `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Requests with more records than this are split off the async workers.
const INLINE_SPLIT_RECORDS: u64 = 2_000;
/// What a client is told to wait when Kafka is unreachable or the queue is full.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(5);
const RETRY_OVERLOADED: Duration = Duration::from_secs(1);

/// The largest encoded request we put in one record: 90% of `message.max.bytes` (librdkafka's
/// 1,000,000 unless `[kafka.producer]` sets it), leaving room for key, headers and framing.
pub fn payload_budget(user: &BTreeMap<String, String>) -> usize {
    let limit = user
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES);
    limit - limit / 10
}

/// How long a delivery may take at most: `message.timeout.ms` as configured.
pub fn delivery_timeout(config: &ClientConfig) -> Duration {
    let ms = config.get("message.timeout.ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(300_000);
    Duration::from_millis(ms)
}

/// Running totals of the Kafka side, read by `Stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub records_received: AtomicU64,
    /// Records whose export was answered OK.
    pub records_accepted: AtomicU64,
    /// Records refused: malformed (partial success), too large on their own, or in an export
    /// that failed.
    pub records_rejected: AtomicU64,
    /// Records and bytes handed to the producer and not yet acknowledged or failed.
    pub records_in_flight: AtomicU64,
    pub bytes_in_flight: AtomicU64,
    /// Kafka messages handed to the producer and not yet acknowledged or failed: the
    /// producer's queue depth. librdkafka's own `outq_len` also counts its pending error and
    /// log events, so it reads non-zero with nothing queued while a broker is down.
    pub messages_in_flight: AtomicU64,
    /// Records and bytes Kafka acknowledged.
    pub records_delivered: AtomicU64,
    pub bytes_delivered: AtomicU64,
    /// Kafka messages acknowledged, and those whose delivery failed.
    pub messages_delivered: AtomicU64,
    pub delivery_errors: AtomicU64,
    /// Exports refused because the producer queue was full.
    pub queue_full: AtomicU64,
    /// The record counts above per signal, in the order of [`SignalKind::ALL`].
    pub signals: [SignalCounters; 3],
}

/// One signal's items through the ingester (`Stats.ingester.signals`, `/metrics`).
#[derive(Debug, Default)]
pub struct SignalCounters {
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub delivered: AtomicU64,
}

impl Counters {
    /// The counters of `signal`.
    pub fn signal(&self, signal: SignalKind) -> &SignalCounters {
        &self.signals[signal as usize]
    }

    fn received(&self, signal: SignalKind, n: u64) {
        self.records_received.fetch_add(n, Ordering::Relaxed);
        self.signal(signal).received.fetch_add(n, Ordering::Relaxed);
    }

    fn accepted(&self, signal: SignalKind, n: u64) {
        self.records_accepted.fetch_add(n, Ordering::Relaxed);
        self.signal(signal).accepted.fetch_add(n, Ordering::Relaxed);
    }

    fn rejected(&self, signal: SignalKind, n: u64) {
        self.records_rejected.fetch_add(n, Ordering::Relaxed);
        self.signal(signal).rejected.fetch_add(n, Ordering::Relaxed);
    }

    fn delivered(&self, signal: SignalKind, n: u64) {
        self.records_delivered.fetch_add(n, Ordering::Relaxed);
        self.signal(signal).delivered.fetch_add(n, Ordering::Relaxed);
    }
}

/// Whether Kafka can take records now, as seen by the broker watcher and librdkafka.
#[derive(Debug, Default)]
pub struct BrokerState {
    /// The topic exists and a broker answered the last metadata probe.
    pub ready: AtomicBool,
    /// Woken when librdkafka reports every broker down, so the watcher probes at once.
    pub changed: Notify,
}

/// What the delivery callback needs to settle one batch: the delivery opaque of its record.
pub struct Pending {
    signal: SignalKind,
    records: u64,
    bytes: u64,
    /// The record's value. librdkafka reads it where it is (it is produced without
    /// `RD_KAFKA_MSG_F_COPY`), so it must live until the delivery callback drops it here.
    payload: Bytes,
    deliveries: Arc<Deliveries>,
}

/// The deliveries of one export: the export waits for all of them at once and is woken by the
/// last one, not once per record.
#[derive(Debug, Default)]
struct Deliveries {
    /// Records handed to librdkafka and not yet settled, plus one held by the export while it is
    /// still handing them over (so that an early delivery is never taken for the last).
    outstanding: AtomicUsize,
    /// The first delivery that failed.
    failure: Mutex<Option<KafkaError>>,
    /// Notified once `outstanding` reaches zero.
    settled: Notify,
}

impl Deliveries {
    fn new() -> Arc<Self> {
        Arc::new(Self { outstanding: AtomicUsize::new(1), ..Self::default() })
    }

    /// One record settled (or the export let go of its hold): wakes the export after the last.
    fn settle(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_one();
        }
    }
}

/// The producer's librdkafka callbacks: deliveries settle batches, errors and logs go to
/// tracing.
pub struct IngestContext {
    pub counters: Arc<Counters>,
    pub broker: Arc<BrokerState>,
    /// librdkafka repeats a failure on every reconnect attempt (every 100 ms to 10 s while a
    /// broker is down); each kind is logged at warn at most once per [`LOG_EVERY`].
    pub last_logged: Mutex<HashMap<String, Instant>>,
}

/// How often one kind of librdkafka complaint is logged at warn; repeats go to debug.
const LOG_EVERY: Duration = Duration::from_secs(30);

impl IngestContext {
    pub fn new(counters: Arc<Counters>, broker: Arc<BrokerState>) -> Self {
        Self { counters, broker, last_logged: Mutex::new(HashMap::new()) }
    }

    /// Whether a complaint of this `kind` should be logged loudly now.
    fn first_in_a_while(&self, kind: &str) -> bool {
        let mut last = self.last_logged.lock().expect("log limiter lock");
        let now = Instant::now();
        match last.get(kind) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                last.insert(kind.to_owned(), now);
                true
            }
        }
    }
}

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(facility = fac, message, "librdkafka")
            }
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning if self.first_in_a_while(fac) => {
                tracing::warn!(facility = fac, message, "librdkafka")
            }
            _ => tracing::debug!(facility = fac, message, "librdkafka"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // The watcher probes at once and decides; librdkafka also says this while
            // reconnecting, so it is not taken as the verdict itself.
            self.broker.changed.notify_one();
        }
        if self.first_in_a_while(&format!("{error:?}")) {
            tracing::warn!(error = %error, reason, "kafka client error");
        } else {
            tracing::debug!(error = %error, reason, "kafka client error");
        }
    }
}

impl ProducerContext for IngestContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        let Pending { signal, records, bytes, payload, deliveries } = *pending;
        // librdkafka is done with the value: the delivery report is final.
        drop(payload);
        let c = &self.counters;
        c.records_in_flight.fetch_sub(records, Ordering::Relaxed);
        c.bytes_in_flight.fetch_sub(bytes, Ordering::Relaxed);
        c.messages_in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(_) => {
                c.delivered(signal, records);
                c.bytes_delivered.fetch_add(bytes, Ordering::Relaxed);
                c.messages_delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                c.delivery_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %error, records, "kafka delivery failed");
                deliveries
                    .failure
                    .lock()
                    .expect("delivery failure lock")
                    .get_or_insert_with(|| error.clone());
            }
        }
        // The export may have been abandoned by its client; the counters above still hold.
        deliveries.settle();
    }
}

pub type IngestProducer = ThreadedProducer<IngestContext>;

/// OTLP requests of one signal to its Kafka topic: the ingester's [`Exporter`] of that signal.
pub struct KafkaExporter {
    pub producer: Arc<IngestProducer>,
    /// The topic, as librdkafka takes it (made once, not per record).
    pub topic: CString,
    /// The signal: its counters and its records' `telemetry-lake-schema` header ([`schema`]).
    pub signal: SignalKind,
    pub budget: usize,
    pub counters: Arc<Counters>,
    pub broker: Arc<BrokerState>,
    /// The longest an export waits for its deliveries: `message.timeout.ms` plus a second.
    /// librdkafka can hold a batch that was in flight to a dead broker past that timeout (the
    /// idempotent producer first settles the in-flight request); the client hears by then.
    pub delivery_deadline: Duration,
}

/// The headers of one record, owned until librdkafka takes them.
struct Headers(*mut rdsys::rd_kafka_headers_t);

impl Headers {
    /// `content-type` and `telemetry-lake-schema: {schema}`.
    fn new(schema: &str) -> Self {
        let headers = Self(unsafe { rdsys::rd_kafka_headers_new(2) });
        for (name, value) in [("content-type", CONTENT_TYPE), ("telemetry-lake-schema", schema)] {
            // SAFETY: valid pointers with their lengths; librdkafka copies both.
            unsafe {
                rdsys::rd_kafka_header_add(
                    headers.0,
                    name.as_ptr().cast(),
                    name.len() as isize,
                    value.as_ptr().cast(),
                    value.len() as isize,
                )
            };
        }
        headers
    }
}

impl Drop for Headers {
    fn drop(&mut self) {
        // SAFETY: still ours: a produced record's headers are forgotten instead.
        unsafe { rdsys::rd_kafka_headers_destroy(self.0) }
    }
}

/// What a failed `send` (the record never entered the queue) means for the client.
fn enqueue_error(error: &KafkaError) -> ExportError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => ExportError::Overloaded {
            message: "the kafka producer queue is full".into(),
            retry_after: RETRY_OVERLOADED,
        },
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => ExportError::Internal(format!(
            "kafka refused a record as too large although it was split to the limit: {error}"
        )),
        _ => ExportError::Unavailable {
            message: format!("kafka cannot take records now: {error}"),
            retry_after: RETRY_UNAVAILABLE,
        },
    }
}

/// What a failed delivery (the record was queued but Kafka did not acknowledge it) means.
fn delivery_error(error: &KafkaError) -> ExportError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => ExportError::Unavailable {
            message: "kafka did not acknowledge the records within message.timeout.ms".into(),
            retry_after: RETRY_UNAVAILABLE,
        },
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => ExportError::Internal(format!(
            "the broker refused a record as too large: lower kafka.producer message.max.bytes to the \
             broker's limit ({error})"
        )),
        _ => ExportError::Unavailable {
            message: format!("kafka did not acknowledge the records: {error}"),
            retry_after: RETRY_UNAVAILABLE,
        },
    }
}

impl KafkaExporter {
    fn reject(&self, records: u64, error: ExportError) -> Result<ExportOutcome, ExportError> {
        self.counters.rejected(self.signal, records);
        Err(error)
    }

    /// Queues every batch, counting it in `deliveries`; on the first that cannot be queued,
    /// returns the error (those already queued are still delivered).
    fn enqueue(&self, split: Split, deliveries: &Arc<Deliveries>) -> Option<ExportError> {
        for batch in split.batches {
            let bytes = batch.payload.len() as u64;
            let records = batch.records;
            let pending = Box::new(Pending {
                signal: self.signal,
                records,
                bytes,
                payload: batch.payload,
                deliveries: Arc::clone(deliveries),
            });
            // Counted before sending: the delivery callback may run before `produce` returns.
            self.counters.records_in_flight.fetch_add(records, Ordering::Relaxed);
            self.counters.bytes_in_flight.fetch_add(bytes, Ordering::Relaxed);
            self.counters.messages_in_flight.fetch_add(1, Ordering::Relaxed);
            deliveries.outstanding.fetch_add(1, Ordering::AcqRel);
            if let Err(error) = self.produce(&batch.key, pending) {
                self.counters.records_in_flight.fetch_sub(records, Ordering::Relaxed);
                self.counters.bytes_in_flight.fetch_sub(bytes, Ordering::Relaxed);
                self.counters.messages_in_flight.fetch_sub(1, Ordering::Relaxed);
                // Never the last: the export still holds its own count.
                deliveries.outstanding.fetch_sub(1, Ordering::AcqRel);
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                    self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                }
                return Some(enqueue_error(&error));
            }
        }
        None
    }

    /// Hands one record to librdkafka without copying its value (what rdkafka's `send` does
    /// always): the value stays in `pending`, the record's delivery opaque, which the delivery
    /// callback receives and drops once librdkafka is done with the record. The key and the
    /// headers are copied or taken over by librdkafka. Returns the error, after dropping
    /// `pending`, when the record was not queued.
    fn produce(&self, key: &str, pending: Box<Pending>) -> Result<(), KafkaError> {
        let headers = Headers::new(schema(self.signal));
        let (value, value_len) = (pending.payload.as_ptr(), pending.payload.len());
        let opaque = pending.into_ptr();
        // SAFETY: the argument list is the one rdkafka's `BaseProducer::send` passes, without
        // RD_KAFKA_MSG_F_COPY. `value` points into the heap buffer of `pending.payload`, which
        // neither moves nor is freed before the delivery callback gets `opaque` back: the
        // delivery report is the last time librdkafka touches a record. `key`, `topic` and the
        // headers are copied or owned by librdkafka once the call returns.
        let code = unsafe {
            rdsys::rd_kafka_producev(
                self.producer.client().native_ptr(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC,
                self.topic.as_ptr(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
                -1i32, // RD_KAFKA_PARTITION_UA: the partitioner decides
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
                0 as std::ffi::c_int,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                value as *mut std::ffi::c_void,
                value_len,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
                key.as_ptr() as *mut std::ffi::c_void,
                key.len(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
                opaque,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADERS,
                headers.0,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_END,
            )
        };
        if code.is_error() {
            // SAFETY: librdkafka did not take the record, so `opaque` is still only ours.
            drop(unsafe { Box::<Pending>::from_ptr(opaque) });
            return Err(KafkaError::MessageProduction(code.into()));
        }
        // librdkafka owns the headers now and frees them with the record.
        std::mem::forget(headers);
        Ok(())
    }
}

impl KafkaExporter {
    /// `Unavailable` while the broker watcher sees no broker: refused at once, not queued.
    fn refuse_unless_ready(&self, received: u64) -> Result<(), ExportError> {
        if self.broker.ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.counters.rejected(self.signal, received);
        Err(ExportError::Unavailable {
            message: "no kafka broker is reachable".into(),
            retry_after: RETRY_UNAVAILABLE,
        })
    }

    /// Produces the batches of `split` and waits until Kafka acknowledged every one of them:
    /// the export's answer. `received` items came in, `split.rejected` of them were refused.
    async fn deliver(&self, received: u64, split: Split) -> Result<ExportOutcome, ExportError> {
        let (rejected, rejection) = (split.rejected, split.rejection.clone());
        let deliveries = Deliveries::new();
        let failed = self.enqueue(split, &deliveries);
        deliveries.settle();
        let waited = tokio::time::timeout(self.delivery_deadline, deliveries.settled.notified()).await;
        let failure = deliveries.failure.lock().expect("delivery failure lock").take();
        let first_error = failed.or_else(|| match (waited, failure) {
            (_, Some(error)) => Some(delivery_error(&error)),
            (Err(_), None) => {
                Some(delivery_error(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)))
            }
            (Ok(()), None) => None,
        });
        if let Some(error) = first_error {
            return self.reject(received, error);
        }
        self.counters.accepted(self.signal, received - rejected);
        self.counters.rejected(self.signal, rejected);
        if rejected > 0 {
            tracing::debug!(rejected, message = %rejection, "items refused: malformed, or too large for one kafka message");
            return Ok(ExportOutcome::partial(rejected as i64, rejection));
        }
        Ok(ExportOutcome::ok())
    }

    /// Runs `split` inline, or on the blocking pool for a request of more than
    /// [`INLINE_SPLIT_RECORDS`] items.
    async fn split_off_workers(
        items: u64,
        split: impl FnOnce() -> Split + Send + 'static,
    ) -> Result<Split, ExportError> {
        if items <= INLINE_SPLIT_RECORDS {
            return Ok(split());
        }
        tokio::task::spawn_blocking(split)
            .await
            .map_err(|err| ExportError::Internal(format!("request split failed: {err}")))
    }

    /// The export of traces and metrics: checked and split from the decoded request.
    async fn export_decoded<L: split::Levels + Send + 'static>(
        &self,
        request: Decoded<L>,
        drop_malformed: fn(&mut L) -> records::Checked,
    ) -> Result<ExportOutcome, ExportError> {
        let received = request.items();
        self.counters.received(self.signal, received);
        if received == 0 {
            return Ok(ExportOutcome::ok());
        }
        self.refuse_unless_ready(received)?;
        let (bytes, budget) = (request.bytes().clone(), self.budget);
        let message = request.into_message();
        let split = Self::split_off_workers(received, move || {
            split::check_and_split_bytes(&bytes, message, budget, drop_malformed)
        });
        match split.await {
            Ok(split) => self.deliver(received, split).await,
            Err(error) => self.reject(received, error),
        }
    }
}

impl Exporter<Logs> for KafkaExporter {
    async fn export(&self, request: LogsRequest) -> Result<ExportOutcome, ExportError> {
        let received = request.records();
        self.counters.received(self.signal, received);
        if received == 0 {
            return Ok(ExportOutcome::ok());
        }
        self.refuse_unless_ready(received)?;
        let split = match split::split_encoded(request.bytes(), request.walk(), self.budget) {
            Some(split) => split,
            None => {
                let decoded = match request.decode() {
                    Ok(decoded) => decoded,
                    Err(error) => return self.reject(received, error),
                };
                let budget = self.budget;
                let split = move || split::check_and_split(decoded, budget, records::drop_malformed);
                match Self::split_off_workers(received, split).await {
                    Ok(split) => split,
                    Err(error) => return self.reject(received, error),
                }
            }
        };
        // The walk is not needed any more; the bytes live on in the records' values (slices of
        // them) until Kafka acknowledged each.
        drop(request);
        self.deliver(received, split).await
    }
}

impl Exporter<Traces> for KafkaExporter {
    async fn export(
        &self,
        request: Decoded<ExportTraceServiceRequest>,
    ) -> Result<ExportOutcome, ExportError> {
        self.export_decoded(request, records::drop_malformed_spans).await
    }
}

impl Exporter<Metrics> for KafkaExporter {
    async fn export(
        &self,
        request: Decoded<ExportMetricsServiceRequest>,
    ) -> Result<ExportOutcome, ExportError> {
        self.export_decoded(request, records::drop_malformed_points).await
    }
}

/// Waits (off the async workers) until everything queued is delivered or `timeout` passes.
pub async fn flush(producer: Arc<IngestProducer>, timeout: Duration) -> Result<(), KafkaError> {
    tokio::task::spawn_blocking(move || producer.flush(timeout)).await.unwrap_or(Err(KafkaError::Canceled))
}

#[cfg(test)]
pub(crate) mod tests {
    use telemetry_lake_common::otlp::ExportLogsServiceRequest;

    use super::*;

    fn user(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// `[kafka]` settings for tests: `brokers` and the `[kafka.producer]` table `pairs`.
    pub(crate) fn kafka_settings(brokers: &str, pairs: &[(&str, &str)]) -> KafkaSettings {
        let mut config = telemetry_lake_common::config::Config::default();
        config.kafka.brokers = brokers.into();
        config.kafka.producer = user(pairs);
        let settings = telemetry_lake_common::settings::Settings::from_config(config).expect("settings");
        settings.mode.kafka().expect("kafka mode").clone()
    }

    #[test]
    fn delivery_timeout_follows_message_timeout_ms() {
        let config = kafka::producer_config(&kafka_settings("k:9092", &[]), "t", &[]);
        assert_eq!(delivery_timeout(&config), Duration::from_secs(30));
        let config =
            kafka::producer_config(&kafka_settings("k:9092", &[("message.timeout.ms", "5000")]), "t", &[]);
        assert_eq!(delivery_timeout(&config), Duration::from_secs(5));
    }

    #[test]
    fn budget_follows_message_max_bytes() {
        assert_eq!(payload_budget(&user(&[])), 900_000);
        assert_eq!(payload_budget(&user(&[("message.max.bytes", "100000")])), 90_000);
    }

    /// An exporter whose producer points at a port nothing listens on.
    fn unreachable_exporter(extra: &[(&str, &str)], ready: bool) -> KafkaExporter {
        let config = kafka::producer_config(&kafka_settings("127.0.0.1:1", extra), "t", &[]);
        let counters = Arc::new(Counters::default());
        let broker = Arc::new(BrokerState::default());
        broker.ready.store(ready, Ordering::Relaxed);
        let producer: IngestProducer =
            config.create_with_context(IngestContext::new(counters.clone(), broker.clone())).unwrap();
        KafkaExporter {
            producer: Arc::new(producer),
            topic: c"otel-logs".into(),
            signal: SignalKind::Logs,
            budget: 900_000,
            counters,
            broker,
            delivery_deadline: delivery_timeout(&config) + Duration::from_secs(1),
        }
    }

    /// A request with one record per service, for the tests here and in `admin`.
    pub(crate) fn request(services: &[&str]) -> LogsRequest {
        LogsRequest::encoded(&decoded_request(services))
    }

    /// [`request`], decoded.
    pub(crate) fn decoded_request(services: &[&str]) -> ExportLogsServiceRequest {
        use opentelemetry_proto::tonic::{
            common::v1::{AnyValue, KeyValue, any_value::Value},
            logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
            resource::v1::Resource,
        };
        let string = |s: &str| Some(AnyValue { value: Some(Value::StringValue(s.into())) });
        ExportLogsServiceRequest {
            resource_logs: services
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
                        log_records: vec![LogRecord { body: string("line"), ..Default::default() }],
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn known_outage_is_refused_at_once() {
        let exporter = unreachable_exporter(&[], false);
        let err = Exporter::<Logs>::export(&exporter, request(&["a"])).await.unwrap_err();
        assert_eq!(err.http_status().as_u16(), 503, "{err}");
        assert_eq!(exporter.counters.records_rejected.load(Ordering::Relaxed), 1);
        assert_eq!(
            Exporter::<Logs>::export(&exporter, LogsRequest::encoded(&ExportLogsServiceRequest::default()))
                .await,
            Ok(ExportOutcome::ok())
        );
    }

    /// Traces and metrics get the same retryable answer, counted under their own signal.
    #[tokio::test]
    async fn known_outage_refuses_traces_and_metrics_at_once_too() {
        use opentelemetry_proto::tonic::{
            collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
            metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data},
            trace::v1::{ResourceSpans, ScopeSpans, Span},
        };
        use telemetry_lake_common::otlp::Signal;
        let mut exporter = unreachable_exporter(&[], false);
        exporter.signal = SignalKind::Traces;
        let spans = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![Span::default(); 3], ..Default::default() }],
                ..Default::default()
            }],
        };
        let err = Exporter::<Traces>::export(&exporter, Traces::encoded(&spans)).await.unwrap_err();
        assert_eq!((err.http_status().as_u16(), err.retry_after_header().is_some()), (503, true), "{err}");

        exporter.signal = SignalKind::Metrics;
        let gauge = Metric {
            data: Some(Data::Gauge(Gauge { data_points: vec![NumberDataPoint::default(); 2] })),
            ..Default::default()
        };
        let points = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics { metrics: vec![gauge], ..Default::default() }],
                ..Default::default()
            }],
        };
        let err = Exporter::<Metrics>::export(&exporter, Metrics::encoded(&points)).await.unwrap_err();
        assert_eq!(err.http_status().as_u16(), 503, "{err}");

        let c = &exporter.counters;
        let rejected = |signal| c.signal(signal).rejected.load(Ordering::Relaxed);
        assert_eq!(
            (rejected(SignalKind::Logs), rejected(SignalKind::Traces), rejected(SignalKind::Metrics)),
            (0, 3, 2)
        );
        assert_eq!(c.records_rejected.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn undelivered_records_time_out_as_unavailable() {
        let exporter = unreachable_exporter(&[("message.timeout.ms", "500")], true);
        let started = std::time::Instant::now();
        let err = Exporter::<Logs>::export(&exporter, request(&["a", "b"])).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "held for {:?}", started.elapsed());
        assert_eq!(err.grpc_code(), tonic::Code::Unavailable, "{err}");
        let c = &exporter.counters;
        assert_eq!(c.records_rejected.load(Ordering::Relaxed), 2);
        assert_eq!(
            c.records_in_flight.load(Ordering::Relaxed),
            0,
            "failed deliveries leave nothing in flight"
        );
        assert_eq!(c.delivery_errors.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn malformed_records_are_refused_as_partial_success_and_never_produced() {
        // The broker is unreachable: anything produced would fail the export.
        let exporter = unreachable_exporter(&[("message.timeout.ms", "500")], true);
        let mut request = decoded_request(&["a", "b"]);
        for resource in &mut request.resource_logs {
            resource.scope_logs[0].log_records[0].trace_id = vec![1, 2, 3];
        }
        let outcome =
            Exporter::<Logs>::export(&exporter, LogsRequest::encoded(&request)).await.expect("answered");
        assert_eq!(outcome, ExportOutcome::partial(2, "trace_id must be 16 bytes, got 3"));
        let c = &exporter.counters;
        assert_eq!(c.records_rejected.load(Ordering::Relaxed), 2);
        assert_eq!(c.records_accepted.load(Ordering::Relaxed), 0);
        assert_eq!(c.delivery_errors.load(Ordering::Relaxed), 0, "nothing was produced");
    }

    /// A value whose owner says when it is dropped.
    struct Owner(Arc<AtomicBool>, Vec<u8>);

    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.1
        }
    }

    impl Drop for Owner {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn values_are_produced_in_place_and_released_after_their_delivery() {
        let exporter = unreachable_exporter(&[("message.timeout.ms", "500")], true);
        let dropped = Arc::new(AtomicBool::new(false));
        let payload = Bytes::from_owner(Owner(dropped.clone(), vec![7; 1000]));
        let split = Split {
            batches: vec![crate::split::Batch { key: "a".into(), payload, records: 1 }],
            ..Split::default()
        };
        let deliveries = Deliveries::new();
        assert_eq!(exporter.enqueue(split, &deliveries), None);
        // librdkafka reads the value where it is: it is ours to keep until the delivery report.
        assert!(!dropped.load(Ordering::SeqCst), "the value was released while librdkafka may read it");
        deliveries.settle();
        tokio::time::timeout(Duration::from_secs(5), deliveries.settled.notified()).await.expect("settled");
        assert!(dropped.load(Ordering::SeqCst), "the value outlived its delivery report");
        assert!(deliveries.failure.lock().unwrap().is_some(), "no broker: the delivery failed");
    }

    #[tokio::test]
    async fn a_value_librdkafka_refuses_is_released_at_once() {
        let exporter = unreachable_exporter(&[("queue.buffering.max.messages", "1")], true);
        let flags: Vec<_> = (0..2).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let batches = flags
            .iter()
            .map(|flag| crate::split::Batch {
                key: "a".into(),
                payload: Bytes::from_owner(Owner(flag.clone(), vec![1; 10])),
                records: 1,
            })
            .collect();
        let deliveries = Deliveries::new();
        let error = exporter.enqueue(Split { batches, ..Split::default() }, &deliveries).expect("queue full");
        assert_eq!(error.http_status().as_u16(), 429, "{error}");
        assert!(!flags[0].load(Ordering::SeqCst), "the queued value is kept");
        assert!(flags[1].load(Ordering::SeqCst), "the refused value is released");
        assert_eq!(
            deliveries.outstanding.load(Ordering::SeqCst),
            2,
            "the export's hold and the queued record"
        );
    }

    #[tokio::test]
    async fn full_queue_is_overloaded() {
        let exporter = unreachable_exporter(
            &[("queue.buffering.max.messages", "1"), ("message.timeout.ms", "500")],
            true,
        );
        let err = Exporter::<Logs>::export(&exporter, request(&["a", "b"])).await.unwrap_err();
        assert_eq!(err.http_status().as_u16(), 429, "{err}");
        assert_eq!(exporter.counters.queue_full.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn errors_map_to_the_otlp_retry_table() {
        let full = enqueue_error(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
        assert_eq!(full.http_status().as_u16(), 429);
        assert!(full.is_retryable());
        let timeout = delivery_error(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut));
        assert_eq!(timeout.http_status().as_u16(), 503);
        assert!(timeout.is_retryable());
        let down = delivery_error(&KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown));
        assert_eq!(down.grpc_code(), tonic::Code::Unavailable);
        let big = delivery_error(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(!big.is_retryable());
    }
}
