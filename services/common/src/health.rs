//! Whether a service can take traffic, reported through `grpc.health.v1` on every gRPC port and
//! `GET /readyz` (admin HTTP port, and the probe port `admin.health_endpoint` when set).
//!
//! Health is a set of named reasons not to serve ([`Reason`]): the service is SERVING exactly
//! when the set is empty. Each writer adds and removes only its own reason (the committer
//! "flush failing", staging "staging full", the ingester's watcher "kafka unreachable",
//! shutdown "shutting down"), so no writer can undo another's: a successful flush during
//! shutdown leaves the service NOT_SERVING. Every change is reported to the gRPC health service
//! under one lock, in the order the changes were made.
//!
//! Readiness and liveness differ: "" and the service names follow the reasons, while
//! [`LIVENESS_SERVICE`] stays SERVING as long as the process answers at all, so a liveness
//! probe never restarts a pod for an outage that a restart cannot fix.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

/// Service names reported besides "" (the whole server).
const SERVICES: [&str; 2] =
    ["opentelemetry.proto.collector.logs.v1.LogsService", "telemetry_lake.admin.v1.Admin"];

/// Health service name for liveness probes: SERVING from start-up until the process exits,
/// graceful drain included (`grpc: {port: 4320, service: telemetry_lake.liveness}`).
pub const LIVENESS_SERVICE: &str = "telemetry_lake.liveness";

/// Why a service does not take traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The process is stopping; never removed.
    ShuttingDown,
    /// The ingester has not reached Kafka yet, or lost it.
    KafkaUnreachable,
    /// The appender's staging refused records for lack of room.
    StagingFull,
    /// The appender's commits to the catalog or storage fail.
    FlushFailing,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ShuttingDown => "shutting down",
            Reason::KafkaUnreachable => "kafka unreachable",
            Reason::StagingFull => "staging full",
            Reason::FlushFailing => "flush failing",
        }
    }
}

#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    reasons: Arc<tokio::sync::Mutex<BTreeSet<Reason>>>,
    serving: Arc<AtomicBool>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            reporter: HealthReporter::new(),
            reasons: Arc::default(),
            serving: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Health {
    /// A `grpc.health.v1.Health` service reading this state; one per gRPC port.
    pub fn grpc_service(&self) -> tonic_health::pb::health_server::HealthServer<HealthService> {
        tonic_health::pb::health_server::HealthServer::new(HealthService::from_health_reporter(
            self.reporter.clone(),
        ))
    }

    /// `GET /healthz` (200 while the process answers) and `GET /readyz` (200 when SERVING, else
    /// 503), for the admin HTTP port and the probe port.
    pub fn http_routes(&self) -> axum::Router {
        let health = self.clone();
        axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" })).route(
            "/readyz",
            axum::routing::get(move || {
                let serving = health.is_serving();
                async move {
                    if serving {
                        (http::StatusCode::OK, "ready\n")
                    } else {
                        (http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
    }

    /// The router of `admin.health_endpoint`: [`Self::http_routes`] and `grpc.health.v1`, nothing
    /// else, for probes that speak plain text and send no token.
    pub fn probe_router(&self) -> axum::Router {
        // Not tonic's `Routes`: its fallback answers every other path with HTTP 200 (gRPC
        // UNIMPLEMENTED), so `GET /stats` would look served.
        use tonic::server::NamedService;
        let service = self.grpc_service();
        let path = format!("/{}/{{*method}}", <HealthServer<HealthService> as NamedService>::NAME);
        self.http_routes().route_service(&path, service)
    }

    /// Reports [`LIVENESS_SERVICE`] SERVING and every other name as it stands; called once the
    /// ports are bound, so every name answers from the start.
    pub async fn report_started(&self) {
        self.reporter.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
        let reasons = self.reasons.lock().await;
        self.report(reasons.is_empty()).await;
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// The reasons not to serve now, for `Stats`.
    pub async fn reasons(&self) -> Vec<&'static str> {
        self.reasons.lock().await.iter().map(|r| r.as_str()).collect()
    }

    /// Adds `reason`: NOT_SERVING until every reason is removed.
    pub async fn add(&self, reason: Reason) {
        self.change(reason, true).await;
    }

    /// Removes `reason` (only its writer calls this); SERVING again if it was the last one.
    pub async fn remove(&self, reason: Reason) {
        self.change(reason, false).await;
    }

    async fn change(&self, reason: Reason, add: bool) {
        let mut reasons = self.reasons.lock().await;
        let changed = if add { reasons.insert(reason) } else { reasons.remove(&reason) };
        if !changed {
            return;
        }
        let serving = reasons.is_empty();
        let was = self.serving.swap(serving, Ordering::Relaxed);
        if add {
            tracing::warn!(reason = reason.as_str(), "health: not serving");
        } else if serving && !was {
            tracing::info!(reason = reason.as_str(), "health: serving again");
        }
        self.report(serving).await;
    }

    async fn report(&self, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in std::iter::once("").chain(SERVICES) {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn the_probe_router_serves_health_and_nothing_else() {
        let health = Health::default();
        health.report_started().await;
        let get = |path: &str| http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let router = health.probe_router();
        assert_eq!(router.clone().oneshot(get("/healthz")).await.unwrap().status(), http::StatusCode::OK);
        assert_eq!(router.clone().oneshot(get("/readyz")).await.unwrap().status(), http::StatusCode::OK);
        for path in ["/stats", "/metrics", "/flush", "/telemetry_lake.admin.v1.Admin/Stats"] {
            assert_eq!(
                router.clone().oneshot(get(path)).await.unwrap().status(),
                http::StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        // grpc.health.v1.Health/Check with an empty request: one frame, no bytes.
        let check = http::Request::post("/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(axum::body::Body::from(vec![0u8, 0, 0, 0, 0]))
            .unwrap();
        let response = router.clone().oneshot(check).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        // HealthCheckResponse { status: SERVING (1) } framed: 0, length 2, field 1 varint 1.
        assert_eq!(&body[..], &[0, 0, 0, 0, 2, 0x08, 0x01]);

        health.add(Reason::ShuttingDown).await;
        assert_eq!(
            router.oneshot(get("/readyz")).await.unwrap().status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn no_writer_undoes_another_writers_reason() {
        let health = Health::default();
        assert!(health.is_serving());
        health.add(Reason::ShuttingDown).await;
        health.add(Reason::FlushFailing).await;
        health.remove(Reason::FlushFailing).await;
        assert!(!health.is_serving(), "a flush that succeeds during shutdown keeps it not serving");
        assert_eq!(health.reasons().await, vec!["shutting down"]);

        let health = Health::default();
        health.add(Reason::StagingFull).await;
        health.add(Reason::FlushFailing).await;
        health.remove(Reason::StagingFull).await;
        assert!(!health.is_serving());
        health.remove(Reason::FlushFailing).await;
        assert!(health.is_serving());
        health.remove(Reason::FlushFailing).await;
        assert!(health.is_serving(), "removing an absent reason changes nothing");
    }
}
