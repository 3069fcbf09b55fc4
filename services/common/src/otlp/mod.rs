//! The OTLP receivers both services share (logs, traces, metrics), and the one export path
//! behind them.
//!
//! ```text
//!  OTLP/gRPC {Logs,Trace,Metrics}Service/Export --(grpc.rs: tonic unframes, gzip/zstd, limit)--+
//!                                                                   protobuf bytes            +--> Signal::check
//!  OTLP/HTTP POST /v1/{logs,traces,metrics} --(http.rs: media type, streaming inflate, limit)--+   (JSON: serde, encode)
//!                                                                                                   v
//!                                                                                      export_request -> Exporter<S>::export
//!  Ok(ExportOutcome)  -> Export*ServiceResponse (partial_success only if something was rejected)
//!  Err(ExportError)   -> gRPC status / HTTP 4xx-5xx with a google.rpc.Status body
//! ```
//!
//! What differs between the signals is in [`signal`]. Logs reach the exporter as a
//! [`LogsRequest`]: the protobuf bytes as they arrived plus what [`walk::walk_logs_request`]
//! found in them (validity exactly as prost decides it, record counts, malformed ids, each
//! resource's byte range and `service.name`), so a service can forward or stage the bytes
//! untouched and decode only what it must change. Traces and metrics reach it decoded by prost,
//! with their bytes ([`signal::Decoded`]).
//!
//! Guarantee: a receiver answers success only after the service's [`Exporter::export`]
//! returned `Ok`, which the exporter promises only once the items are durable. Every request
//! is counted in [`ReceiverMetrics`]; server faults are logged, client faults counted and
//! logged at debug.

pub mod error;
pub mod grpc;
pub mod http;
pub mod records;
pub mod signal;
pub mod walk;
pub mod wire;

mod body;

use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

pub use error::ExportError;
use error::Outcome;
pub use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message as _;
pub use signal::{Logs, Metrics, Signal, SignalKind, Traces};
use walk::Walk;

/// What an exporter accepted: everything, or all but `rejected` items (OTLP partial success).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOutcome {
    /// Items (log records, spans, data points) that were dropped for good; 0 when all were
    /// accepted.
    pub rejected: i64,
    /// Why they were rejected, for the client's developer; may be empty.
    pub error_message: String,
}

impl ExportOutcome {
    /// Every item was accepted.
    pub fn ok() -> Self {
        Self::default()
    }

    /// `rejected` items were rejected, for `message`.
    pub fn partial(rejected: i64, message: impl Into<String>) -> Self {
        Self { rejected, error_message: message.into() }
    }

    /// What the response's `partial_success` says: set only when something was rejected or
    /// there is a message to pass on.
    pub fn to_report(self) -> Option<(i64, String)> {
        (self.rejected != 0 || !self.error_message.is_empty()).then_some((self.rejected, self.error_message))
    }
}

/// The service side of the OTLP receivers of signal `S`: one implementation per service and
/// signal, called by both the gRPC and the HTTP receiver.
pub trait Exporter<S: Signal>: Send + Sync + 'static {
    /// Answer only once the items are durable (the service decides what that means).
    fn export(
        &self,
        request: S::Request,
    ) -> impl std::future::Future<Output = Result<ExportOutcome, ExportError>> + Send;
}

/// A valid export request: its protobuf bytes and what walking them found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsRequest {
    bytes: Bytes,
    walk: Walk,
}

impl LogsRequest {
    /// Checks `bytes` as an `ExportLogsServiceRequest`; a request prost would not decode is
    /// `InvalidArgument` with prost's reason.
    pub fn walked(bytes: Bytes) -> Result<Self, ExportError> {
        match walk::walk_logs_request(&bytes) {
            Ok(walk) => Ok(Self { bytes, walk }),
            Err(e) => Err(ExportError::InvalidArgument(format!("malformed protobuf: {e}"))),
        }
    }

    /// The request `request` encodes to (OTLP/JSON bodies, tests).
    pub fn encoded(request: &ExportLogsServiceRequest) -> Self {
        Self::walked(request.encode_to_vec().into()).expect("prost's own encoding walks")
    }

    /// The protobuf bytes, as received.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// What the walk found: resources, record counts, malformed ids.
    pub fn walk(&self) -> &Walk {
        &self.walk
    }

    /// Log records in the request.
    pub fn records(&self) -> u64 {
        self.walk.records
    }

    /// The request as prost structs, for the paths that change it.
    pub fn decode(&self) -> Result<ExportLogsServiceRequest, ExportError> {
        ExportLogsServiceRequest::decode(self.bytes.as_ref())
            .map_err(|e| ExportError::Internal(format!("a walked request did not decode: {e}")))
    }
}

/// The number of log records in a request.
pub fn count_records(request: &ExportLogsServiceRequest) -> u64 {
    request
        .resource_logs
        .iter()
        .flat_map(|resource| &resource.scope_logs)
        .map(|scope| scope.log_records.len() as u64)
        .sum()
}

/// Which receiver a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    signal: &'static str,
    transport: Transport,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabels {
    signal: &'static str,
    transport: Transport,
}

/// Counters of the OTLP receivers, registered once per process and shared by both transports
/// and every signal. `signal` is `logs`, `traces` or `metrics`; records are that signal's items
/// (log records, spans, data points).
///
/// - `otlp_requests_total{signal, transport, outcome}`: outcome is `ok` (including partial
///   success), `client_error`, `server_error` or `retryable`.
/// - `otlp_records_received_total{signal, transport}`: items in requests that were decoded.
/// - `otlp_records_accepted_total{signal, transport}`: items the exporter accepted.
/// - `otlp_records_rejected_total{signal, transport}`: partial-success rejections plus the items
///   of requests that failed.
#[derive(Debug, Default)]
pub struct ReceiverMetrics {
    requests: Family<RequestLabels, Counter>,
    records_received: Family<TransportLabels, Counter>,
    records_accepted: Family<TransportLabels, Counter>,
    records_rejected: Family<TransportLabels, Counter>,
}

impl ReceiverMetrics {
    /// Registers the counters in `registry` (names get `_total` from prometheus-client).
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        registry.register(
            "otlp_requests",
            "OTLP export requests by transport and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "otlp_records_received",
            "Items (log records, spans, data points) in decoded OTLP export requests",
            metrics.records_received.clone(),
        );
        registry.register(
            "otlp_records_accepted",
            "Items accepted by the exporter",
            metrics.records_accepted.clone(),
        );
        registry.register(
            "otlp_records_rejected",
            "Items rejected by partial success or failed requests",
            metrics.records_rejected.clone(),
        );
        Arc::new(metrics)
    }

    /// Makes the series of signal `S` exist, so rate() works before its first request.
    pub(crate) fn serve<S: Signal>(&self) {
        for transport in [Transport::Grpc, Transport::Http] {
            let labels = TransportLabels { signal: S::NAME, transport };
            let _ = self.records_received.get_or_create(&labels);
            let _ = self.records_accepted.get_or_create(&labels);
            let _ = self.records_rejected.get_or_create(&labels);
            let _ = self.requests.get_or_create(&RequestLabels {
                signal: S::NAME,
                transport,
                outcome: Outcome::Ok,
            });
        }
    }

    fn request(&self, signal: &'static str, transport: Transport, outcome: Outcome) {
        self.requests.get_or_create(&RequestLabels { signal, transport, outcome }).inc();
    }

    fn records(
        family: &Family<TransportLabels, Counter>,
        signal: &'static str,
        transport: Transport,
        n: u64,
    ) {
        if n > 0 {
            family.get_or_create(&TransportLabels { signal, transport }).inc_by(n);
        }
    }

    /// Counts a request that failed before it could be decoded (or while decoding) and logs it.
    pub(crate) fn undecodable(&self, signal: &'static str, transport: Transport, error: &ExportError) {
        self.request(signal, transport, error.outcome());
        log_failure(signal, transport, 0, error);
    }

    /// Requests of logs by transport and outcome.
    #[cfg(test)]
    pub(crate) fn requests_count(&self, transport: Transport, outcome: &str) -> u64 {
        self.requests_of(Logs::NAME, transport, outcome)
    }

    #[cfg(test)]
    pub(crate) fn requests_of(&self, signal: &'static str, transport: Transport, outcome: &str) -> u64 {
        let outcome = match outcome {
            "ok" => Outcome::Ok,
            "client_error" => Outcome::ClientError,
            "server_error" => Outcome::ServerError,
            "retryable" => Outcome::Retryable,
            other => panic!("unknown outcome {other}"),
        };
        self.requests.get_or_create(&RequestLabels { signal, transport, outcome }).get()
    }

    /// Log records by transport and kind.
    #[cfg(test)]
    pub(crate) fn records_count(&self, transport: Transport, kind: &str) -> u64 {
        self.records_of(Logs::NAME, transport, kind)
    }

    #[cfg(test)]
    pub(crate) fn records_of(&self, signal: &'static str, transport: Transport, kind: &str) -> u64 {
        let family = match kind {
            "received" => &self.records_received,
            "accepted" => &self.records_accepted,
            "rejected" => &self.records_rejected,
            other => panic!("unknown kind {other}"),
        };
        family.get_or_create(&TransportLabels { signal, transport }).get()
    }
}

fn log_failure(signal: &'static str, transport: Transport, records: u64, error: &ExportError) {
    let transport = transport.as_str();
    match error.outcome() {
        Outcome::ClientError => {
            tracing::debug!(signal, transport, records, error = %error, "rejected otlp request")
        }
        Outcome::Retryable => {
            tracing::warn!(signal, transport, records, error = %error, "otlp export failed, client asked to retry")
        }
        Outcome::ServerError | Outcome::Ok => {
            tracing::error!(signal, transport, records, error = %error, "otlp export failed")
        }
    }
}

/// Requests larger than this are walked on the blocking pool: walking 16 MiB takes a few
/// milliseconds, too long to hold an async worker.
const WALK_INLINE_MAX: usize = 1024 * 1024;

/// Checks the protobuf bytes of a request, as both receivers got them.
pub(crate) async fn check_request<S: Signal>(bytes: Bytes) -> Result<S::Request, ExportError> {
    if bytes.len() <= WALK_INLINE_MAX {
        return S::check(bytes);
    }
    tokio::task::spawn_blocking(move || S::check(bytes))
        .await
        .map_err(|e| ExportError::Internal(format!("checking the request failed: {e}")))?
}

/// The export path both receivers call once they have a checked request: count, export, count
/// the outcome, log faults.
pub(crate) async fn export_request<S: Signal, E: Exporter<S>>(
    exporter: &E,
    request: S::Request,
    transport: Transport,
    metrics: &ReceiverMetrics,
) -> Result<ExportOutcome, ExportError> {
    let (signal, records) = (S::NAME, S::items(&request));
    ReceiverMetrics::records(&metrics.records_received, signal, transport, records);
    match exporter.export(request).await {
        Ok(outcome) => {
            // A misbehaving exporter must not make the counters go backwards or overflow.
            let rejected = u64::try_from(outcome.rejected).unwrap_or(0).min(records);
            metrics.request(signal, transport, Outcome::Ok);
            ReceiverMetrics::records(&metrics.records_accepted, signal, transport, records - rejected);
            ReceiverMetrics::records(&metrics.records_rejected, signal, transport, rejected);
            if rejected > 0 {
                tracing::debug!(
                    signal,
                    transport = transport.as_str(),
                    records,
                    rejected,
                    message = %outcome.error_message,
                    "otlp export partially accepted"
                );
            }
            Ok(outcome)
        }
        Err(error) => {
            metrics.request(signal, transport, error.outcome());
            ReceiverMetrics::records(&metrics.records_rejected, signal, transport, records);
            log_failure(signal, transport, records, &error);
            Err(error)
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A scriptable exporter and request builders for the receiver tests.

    use std::sync::Mutex;

    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, any_value},
        logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    };

    use super::*;

    /// Records what it was given and answers with `answer`.
    #[derive(Debug)]
    pub struct MockExporter {
        pub answer: Mutex<Result<ExportOutcome, ExportError>>,
        pub received: Mutex<Vec<ExportLogsServiceRequest>>,
    }

    impl MockExporter {
        pub fn answering(answer: Result<ExportOutcome, ExportError>) -> Arc<Self> {
            Arc::new(Self { answer: Mutex::new(answer), received: Mutex::new(Vec::new()) })
        }

        pub fn ok() -> Arc<Self> {
            Self::answering(Ok(ExportOutcome::ok()))
        }

        pub fn received(&self) -> Vec<ExportLogsServiceRequest> {
            self.received.lock().unwrap().clone()
        }
    }

    impl Exporter<Logs> for MockExporter {
        async fn export(&self, request: LogsRequest) -> Result<ExportOutcome, ExportError> {
            self.received.lock().unwrap().push(request.decode().expect("a walked request decodes"));
            self.answer.lock().unwrap().clone()
        }
    }

    /// A request with `n` records with string bodies and a trace id.
    pub fn request(n: usize) -> ExportLogsServiceRequest {
        let log_records = (0..n)
            .map(|i| LogRecord {
                time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                severity_text: "INFO".into(),
                body: Some(AnyValue { value: Some(any_value::Value::StringValue(format!("line {i}"))) }),
                trace_id: vec![0xab; 16],
                span_id: vec![0xcd; 8],
                ..Default::default()
            })
            .collect();
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
                ..Default::default()
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{test_support::*, *};

    #[test]
    fn counts_records_across_resources_and_scopes() {
        let mut req = request(3);
        req.resource_logs.push(request(2).resource_logs.remove(0));
        req.resource_logs[0].scope_logs.push(request(4).resource_logs[0].scope_logs[0].clone());
        assert_eq!(count_records(&req), 9);
        assert_eq!(count_records(&ExportLogsServiceRequest::default()), 0);
    }

    #[test]
    fn partial_success_only_when_something_to_say() {
        assert_eq!(Logs::response(ExportOutcome::ok()).partial_success, None);
        assert!(Logs::response(ExportOutcome::partial(0, "a warning")).partial_success.is_some());
        let resp = Logs::response(ExportOutcome::partial(2, "too old"));
        let partial = resp.partial_success.expect("partial success");
        assert_eq!(partial.rejected_log_records, 2);
        assert_eq!(partial.error_message, "too old");
    }

    #[tokio::test]
    async fn export_request_counts_outcomes() {
        let mut registry = Registry::default();
        let metrics = ReceiverMetrics::register(&mut registry);
        metrics.serve::<Logs>();

        let exporter = MockExporter::answering(Ok(ExportOutcome::partial(1, "bad record")));
        export_request::<Logs, _>(&*exporter, LogsRequest::encoded(&request(3)), Transport::Http, &metrics)
            .await
            .unwrap();
        assert_eq!(metrics.requests_count(Transport::Http, "ok"), 1);
        assert_eq!(metrics.records_count(Transport::Http, "received"), 3);
        assert_eq!(metrics.records_count(Transport::Http, "accepted"), 2);
        assert_eq!(metrics.records_count(Transport::Http, "rejected"), 1);

        let failing = MockExporter::answering(Err(ExportError::Internal("disk on fire".into())));
        let err = export_request::<Logs, _>(
            &*failing,
            LogsRequest::encoded(&request(5)),
            Transport::Grpc,
            &metrics,
        )
        .await
        .unwrap_err();
        assert_eq!(err, ExportError::Internal("disk on fire".into()));
        assert_eq!(metrics.requests_count(Transport::Grpc, "server_error"), 1);
        assert_eq!(metrics.records_count(Transport::Grpc, "rejected"), 5);
        assert_eq!(metrics.records_count(Transport::Grpc, "accepted"), 0);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"otlp_requests_total{signal="logs",transport="grpc",outcome="server_error"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"otlp_records_accepted_total{signal="logs",transport="http"} 2"#), "{text}");
    }
}
