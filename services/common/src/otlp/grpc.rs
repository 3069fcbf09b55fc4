//! The OTLP/gRPC receivers: `Export` of `opentelemetry.proto.collector.{logs,trace,metrics}.v1`
//! `LogsService`, `TraceService` and `MetricsService`, one [`OtlpGrpcServer`] per signal.
//!
//! In: unary `Export` calls, optionally gzip or zstd compressed. tonic unframes and decompresses
//! them with `max_decoding_message_size = otlp.max_recv_msg_size` (checked on the frame and again
//! after decompression, so an oversized or bomb request is refused without being buffered) and
//! hands over the message as the bytes it arrived as (`RawRequestCodec`); the export path checks
//! them ([`Signal::check`]) and the service decides how much of them to decode. Out: the
//! exporter's answer as the signal's `Export*ServiceResponse` (partial success only when
//! something was rejected), or its [`ExportError`] as a status with `RetryInfo` when retryable.
//!
//! tonic fails a request it cannot unframe before our handler runs, with codes the OTLP retry
//! table makes retryable (`OUT_OF_RANGE` for a frame over the limit) or that some SDKs retry
//! (`RESOURCE_EXHAUSTED` after decompression, `INTERNAL` for corrupt compression).
//! [`OtlpGrpcServer`] turns those into `INVALID_ARGUMENT`, so a client never retries a request
//! that can never succeed, and counts them as client errors. Malformed protobuf is found by the
//! export path and answered `INVALID_ARGUMENT` too.

use std::{
    convert::Infallible,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use tonic::{
    Code, Status,
    body::Body,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder},
    server::{Grpc, NamedService, UnaryService},
};
use tonic_prost::ProstEncoder;

use super::{ExportError, Exporter, ReceiverMetrics, Signal, Transport, check_request, export_request};
use crate::config::OtlpConfig;

/// The gRPC service of signal `S`, ready for `tonic::transport::Server::add_service`.
pub fn service<S: Signal, E: Exporter<S>>(
    exporter: Arc<E>,
    config: &OtlpConfig,
    metrics: Arc<ReceiverMetrics>,
) -> OtlpGrpcServer<S, E> {
    metrics.serve::<S>();
    OtlpGrpcServer { exporter, metrics, limit: config.max_recv_msg_size.as_u64(), signal: PhantomData }
}

/// `Export` of signal `S` with the request handed over as the protobuf bytes it arrived as
/// (tonic only unframes and decompresses them), so the exporter decides how much of it to
/// decode; plus the mapping of tonic's own failures to non-retryable `INVALID_ARGUMENT` (see the
/// module docs).
pub struct OtlpGrpcServer<S, E> {
    exporter: Arc<E>,
    metrics: Arc<ReceiverMetrics>,
    limit: u64,
    signal: PhantomData<fn() -> S>,
}

impl<S, E> Clone for OtlpGrpcServer<S, E> {
    fn clone(&self) -> Self {
        Self {
            exporter: Arc::clone(&self.exporter),
            metrics: Arc::clone(&self.metrics),
            limit: self.limit,
            signal: PhantomData,
        }
    }
}

impl<S: Signal, E> std::fmt::Debug for OtlpGrpcServer<S, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpGrpcServer")
            .field("signal", &S::NAME)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S: Signal, E> NamedService for OtlpGrpcServer<S, E> {
    const NAME: &'static str = S::GRPC_SERVICE;
}

type GrpcResponse = http::Response<Body>;

impl<S, E, B> tower::Service<http::Request<B>> for OtlpGrpcServer<S, E>
where
    S: Signal,
    E: Exporter<S>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send,
{
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != S::GRPC_EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let reached = Arc::new(AtomicBool::new(false));
        let handler = ExportHandler::<S, E> {
            exporter: Arc::clone(&self.exporter),
            metrics: Arc::clone(&self.metrics),
            reached: Arc::clone(&reached),
            signal: PhantomData,
        };
        let metrics = Arc::clone(&self.metrics);
        let limit = self.limit;
        Box::pin(async move {
            let mut grpc = Grpc::new(RawRequestCodec::<S::Response>(PhantomData))
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(usize::try_from(limit).unwrap_or(usize::MAX));
            let mut response = grpc.unary(handler, request).await;
            if !reached.load(Ordering::Relaxed) {
                map_decode_failure(&mut response, &metrics, S::NAME, limit);
            }
            Ok(response)
        })
    }
}

/// Runs one `Export` call on the bytes tonic unframed.
struct ExportHandler<S, E> {
    exporter: Arc<E>,
    metrics: Arc<ReceiverMetrics>,
    /// Set once the call got this far, so the server knows an earlier failure was tonic's.
    reached: Arc<AtomicBool>,
    signal: PhantomData<fn() -> S>,
}

impl<S: Signal, E: Exporter<S>> UnaryService<Bytes> for ExportHandler<S, E> {
    type Response = S::Response;
    type Future = tonic::codegen::BoxFuture<tonic::Response<Self::Response>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        self.reached.store(true, Ordering::Relaxed);
        let (exporter, metrics) = (Arc::clone(&self.exporter), Arc::clone(&self.metrics));
        Box::pin(async move {
            let request = match check_request::<S>(request.into_inner()).await {
                Ok(request) => request,
                Err(error) => {
                    metrics.undecodable(S::NAME, Transport::Grpc, &error);
                    return Err(error.to_status());
                }
            };
            export_request::<S, E>(&*exporter, request, Transport::Grpc, &metrics)
                .await
                .map(|outcome| tonic::Response::new(S::response(outcome)))
                .map_err(|e| e.to_status())
        })
    }
}

/// Requests pass through as bytes; answers (`R`) are encoded by prost.
struct RawRequestCodec<R>(PhantomData<fn() -> R>);

impl<R: prost::Message + Default + Send + 'static> Codec for RawRequestCodec<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = ProstEncoder<R>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// Takes the whole unframed, decompressed message without copying it.
#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Rewrites the trailers-only status of a request that failed before the handler ran.
fn map_decode_failure(
    response: &mut GrpcResponse,
    metrics: &ReceiverMetrics,
    signal: &'static str,
    limit: u64,
) {
    let headers = response.headers_mut();
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
    else {
        return;
    };
    if code == Code::Ok {
        return;
    }
    let message = headers
        .get("grpc-message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let error = match code {
        Code::OutOfRange | Code::ResourceExhausted => ExportError::PayloadTooLarge { limit },
        _ => ExportError::InvalidArgument(message),
    };
    if matches!(code, Code::OutOfRange | Code::ResourceExhausted | Code::Internal) {
        headers.insert("grpc-status", http::HeaderValue::from(error.grpc_code() as i32));
        // The details, if any, describe the old code; drop them rather than contradict it.
        headers.remove("grpc-status-details-bin");
    }
    metrics.undecodable(signal, Transport::Grpc, &error);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytesize::ByteSize;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use prometheus_client::registry::Registry;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::Channel;
    use tonic_types::StatusExt;

    use super::*;
    use crate::otlp::{ExportOutcome, Logs, test_support::*};

    async fn serve(
        exporter: Arc<MockExporter>,
        limit: ByteSize,
    ) -> (LogsServiceClient<Channel>, Arc<ReceiverMetrics>) {
        let metrics = ReceiverMetrics::register(&mut Registry::default());
        let config = OtlpConfig { max_recv_msg_size: limit, ..OtlpConfig::default() };
        let service = service::<Logs, _>(exporter, &config, Arc::clone(&metrics));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let client = LogsServiceClient::connect(format!("http://{addr}")).await.unwrap();
        (client, metrics)
    }

    #[tokio::test]
    async fn accepts_and_answers_without_partial_success() {
        let exporter = MockExporter::ok();
        let (mut client, metrics) = serve(Arc::clone(&exporter), ByteSize::mib(1)).await;
        let response = client.export(request(3)).await.unwrap().into_inner();
        assert_eq!(response.partial_success, None);
        assert_eq!(exporter.received(), vec![request(3)]);
        assert_eq!(metrics.requests_count(Transport::Grpc, "ok"), 1);
        assert_eq!(metrics.records_count(Transport::Grpc, "accepted"), 3);
    }

    #[tokio::test]
    async fn gzip_and_zstd_requests_are_accepted() {
        let exporter = MockExporter::ok();
        let (client, _) = serve(Arc::clone(&exporter), ByteSize::mib(1)).await;
        for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
            let mut client = client.clone().send_compressed(encoding);
            client.export(request(2)).await.unwrap();
        }
        assert_eq!(exporter.received().len(), 2);
    }

    #[tokio::test]
    async fn reports_partial_success() {
        let exporter = MockExporter::answering(Ok(ExportOutcome::partial(1, "one too old")));
        let (mut client, metrics) = serve(exporter, ByteSize::mib(1)).await;
        let response = client.export(request(3)).await.unwrap().into_inner();
        let partial = response.partial_success.expect("partial success");
        assert_eq!(partial.rejected_log_records, 1);
        assert_eq!(partial.error_message, "one too old");
        assert_eq!(metrics.records_count(Transport::Grpc, "rejected"), 1);
        assert_eq!(metrics.records_count(Transport::Grpc, "accepted"), 2);
    }

    #[tokio::test]
    async fn unavailable_carries_retry_info() {
        let exporter = MockExporter::answering(Err(ExportError::Unavailable {
            message: "kafka unreachable".into(),
            retry_after: Duration::from_secs(5),
        }));
        let (mut client, metrics) = serve(exporter, ByteSize::mib(1)).await;
        let status = client.export(request(2)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "kafka unreachable");
        let info = status.get_details_retry_info().expect("retry info");
        assert_eq!(info.retry_delay, Some(Duration::from_secs(5)));
        assert_eq!(metrics.requests_count(Transport::Grpc, "retryable"), 1);
        assert_eq!(metrics.records_count(Transport::Grpc, "rejected"), 2);
    }

    #[tokio::test]
    async fn oversized_request_is_a_non_retryable_client_error() {
        let exporter = MockExporter::ok();
        let (mut client, metrics) = serve(Arc::clone(&exporter), ByteSize::kib(64)).await;
        let status = client.export(request(5000)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.get_details_retry_info().is_none());
        assert!(exporter.received().is_empty());
        assert_eq!(metrics.requests_count(Transport::Grpc, "client_error"), 1);
    }

    #[tokio::test]
    async fn compressed_bomb_is_a_non_retryable_client_error() {
        let exporter = MockExporter::ok();
        let (client, metrics) = serve(Arc::clone(&exporter), ByteSize::mib(1)).await;
        let mut bomb = request(1);
        let body = vec!["0"; 8 << 20].concat();
        bomb.resource_logs[0].scope_logs[0].log_records[0].severity_text = body;
        let mut client = client.send_compressed(CompressionEncoding::Gzip);
        let status = client.export(bomb).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(exporter.received().is_empty());
        assert_eq!(metrics.requests_count(Transport::Grpc, "client_error"), 1);
    }

    #[tokio::test]
    async fn malformed_protobuf_is_invalid_argument() {
        use tower::ServiceExt;
        let exporter = MockExporter::ok();
        let metrics = ReceiverMetrics::register(&mut Registry::default());
        let service = service::<Logs, _>(Arc::clone(&exporter), &OtlpConfig::default(), Arc::clone(&metrics));
        // Field 1 (resource_logs) holding three bytes that are not a ResourceLogs.
        let message = [0x0a, 0x03, 0xff, 0xff, 0xff];
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let request =
            http::Request::post("http://localhost/opentelemetry.proto.collector.logs.v1.LogsService/Export")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(axum::body::Body::from(frame))
                .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let status = response.headers().get("grpc-status").expect("trailers-only status");
        assert_eq!(status, &(Code::InvalidArgument as i32).to_string());
        assert!(exporter.received().is_empty());
        assert_eq!(metrics.requests_count(Transport::Grpc, "client_error"), 1);
    }
}
