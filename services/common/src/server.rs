//! Binds and serves a service's four ports until shutdown:
//!
//! ```text
//! otlp.grpc_endpoint   LogsService/Export + grpc.health.v1        --> LogsExporter::export
//! otlp.http_endpoint   POST /v1/logs                               --> LogsExporter::export
//! admin.grpc_endpoint  Admin (Flush, Stats) + health + reflection  --> AdminHandler
//! admin.http_endpoint  /flush /stats /metrics /healthz /readyz     --> AdminHandler
//! ```
//!
//! Every listener is bound before anything is served, so a taken port fails start-up with the
//! endpoint named. On shutdown health turns NOT_SERVING first, then the servers stop accepting
//! and finish the requests in flight (drain); the caller then does its final flush.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminHandler},
    health::{Health, Reason},
    otlp::{self, LogsExporter, ReceiverMetrics},
    settings::Settings,
};

/// What a service hands to [`serve`].
pub struct Service<E, A> {
    pub exporter: Arc<E>,
    pub admin: Arc<A>,
    pub health: Health,
    pub registry: Registry,
}

/// The addresses actually bound (useful when a config asks for port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub admin_grpc: SocketAddr,
    pub admin_http: SocketAddr,
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {key} = {addr}: is another process using it?"))
}

/// Serves until `shutdown` is cancelled, then drains. `on_bound` sees the bound addresses.
pub async fn serve<E: LogsExporter, A: AdminHandler>(
    config: &Settings,
    service: Service<E, A>,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(BoundAddrs),
) -> anyhow::Result<()> {
    let Service { exporter, admin, health, mut registry } = service;
    let receiver_metrics = ReceiverMetrics::register(&mut registry);
    let registry = Arc::new(registry);

    let otlp_grpc = bind(config.otlp.grpc_endpoint, "otlp.grpc_endpoint").await?;
    let otlp_http = bind(config.otlp.http_endpoint, "otlp.http_endpoint").await?;
    let admin_grpc = bind(config.admin.grpc_endpoint, "admin.grpc_endpoint").await?;
    let admin_http = bind(config.admin.http_endpoint, "admin.http_endpoint").await?;
    let bound = BoundAddrs {
        otlp_grpc: otlp_grpc.local_addr()?,
        otlp_http: otlp_http.local_addr()?,
        admin_grpc: admin_grpc.local_addr()?,
        admin_http: admin_http.local_addr()?,
    };
    tracing::info!(
        otlp_grpc = %bound.otlp_grpc, otlp_http = %bound.otlp_http,
        admin_grpc = %bound.admin_grpc, admin_http = %bound.admin_http,
        "listening"
    );
    on_bound(bound);
    health.report_started().await;

    // Servers stop on `stop`, which fires only after health has turned NOT_SERVING.
    let stop = CancellationToken::new();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(telemetry_lake_admin_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(telemetry_lake_admin_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let otlp_grpc_server = tonic::transport::Server::builder()
        .add_service(health.grpc_service())
        .add_service(otlp::grpc::logs_service(exporter.clone(), &config.otlp, receiver_metrics.clone()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(otlp_grpc), stop.clone().cancelled_owned());
    let admin_grpc_server = tonic::transport::Server::builder()
        .add_service(health.grpc_service())
        .add_service(admin::grpc_service(admin.clone()))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(admin_grpc), stop.clone().cancelled_owned());
    let otlp_http_server =
        axum::serve(otlp_http, otlp::http::router(exporter, &config.otlp, receiver_metrics))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
    let admin_http_server = axum::serve(admin_http, admin::http_router(admin, health.clone(), registry))
        .with_graceful_shutdown(stop.clone().cancelled_owned());

    let announce = {
        let health = health.clone();
        let stop = stop.clone();
        async move {
            shutdown.cancelled().await;
            health.add(Reason::ShuttingDown).await;
            stop.cancel();
        }
    };
    let (_, a, b, c, d) = tokio::join!(
        announce,
        tokio::spawn(otlp_grpc_server),
        tokio::spawn(admin_grpc_server),
        tokio::spawn(otlp_http_server.into_future()),
        tokio::spawn(admin_http_server.into_future()),
    );
    a?.context("otlp grpc server failed")?;
    b?.context("admin grpc server failed")?;
    c?.context("otlp http server failed")?;
    d?.context("admin http server failed")?;
    tracing::info!("servers stopped, requests drained");
    Ok(())
}
