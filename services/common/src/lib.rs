//! The runtime both services share: configuration (checked once into [`settings::Settings`]),
//! Kafka client settings, secret redaction, tracing, the OTLP logs receivers (gRPC and
//! HTTP, one `export` path), the admin plane (gRPC `Admin`, health, reflection; HTTP `/flush`,
//! `/stats`, `/metrics`, `/healthz`, `/readyz`), the listeners' TLS, bearer tokens and refusal
//! counts, the server assembly and graceful shutdown.

pub mod admin;
pub mod allocator;
pub mod auth;
pub mod cli;
pub mod config;
pub mod expand;
pub mod health;
pub mod kafka;
pub mod kafka_ids;
pub mod listener;
pub mod otlp;
pub mod refusals;
pub mod secrets;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
