//! Where staged rows come from: OTLP straight in (`otlp`, the embedded mode) or the Kafka topic
//! (`kafka`). Both hand rows to [`crate::staging`] and count what they took.

pub mod kafka;
pub mod otlp;
