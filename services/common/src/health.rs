//! Whether a service can take traffic, reported through `grpc.health.v1` on every gRPC port and
//! `GET /readyz`. Services flip it when a dependency (Kafka, the catalog, storage) goes away.
//!
//! Readiness and liveness differ: "" and the service names follow the dependencies (take no
//! traffic while Kafka or the catalog is away), while [`LIVENESS_SERVICE`] stays SERVING as long
//! as the process answers at all, so a liveness probe never restarts a pod for an outage that a
//! restart cannot fix.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tonic_health::{
    ServingStatus,
    server::{HealthReporter, HealthService},
};

/// Service names reported besides "" (the whole server).
const SERVICES: [&str; 2] =
    ["opentelemetry.proto.collector.logs.v1.LogsService", "telemetry_lake.admin.v1.Admin"];

/// Health service name for liveness probes: SERVING from start-up until the process exits,
/// graceful drain included (`grpc: {port: 4320, service: telemetry_lake.liveness}`).
pub const LIVENESS_SERVICE: &str = "telemetry_lake.liveness";

#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    serving: Arc<AtomicBool>,
}

impl Default for Health {
    fn default() -> Self {
        Self { reporter: HealthReporter::new(), serving: Arc::new(AtomicBool::new(true)) }
    }
}

impl Health {
    /// A `grpc.health.v1.Health` service reading this state; one per gRPC port.
    pub fn grpc_service(&self) -> tonic_health::pb::health_server::HealthServer<HealthService> {
        tonic_health::pb::health_server::HealthServer::new(HealthService::from_health_reporter(
            self.reporter.clone(),
        ))
    }

    /// Reports [`LIVENESS_SERVICE`] SERVING; called once the ports are bound.
    pub async fn report_alive(&self) {
        self.reporter.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Sets SERVING or NOT_SERVING for the server and each service; logs only changes.
    pub async fn set_serving(&self, serving: bool, reason: &str) {
        let was = self.serving.swap(serving, Ordering::Relaxed);
        if was != serving {
            if serving {
                tracing::info!(reason, "health serving");
            } else {
                tracing::warn!(reason, "health not serving");
            }
        }
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in std::iter::once("").chain(SERVICES) {
            self.reporter.set_service_status(name, status).await;
        }
    }
}
