//! The three OTLP signals, and everything the receivers need to know that differs between them.
//!
//! In: the protobuf bytes of an export request. Out: what the service's exporter gets,
//! [`Signal::Request`]: for logs the walked bytes ([`LogsRequest`], decoded only where a
//! service must), for traces and metrics the bytes with the request prost decoded from them
//! ([`Decoded`]). A request prost would not decode is `InvalidArgument` with prost's reason,
//! for every signal.
//!
//! Items are what OTLP partial success counts: log records, spans, metric data points (every
//! point of every gauge, sum, histogram, exponential histogram and summary).

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse},
    },
    metrics::v1::{Metric, metric::Data},
};
use prost::Message;

use super::{
    ExportError, ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
    ExportOutcome, LogsRequest,
};

/// The three signals as values, for what is configured or counted per signal (`[signals]`,
/// topics, counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignalKind {
    Logs,
    Traces,
    Metrics,
}

impl SignalKind {
    pub const ALL: [Self; 3] = [Self::Logs, Self::Traces, Self::Metrics];

    /// `logs`, `traces` or `metrics`: the `[signals]` key and the `signal` label of metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Logs => "logs",
            Self::Traces => "traces",
            Self::Metrics => "metrics",
        }
    }
}

/// One OTLP signal: its endpoints, its messages and how a request is checked and counted.
pub trait Signal: Send + Sync + 'static {
    const KIND: SignalKind;
    /// [`SignalKind::name`] of [`Signal::KIND`].
    const NAME: &'static str = Self::KIND.name();
    /// What the signal's items are called in messages: `log records`, `spans`, `data points`.
    const ITEMS: &'static str;
    /// The gRPC service (`opentelemetry.proto.collector.logs.v1.LogsService`).
    const GRPC_SERVICE: &'static str;
    /// The path of its one method, `Export`.
    const GRPC_EXPORT_PATH: &'static str;
    /// The OTLP/HTTP path (`/v1/logs`).
    const HTTP_PATH: &'static str;
    /// The OTLP/JSON name of the partial-success count (`rejectedLogRecords`).
    const REJECTED_JSON: &'static str;

    /// The export request as prost structs; OTLP/JSON bodies are read into it.
    type Message: Message + Default + serde::de::DeserializeOwned + Send + 'static;
    /// The export response.
    type Response: Message + Default + Send + 'static;
    /// A checked request, as the exporter gets it.
    type Request: Send + 'static;

    /// Checks `bytes` as an export request; `InvalidArgument` with prost's reason when prost
    /// would not decode them.
    fn check(bytes: Bytes) -> Result<Self::Request, ExportError>;
    /// The checked request `message` encodes to (OTLP/JSON bodies, tests).
    fn encoded(message: &Self::Message) -> Self::Request;
    /// Items in a checked request.
    fn items(request: &Self::Request) -> u64;
    /// The response that tells the client `outcome`.
    fn response(outcome: ExportOutcome) -> Self::Response;
}

/// `LogsService`, `/v1/logs`.
#[derive(Debug, Clone, Copy)]
pub struct Logs;

/// `TraceService`, `/v1/traces`.
#[derive(Debug, Clone, Copy)]
pub struct Traces;

/// `MetricsService`, `/v1/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct Metrics;

impl Signal for Logs {
    const KIND: SignalKind = SignalKind::Logs;
    const ITEMS: &'static str = "log records";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const GRPC_EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const HTTP_PATH: &'static str = "/v1/logs";
    const REJECTED_JSON: &'static str = "rejectedLogRecords";
    type Message = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    type Request = LogsRequest;

    fn check(bytes: Bytes) -> Result<LogsRequest, ExportError> {
        LogsRequest::walked(bytes)
    }

    fn encoded(message: &ExportLogsServiceRequest) -> LogsRequest {
        LogsRequest::encoded(message)
    }

    fn items(request: &LogsRequest) -> u64 {
        request.records()
    }

    fn response(outcome: ExportOutcome) -> ExportLogsServiceResponse {
        ExportLogsServiceResponse {
            partial_success: outcome.to_report().map(|(rejected, message)| ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: message,
            }),
        }
    }
}

impl Signal for Traces {
    const KIND: SignalKind = SignalKind::Traces;
    const ITEMS: &'static str = "spans";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const GRPC_EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const HTTP_PATH: &'static str = "/v1/traces";
    const REJECTED_JSON: &'static str = "rejectedSpans";
    type Message = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    type Request = Decoded<ExportTraceServiceRequest>;

    fn check(bytes: Bytes) -> Result<Self::Request, ExportError> {
        Decoded::check(bytes, count_spans)
    }

    fn encoded(message: &ExportTraceServiceRequest) -> Self::Request {
        Decoded::encoded(message, count_spans)
    }

    fn items(request: &Self::Request) -> u64 {
        request.items
    }

    fn response(outcome: ExportOutcome) -> ExportTraceServiceResponse {
        ExportTraceServiceResponse {
            partial_success: outcome.to_report().map(|(rejected, message)| ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: message,
            }),
        }
    }
}

impl Signal for Metrics {
    const KIND: SignalKind = SignalKind::Metrics;
    const ITEMS: &'static str = "data points";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const GRPC_EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    const HTTP_PATH: &'static str = "/v1/metrics";
    const REJECTED_JSON: &'static str = "rejectedDataPoints";
    type Message = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    type Request = Decoded<ExportMetricsServiceRequest>;

    fn check(bytes: Bytes) -> Result<Self::Request, ExportError> {
        Decoded::check(bytes, count_data_points)
    }

    fn encoded(message: &ExportMetricsServiceRequest) -> Self::Request {
        Decoded::encoded(message, count_data_points)
    }

    fn items(request: &Self::Request) -> u64 {
        request.items
    }

    fn response(outcome: ExportOutcome) -> ExportMetricsServiceResponse {
        ExportMetricsServiceResponse {
            partial_success: outcome.to_report().map(|(rejected, message)| ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message: message,
            }),
        }
    }
}

/// A request prost decoded, with the bytes it came as and its item count.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<M> {
    bytes: Bytes,
    message: M,
    items: u64,
}

impl<M: Message + Default> Decoded<M> {
    fn check(bytes: Bytes, count: fn(&M) -> u64) -> Result<Self, ExportError> {
        let message = M::decode(bytes.as_ref())
            .map_err(|e| ExportError::InvalidArgument(format!("malformed protobuf: {e}")))?;
        let items = count(&message);
        Ok(Self { bytes, message, items })
    }

    fn encoded(message: &M, count: fn(&M) -> u64) -> Self {
        Self::check(message.encode_to_vec().into(), count).expect("prost's own encoding decodes")
    }

    /// The protobuf bytes, as received.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The decoded request.
    pub fn message(&self) -> &M {
        &self.message
    }

    /// The decoded request, taken.
    pub fn into_message(self) -> M {
        self.message
    }

    /// Items (spans, data points) in the request.
    pub fn items(&self) -> u64 {
        self.items
    }
}

/// Spans in a traces request.
pub fn count_spans(request: &ExportTraceServiceRequest) -> u64 {
    request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum()
}

/// Data points in a metrics request.
pub fn count_data_points(request: &ExportMetricsServiceRequest) -> u64 {
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(data_points)
        .sum()
}

/// Data points of one metric, whatever its type.
pub fn data_points(metric: &Metric) -> u64 {
    let points = match &metric.data {
        None => 0,
        Some(Data::Gauge(gauge)) => gauge.data_points.len(),
        Some(Data::Sum(sum)) => sum.data_points.len(),
        Some(Data::Histogram(histogram)) => histogram.data_points.len(),
        Some(Data::ExponentialHistogram(histogram)) => histogram.data_points.len(),
        Some(Data::Summary(summary)) => summary.data_points.len(),
    };
    points as u64
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        metrics::v1::{Gauge, Histogram, HistogramDataPoint, NumberDataPoint, ResourceMetrics, ScopeMetrics},
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };

    use super::*;

    #[test]
    fn counts_spans_and_data_points() {
        let spans = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![
                    ScopeSpans { spans: vec![Span::default(); 2], ..Default::default() },
                    ScopeSpans { spans: vec![Span::default()], ..Default::default() },
                ],
                ..Default::default()
            }],
        };
        assert_eq!(Traces::items(&Traces::encoded(&spans)), 3);
        let metric = |data| Metric { name: "m".into(), data: Some(data), ..Default::default() };
        let metrics = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        metric(Data::Gauge(Gauge { data_points: vec![NumberDataPoint::default(); 4] })),
                        metric(Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint::default(); 2],
                            aggregation_temporality: 1,
                        })),
                        Metric { name: "no data".into(), ..Default::default() },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(Metrics::items(&Metrics::encoded(&metrics)), 6);
    }

    #[test]
    fn malformed_protobuf_is_invalid_argument_for_every_signal() {
        let bytes = Bytes::from_static(&[0x0a, 0x03, 0xff, 0xff, 0xff]);
        for error in [
            Logs::check(bytes.clone()).err(),
            Traces::check(bytes.clone()).err(),
            Metrics::check(bytes.clone()).err(),
        ] {
            match error {
                Some(ExportError::InvalidArgument(message)) => {
                    assert!(message.starts_with("malformed protobuf"), "{message}")
                }
                other => panic!("expected InvalidArgument, got {other:?}"),
            }
        }
    }

    #[test]
    fn partial_success_counts_the_signal_s_items() {
        let partial = Traces::response(ExportOutcome::partial(2, "bad ids")).partial_success.unwrap();
        assert_eq!((partial.rejected_spans, partial.error_message.as_str()), (2, "bad ids"));
        let partial = Metrics::response(ExportOutcome::partial(3, "")).partial_success.unwrap();
        assert_eq!(partial.rejected_data_points, 3);
        assert_eq!(Metrics::response(ExportOutcome::ok()).partial_success, None);
    }
}
