//! Binds and serves a service's four ports until shutdown:
//!
//! ```text
//! otlp.grpc_endpoint   LogsService/Export + grpc.health.v1        --> LogsExporter::export
//! otlp.http_endpoint   POST /v1/logs                               --> LogsExporter::export
//! admin.grpc_endpoint  Admin (Flush, Stats) + health + reflection  --> AdminHandler
//! admin.http_endpoint  /flush /stats /metrics /healthz /readyz     --> AdminHandler
//! admin.health_endpoint  grpc.health.v1 + /healthz /readyz, plain text, no token (optional)
//! ```
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
    config::{AuthConfig, TlsConfig},
    health::{Health, Reason},
    listener::{self, Incoming},
    otlp::{self, LogsExporter, ReceiverMetrics},
    refusals::{Listener, Refusals},
    settings::Settings,
    tls::{Alpn, TlsPort, TlsReloader},
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
pub async fn serve<E: LogsExporter, A: AdminHandler>(
    config: &Settings,
    service: Service<E, A>,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(BoundAddrs),
) -> anyhow::Result<()> {
    let Service { exporter, admin, health, mut registry } = service;
    let receiver_metrics = ReceiverMetrics::register(&mut registry);
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
        .add_service(health.grpc_service())
        .add_service(otlp::grpc::logs_service(exporter.clone(), &config.otlp, receiver_metrics.clone()))
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
        otlp::http::router(exporter, &config.otlp, receiver_metrics)
            .layer(otlp_group.guard(Listener::OtlpHttp, &refusals)),
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
