//! The one error type of the OTLP export path, and its two faces: a gRPC status and an HTTP
//! response.
//!
//! In: a failure from the receivers themselves (malformed body, too large, unsupported media
//! type) or from a service's [`LogsExporter`](super::LogsExporter) (not durable yet, overloaded,
//! broken). Out: the gRPC code and HTTP status the OTLP retry table prescribes
//! (<https://opentelemetry.io/docs/specs/otlp/#failures>), with `google.rpc.RetryInfo` /
//! `Retry-After` on the retryable ones so that clients back off instead of dropping data.
//!
//! | variant | gRPC | HTTP | retryable |
//! |---|---|---|---|
//! | `InvalidArgument` | `INVALID_ARGUMENT` | 400 | no |
//! | `PayloadTooLarge` | `INVALID_ARGUMENT` | 413 | no |
//! | `UnsupportedMediaType` | `INVALID_ARGUMENT` | 415 | no |
//! | `Unavailable` | `UNAVAILABLE` + `RetryInfo` | 503 + `Retry-After` | yes |
//! | `Overloaded` | `RESOURCE_EXHAUSTED` + `RetryInfo` | 429 + `Retry-After` | yes |
//! | `Internal` | `INTERNAL` | 500 | no |
//!
//! Too large maps to `INVALID_ARGUMENT` on gRPC rather than what tonic's own decode limit
//! says (`OUT_OF_RANGE`, which the OTLP table makes retryable, or `RESOURCE_EXHAUSTED` without
//! `RetryInfo`, which some SDKs retry anyway): resending the same oversized request can never
//! succeed.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tonic::Code;
use tonic_types::{ErrorDetail, RetryInfo, StatusExt};

/// Why an OTLP export was not (fully) accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// Malformed protobuf or JSON, non-hex ids: the client must fix the request.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The request, after decompression, is larger than `otlp.max_recv_msg_size`.
    #[error("request larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// A `Content-Type` or `Content-Encoding` the receiver does not take.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The records could not be made durable now (Kafka or the lake is down); retry later.
    #[error("unavailable: {message}")]
    Unavailable { message: String, retry_after: Duration },
    /// The service is saturated (staging full, queue full); retry later.
    #[error("overloaded: {message}")]
    Overloaded { message: String, retry_after: Duration },
    /// A fault of ours that retrying will not fix.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a request ended, as counted in `otlp_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    Ok,
    ClientError,
    ServerError,
    Retryable,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
            Self::Retryable => "retryable",
        }
    }
}

impl ExportError {
    /// The gRPC code of this error, per the OTLP retry table.
    pub fn grpc_code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) | Self::PayloadTooLarge { .. } | Self::UnsupportedMediaType(_) => {
                Code::InvalidArgument
            }
            Self::Unavailable { .. } => Code::Unavailable,
            Self::Overloaded { .. } => Code::ResourceExhausted,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status of this error, per the OTLP/HTTP failure rules.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How long the client should wait before retrying; `None` for non-retryable errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } | Self::Overloaded { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.retry_after().is_some()
    }

    /// Whether the client sent something we cannot take (as opposed to a fault on our side).
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            Self::InvalidArgument(_) | Self::PayloadTooLarge { .. } | Self::UnsupportedMediaType(_)
        )
    }

    /// The message put in the status, without the variant prefix of `Display`.
    pub fn message(&self) -> String {
        match self {
            Self::InvalidArgument(m) | Self::UnsupportedMediaType(m) | Self::Internal(m) => m.clone(),
            Self::PayloadTooLarge { limit } => {
                format!("request larger than the limit of {limit} bytes")
            }
            Self::Unavailable { message, .. } | Self::Overloaded { message, .. } => message.clone(),
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        if self.is_client_fault() {
            Outcome::ClientError
        } else if self.is_retryable() {
            Outcome::Retryable
        } else {
            Outcome::ServerError
        }
    }

    /// The gRPC status, with a `google.rpc.RetryInfo` detail when retryable.
    ///
    /// `details()` of the result always holds the encoded `google.rpc.Status`, which is also the
    /// protobuf body of an OTLP/HTTP error.
    pub fn to_status(&self) -> tonic::Status {
        let details = self.retry_after().map(|delay| ErrorDetail::RetryInfo(RetryInfo::new(Some(delay))));
        tonic::Status::with_error_details_vec(self.grpc_code(), self.message(), details)
    }

    /// The encoded `google.rpc.Status` (code, message, details) for an OTLP/HTTP error body.
    pub fn status_proto(&self) -> Bytes {
        Bytes::copy_from_slice(self.to_status().details())
    }

    /// The `google.rpc.Status` in the protobuf JSON mapping, for an OTLP/HTTP JSON error body.
    pub fn status_json(&self) -> serde_json::Value {
        let details: Vec<serde_json::Value> = self
            .retry_after()
            .map(|delay| {
                serde_json::json!({
                    "@type": RetryInfo::TYPE_URL,
                    "retryDelay": json_duration(delay),
                })
            })
            .into_iter()
            .collect();
        serde_json::json!({
            "code": self.grpc_code() as i32,
            "message": self.message(),
            "details": details,
        })
    }

    /// The `Retry-After` header value: whole seconds, rounded up, at least one.
    pub fn retry_after_header(&self) -> Option<String> {
        self.retry_after().map(|delay| {
            let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            secs.max(1).to_string()
        })
    }
}

/// A `google.protobuf.Duration` in its JSON form: seconds with 0 or 9 fractional digits.
fn json_duration(delay: Duration) -> String {
    match delay.subsec_nanos() {
        0 => format!("{}s", delay.as_secs()),
        nanos => format!("{}.{nanos:09}s", delay.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn unavailable() -> ExportError {
        ExportError::Unavailable { message: "kafka is down".into(), retry_after: Duration::from_millis(2500) }
    }

    #[test]
    fn codes_follow_the_otlp_retry_table() {
        let cases = [
            (ExportError::InvalidArgument("x".into()), Code::InvalidArgument, 400, false),
            (ExportError::PayloadTooLarge { limit: 1 }, Code::InvalidArgument, 413, false),
            (ExportError::UnsupportedMediaType("x".into()), Code::InvalidArgument, 415, false),
            (unavailable(), Code::Unavailable, 503, true),
            (
                ExportError::Overloaded { message: "full".into(), retry_after: Duration::from_secs(1) },
                Code::ResourceExhausted,
                429,
                true,
            ),
            (ExportError::Internal("x".into()), Code::Internal, 500, false),
        ];
        for (err, code, status, retryable) in cases {
            assert_eq!(err.grpc_code(), code, "{err}");
            assert_eq!(err.http_status().as_u16(), status, "{err}");
            assert_eq!(err.is_retryable(), retryable, "{err}");
            assert_eq!(err.retry_after_header().is_some(), retryable, "{err}");
        }
    }

    #[test]
    fn retryable_status_carries_retry_info() {
        let status = unavailable().to_status();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "kafka is down");
        let info = status.get_details_retry_info().expect("retry info");
        assert_eq!(info.retry_delay, Some(Duration::from_millis(2500)));

        let body = tonic_types::pb::Status::decode(unavailable().status_proto()).unwrap();
        assert_eq!(body.code, Code::Unavailable as i32);
        assert_eq!(body.details.len(), 1);
        assert_eq!(body.details[0].type_url, RetryInfo::TYPE_URL);
    }

    #[test]
    fn non_retryable_status_has_no_retry_info() {
        let status = ExportError::InvalidArgument("bad".into()).to_status();
        assert!(status.get_details_retry_info().is_none());
        let body = tonic_types::pb::Status::decode(status.details()).unwrap();
        assert_eq!(body.code, Code::InvalidArgument as i32);
        assert_eq!(body.message, "bad");
        assert!(body.details.is_empty());
    }

    #[test]
    fn retry_after_rounds_up_and_json_uses_proto_duration() {
        assert_eq!(unavailable().retry_after_header().as_deref(), Some("3"));
        let zero = ExportError::Overloaded { message: "x".into(), retry_after: Duration::ZERO };
        assert_eq!(zero.retry_after_header().as_deref(), Some("1"));
        let json = unavailable().status_json();
        assert_eq!(json["code"], 14);
        assert_eq!(json["details"][0]["retryDelay"], "2.500000000s");
        assert_eq!(json["details"][0]["@type"], "type.googleapis.com/google.rpc.RetryInfo");
    }
}
