//! Binds and serves a service's four ports until shutdown:
//!
//! ```text
//! otlp.grpc_endpoint   {Logs,Trace,Metrics}Service/Export + health  --> Exporter<S>::export
//! otlp.http_endpoint   POST /v1/logs /v1/traces /v1/metrics        --> Exporter<S>::export
//! admin.grpc_endpoint  Admin (Flush, Stats) + health + reflection  --> AdminHandler
//! admin.http_endpoint  /flush /stats /metrics /healthz /readyz     --> AdminHandler
//! admin.health_endpoint  grpc.health.v1 + /healthz /readyz, plain text, no token (optional)
//! ```
//!
//! Which signals are served is [`Receivers`]: those the service has an exporter for and
//! `[signals]` leaves on. Any other signal is answered `UNIMPLEMENTED` (gRPC) or 404 (HTTP).
//!
//! Security, each group apart: `otlp.tls` / `admin.tls` put TLS on the group's two ports
//! (`crate::tls`, connections checked in `crate::listener`), `otlp.auth` / `admin.auth` require a
//! bearer token on every request of its two ports, health and reflection included
//! (`crate::auth`, a tower layer in front of the services). Refusals are counted in
//! `crate::refusals`: `Stats.refusals` and `listener_refusals_total`.
//!
//! TLS files and tokens are loaded, then every listener is bound, before anything is served, so
//! a broken certificate or a taken port fails start-up with the key named. On shutdown health
//! turns NOT_SERVING first, then the servers stop accepting and finish the requests in flight
//! (drain); the caller then does its final flush.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminHandler},
    auth::{Guard, RequireTokenLayer, Tokens},
    config::{AuthConfig, OtlpConfig, SignalsConfig, TlsConfig},
    health::{Health, Reason},
    listener::{self, Incoming},
    otlp::{self, Exporter, ReceiverMetrics, Signal},
    refusals::{Listener, Refusals},
    settings::Settings,
    tls::{Alpn, TlsPort, TlsReloader},
};

/// What a service hands to [`serve`].
pub struct Service<A> {
    pub receivers: Receivers,
    pub admin: Arc<A>,
    pub health: Health,
    pub registry: Registry,
}

/// The OTLP receivers of a service: for each signal it serves, the gRPC service and the HTTP
/// route, sharing one [`ReceiverMetrics`].
pub struct Receivers {
    grpc: tonic::service::Routes,
    http: axum::Router,
    metrics: Arc<ReceiverMetrics>,
    otlp: OtlpConfig,
    signals: SignalsConfig,
    served: Vec<&'static str>,
}

impl Receivers {
    /// No signal served yet; the counters go to `registry`.
    pub fn new(config: &Settings, registry: &mut Registry) -> Self {
        Self {
            grpc: tonic::service::Routes::default(),
            http: axum::Router::new(),
            metrics: ReceiverMetrics::register(registry),
            otlp: config.otlp.clone(),
            signals: config.signals,
            served: Vec::new(),
        }
    }

    /// Serves signal `S` with `exporter`, unless `[signals]` switched it off.
    pub fn serve<S: Signal, E: Exporter<S>>(mut self, exporter: Arc<E>) -> Self {
        if !self.signals.serves(S::KIND) {
            return self;
        }
        let metrics = Arc::clone(&self.metrics);
        self.grpc =
            self.grpc.add_service(otlp::grpc::service::<S, E>(exporter.clone(), &self.otlp, metrics.clone()));
        self.http = self.http.merge(otlp::http::router::<S, E>(exporter, &self.otlp, metrics));
        self.served.push(S::NAME);
        self
    }

    /// The signals served, in the order they were added.
    pub fn served(&self) -> &[&'static str] {
        &self.served
    }
}

/// The addresses actually bound (useful when a config asks for port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub admin_grpc: SocketAddr,
    pub admin_http: SocketAddr,
    /// `admin.health_endpoint`, when set.
    pub health: Option<SocketAddr>,
}

/// TLS and tokens of one listener group (OTLP or admin), loaded at start-up.
struct Group {
    tls: Option<Arc<TlsReloader>>,
    tokens: Option<Arc<Tokens>>,
}

impl Group {
    fn load(name: &'static str, tls: &Option<TlsConfig>, auth: &Option<AuthConfig>) -> anyhow::Result<Self> {
        let (tls_key, auth_key) = match name {
            "otlp" => ("otlp.tls", "otlp.auth"),
            _ => ("admin.tls", "admin.auth"),
        };
        let tls = tls.as_ref().map(|tls| TlsReloader::load(tls_key, tls.clone())).transpose()?.map(Arc::new);
        let tokens = auth.as_ref().map(|auth| Tokens::load(auth_key, auth)).transpose()?.map(Arc::new);
        Ok(Self { tls, tokens })
    }

    /// The group's TLS as one of its ports offers it.
    fn tls(&self, alpn: Alpn) -> Option<TlsPort> {
        self.tls.as_ref().map(|reloader| TlsPort { reloader: Arc::clone(reloader), alpn })
    }

    fn guard(&self, listener: Listener, refusals: &Arc<Refusals>) -> RequireTokenLayer {
        RequireTokenLayer::new(self.tokens.as_ref().map(|tokens| Guard {
            tokens: Arc::clone(tokens),
            refusals: Arc::clone(refusals),
            listener,
        }))
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {key} = {addr}: is another process using it?"))
}

/// Serves until `shutdown` is cancelled, then drains. `on_bound` sees the bound addresses.
pub async fn serve<A: AdminHandler>(
    config: &Settings,
    service: Service<A>,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(BoundAddrs),
) -> anyhow::Result<()> {
    let Service { receivers, admin, health, mut registry } = service;
    let refusals = Refusals::register(&mut registry);
    let registry = Arc::new(registry);
    let otlp_group = Group::load("otlp", &config.otlp.tls, &config.otlp.auth)?;
    let admin_group = Group::load("admin", &config.admin.tls, &config.admin.auth)?;

    let otlp_grpc = bind(config.otlp.grpc_endpoint, "otlp.grpc_endpoint").await?;
    let otlp_http = bind(config.otlp.http_endpoint, "otlp.http_endpoint").await?;
    let admin_grpc = bind(config.admin.grpc_endpoint, "admin.grpc_endpoint").await?;
    let admin_http = bind(config.admin.http_endpoint, "admin.http_endpoint").await?;
    let probe = match config.admin.health_endpoint {
        Some(addr) => Some(bind(addr, "admin.health_endpoint").await?),
        None => None,
    };
    let bound = BoundAddrs {
        otlp_grpc: otlp_grpc.local_addr()?,
        otlp_http: otlp_http.local_addr()?,
        admin_grpc: admin_grpc.local_addr()?,
        admin_http: admin_http.local_addr()?,
        health: probe.as_ref().map(TcpListener::local_addr).transpose()?,
    };
    tracing::info!(
        otlp_grpc = %bound.otlp_grpc, otlp_http = %bound.otlp_http,
        admin_grpc = %bound.admin_grpc, admin_http = %bound.admin_http,
        health = ?bound.health,
        otlp_tls = config.otlp.tls.is_some(), otlp_auth = config.otlp.auth.is_some(),
        admin_tls = config.admin.tls.is_some(), admin_auth = config.admin.auth.is_some(),
        signals = ?receivers.served(),
        "listening"
    );
    on_bound(bound);
    health.report_started().await;

    // Servers stop on `stop`, which fires only after health has turned NOT_SERVING.
    let stop = CancellationToken::new();
    let incoming = |tcp: TcpListener, listener: Listener, tls: Option<TlsPort>| -> anyhow::Result<Incoming> {
        Ok(listener::accept(tcp, listener, tls, Arc::clone(&refusals), stop.clone())?)
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(telemetry_lake_admin_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(telemetry_lake_admin_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let otlp_grpc_server = tonic::transport::Server::builder()
        .layer(otlp_group.guard(Listener::OtlpGrpc, &refusals))
        .add_routes(receivers.grpc)
        .add_service(health.grpc_service())
        .serve_with_incoming_shutdown(
            incoming(otlp_grpc, Listener::OtlpGrpc, otlp_group.tls(Alpn::Grpc))?,
            stop.clone().cancelled_owned(),
        );
    let admin_grpc_server = tonic::transport::Server::builder()
        .layer(admin_group.guard(Listener::AdminGrpc, &refusals))
        .add_service(health.grpc_service())
        .add_service(admin::grpc_service(admin.clone(), Arc::clone(&refusals)))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            incoming(admin_grpc, Listener::AdminGrpc, admin_group.tls(Alpn::Grpc))?,
            stop.clone().cancelled_owned(),
        );
    let otlp_http_server = axum::serve(
        incoming(otlp_http, Listener::OtlpHttp, otlp_group.tls(Alpn::Http))?,
        receivers.http.layer(otlp_group.guard(Listener::OtlpHttp, &refusals)),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let admin_http_server = axum::serve(
        incoming(admin_http, Listener::AdminHttp, admin_group.tls(Alpn::Http))?,
        admin::http_router(admin, health.clone(), registry, Arc::clone(&refusals))
            .layer(admin_group.guard(Listener::AdminHttp, &refusals)),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let probe_server = match probe {
        Some(probe) => Some(
            axum::serve(incoming(probe, Listener::Health, None)?, health.probe_router())
                .with_graceful_shutdown(stop.clone().cancelled_owned()),
        ),
        None => None,
    };

    let announce = {
        let health = health.clone();
        let stop = stop.clone();
        async move {
            shutdown.cancelled().await;
            health.add(Reason::ShuttingDown).await;
            stop.cancel();
        }
    };
    let probe_server = async move {
        match probe_server {
            Some(server) => server.await,
            None => Ok(()),
        }
    };
    let (_, a, b, c, d, e) = tokio::join!(
        announce,
        tokio::spawn(otlp_grpc_server),
        tokio::spawn(admin_grpc_server),
        tokio::spawn(otlp_http_server.into_future()),
        tokio::spawn(admin_http_server.into_future()),
        tokio::spawn(probe_server),
    );
    a?.context("otlp grpc server failed")?;
    b?.context("admin grpc server failed")?;
    c?.context("otlp http server failed")?;
    d?.context("admin http server failed")?;
    e?.context("health probe server failed")?;
    tracing::info!("servers stopped, requests drained");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use tower::ServiceExt;

    use super::*;
    use crate::{
        config::Config,
        otlp::{ExportError, ExportOutcome, Logs, Traces, test_support::MockExporter},
    };

    /// Takes traces, answering that one span was rejected.
    #[derive(Default)]
    struct TracesExporter {
        items: Mutex<Vec<u64>>,
    }

    impl Exporter<Traces> for TracesExporter {
        async fn export(&self, request: <Traces as Signal>::Request) -> Result<ExportOutcome, ExportError> {
            self.items.lock().unwrap().push(request.items());
            Ok(ExportOutcome::partial(1, "one span refused"))
        }
    }

    fn receivers(signals: SignalsConfig) -> (Receivers, Arc<TracesExporter>) {
        let settings = Settings::from_config(Config { signals, ..Config::default() }).unwrap();
        let traces = Arc::new(TracesExporter::default());
        let receivers = Receivers::new(&settings, &mut Registry::default())
            .serve::<Logs, _>(MockExporter::ok())
            .serve::<Traces, _>(traces.clone());
        (receivers, traces)
    }

    const SPANS_JSON: &str = r#"{"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "a"},
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b175", "name": "b"}]}]}]}"#;

    async fn post(router: &axum::Router, path: &str, body: &'static str) -> (StatusCode, serde_json::Value) {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    /// The grpc-status of a trailers-only answer to an `Export` call of `service`.
    async fn grpc_status(routes: tonic::service::Routes, service: &str) -> Option<String> {
        let frame = [0u8, 0, 0, 0, 0];
        let request = Request::post(format!("http://localhost/{service}/Export"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(axum::body::Body::from(frame.to_vec()))
            .unwrap();
        let response = routes.into_axum_router().oneshot(request).await.unwrap();
        if let Some(status) = response.headers().get("grpc-status") {
            return Some(status.to_str().unwrap().to_owned());
        }
        let trailers = response.into_body().collect().await.unwrap().trailers().cloned();
        trailers.and_then(|t| t.get("grpc-status").map(|v| v.to_str().unwrap().to_owned()))
    }

    #[tokio::test]
    async fn traces_are_served_with_the_signal_s_own_partial_success() {
        let (receivers, traces) = receivers(SignalsConfig::default());
        assert_eq!(receivers.served(), ["logs", "traces"]);
        let (status, body) = post(&receivers.http, "/v1/traces", SPANS_JSON).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            serde_json::json!({"partialSuccess": {"rejectedSpans": "1", "errorMessage": "one span refused"}})
        );
        assert_eq!(*traces.items.lock().unwrap(), [2]);

        // The empty request (an empty message) over gRPC.
        assert!(ExportTraceServiceRequest::default().encode_to_vec().is_empty());
        let status = grpc_status(receivers.grpc, "opentelemetry.proto.collector.trace.v1.TraceService").await;
        assert_eq!(status.as_deref(), Some("0"));
        assert_eq!(*traces.items.lock().unwrap(), [2, 0]);
    }

    #[tokio::test]
    async fn a_switched_off_signal_is_unimplemented_and_not_found() {
        let (receivers, traces) = receivers(SignalsConfig { traces: false, ..SignalsConfig::default() });
        assert_eq!(receivers.served(), ["logs"]);
        let (status, _) = post(&receivers.http, "/v1/traces", SPANS_JSON).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = post(&receivers.http, "/v1/metrics", SPANS_JSON).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no exporter for metrics: not served");
        let (status, _) = post(&receivers.http, "/v1/logs", "{}").await;
        assert_eq!(status, StatusCode::OK);
        let status = grpc_status(receivers.grpc, "opentelemetry.proto.collector.trace.v1.TraceService").await;
        assert_eq!(status.as_deref(), Some("12"), "UNIMPLEMENTED");
        assert!(traces.items.lock().unwrap().is_empty());
    }
}
