//! What both benchmarks send, and how: `bench-embedded` (`bench/embedded`, the embedded
//! appender) and `compare-loadgen` (`bench/compare/loadgen`, the ingester against the
//! OpenTelemetry Collector) use this one workload and load loop, so both send the same
//! requests the same way.
//!
//! - [`workload`]: real Loghub lines turned into OTLP `ExportLogsServiceRequest`s of `batch`
//!   records (~200-byte bodies, 8 services, 3 attributes), encoded before the clock starts.
//! - [`signals`]: the same lines as spans or metric data points, one per line.
//! - [`load`]: `concurrency` HTTP/2 connections with one export in flight each, at saturation or
//!   paced to a rate, every answer logged with its time and latency.

pub mod load;
pub mod signals;
pub mod workload;
