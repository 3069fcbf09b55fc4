//! The runtime both services share: configuration, tracing, the OTLP logs receivers (gRPC and
//! HTTP, one `export` path), the admin plane (gRPC `Admin`, health, reflection; HTTP `/flush`,
//! `/stats`, `/metrics`, `/healthz`, `/readyz`) and graceful shutdown.

pub mod config;
pub mod otlp;
