//! The admin plane: gRPC `telemetry_lake.admin.v1.Admin` and HTTP `/flush`, `/stats`,
//! `/metrics`, `/healthz`, `/readyz`. Both call the same [`AdminHandler`], so the two
//! transports always agree.

use std::{future::Future, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use prometheus_client::registry::Registry;
use telemetry_lake_admin_proto::v1::{
    FlushRequest, FlushResponse, StatsRequest, StatsResponse,
    admin_server::{Admin, AdminServer},
};
use tonic::{Request, Status};

use crate::{health::Health, otlp::ExportError, refusals::Refusals};

/// What set off a flush; reported in `Stats.last_flush.trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushTrigger {
    Interval,
    MaxRecords,
    MaxBytes,
    Admin,
    Signal,
    Shutdown,
    Startup,
}

impl FlushTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::MaxRecords => "max_records",
            Self::MaxBytes => "max_bytes",
            Self::Admin => "admin",
            Self::Signal => "signal",
            Self::Shutdown => "shutdown",
            Self::Startup => "startup",
        }
    }
}

/// The service side of the admin plane.
pub trait AdminHandler: Send + Sync + 'static {
    /// Flushes everything buffered and answers once it is done.
    fn flush(&self, trigger: FlushTrigger)
    -> impl Future<Output = Result<FlushResponse, ExportError>> + Send;
    fn stats(&self) -> impl Future<Output = StatsResponse> + Send;
}

struct AdminGrpc<H> {
    handler: Arc<H>,
    refusals: Arc<Refusals>,
}

#[tonic::async_trait]
impl<H: AdminHandler> Admin for AdminGrpc<H> {
    async fn flush(&self, _: Request<FlushRequest>) -> Result<tonic::Response<FlushResponse>, Status> {
        match self.handler.flush(FlushTrigger::Admin).await {
            Ok(done) => Ok(tonic::Response::new(done)),
            Err(err) => Err(err.to_status()),
        }
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<tonic::Response<StatsResponse>, Status> {
        Ok(tonic::Response::new(stats(&*self.handler, &self.refusals).await))
    }
}

/// The service's stats plus what the shared listeners counted.
async fn stats<H: AdminHandler>(handler: &H, refusals: &Refusals) -> StatsResponse {
    let mut stats = handler.stats().await;
    stats.refusals = refusals.to_proto();
    stats
}

/// The gRPC Admin service for `handler`; `Stats` adds the listeners' `refusals`.
pub fn grpc_service<H: AdminHandler>(handler: Arc<H>, refusals: Arc<Refusals>) -> AdminServer<impl Admin> {
    AdminServer::new(AdminGrpc { handler, refusals })
}

struct HttpState<H> {
    handler: Arc<H>,
    refusals: Arc<Refusals>,
    registry: Arc<Registry>,
}

/// The admin HTTP router.
pub fn http_router<H: AdminHandler>(
    handler: Arc<H>,
    health: Health,
    registry: Arc<Registry>,
    refusals: Arc<Refusals>,
) -> Router {
    let state = Arc::new(HttpState { handler, refusals, registry });
    Router::new()
        .route("/flush", post(http_flush::<H>))
        .route("/stats", get(http_stats::<H>))
        .route("/metrics", get(http_metrics::<H>))
        .with_state(state)
        .merge(health.http_routes())
}

async fn http_flush<H: AdminHandler>(State(state): State<Arc<HttpState<H>>>) -> Response {
    match state.handler.flush(FlushTrigger::Admin).await {
        Ok(done) => Json(done).into_response(),
        Err(err) => {
            let mut response =
                (err.http_status(), Json(serde_json::json!({ "error": err.to_string() }))).into_response();
            if let Some(after) = err.retry_after() {
                response.headers_mut().insert(header::RETRY_AFTER, after.as_secs().max(1).into());
            }
            response
        }
    }
}

async fn http_stats<H: AdminHandler>(State(state): State<Arc<HttpState<H>>>) -> Json<StatsResponse> {
    Json(stats(&*state.handler, &state.refusals).await)
}

async fn http_metrics<H: AdminHandler>(State(state): State<Arc<HttpState<H>>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                .into_response()
        }
        Err(err) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics encoding failed: {err}\n")).into_response()
        }
    }
}
