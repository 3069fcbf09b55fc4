//! The load: `concurrency` workers, each with its own HTTP/2 connection and one export in
//! flight, cycling through the pre-encoded requests until the deadline (or `total` records),
//! optionally paced to a global rate. Every answer is logged with its time and latency.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client::LogsServiceClient,
};
use tokio::time::MissedTickBehavior;
use tonic::{
    client::Grpc,
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};
use tonic_prost::ProstCodec;

use crate::{signals::Signal, workload::PreEncoded};

/// Pause of a worker after an error, so a refusing server is not hammered in a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How to drive the appender.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub duration: Duration,
    pub concurrency: usize,
    /// Logs per second over all workers; `None` is saturation.
    pub rate: Option<f64>,
    /// Stop once this many records are sent.
    pub total: Option<u64>,
    /// The signal the requests are of (and so the gRPC method they go to).
    pub signal: Signal,
}

/// One answered export.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When the answer arrived, since the start of the load.
    pub done_at: Duration,
    pub latency: Duration,
    pub records: u64,
    /// Records acknowledged: all of them on OK, minus `rejected_log_records`; 0 on an error.
    pub acknowledged: u64,
    /// gRPC code name of a failed call.
    pub error: Option<String>,
}

/// Everything the workers saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub answers: Vec<Answer>,
    /// From the start of the load until the last answer.
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn sent(&self) -> u64 {
        self.answers.iter().map(|a| a.records).sum()
    }

    pub fn acknowledged(&self) -> u64 {
        self.answers.iter().map(|a| a.acknowledged).sum()
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        let mut errors = BTreeMap::new();
        for error in self.answers.iter().filter_map(|a| a.error.clone()) {
            *errors.entry(error).or_default() += 1;
        }
        errors
    }
}

/// Live counter the samplers read while the load runs.
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub acknowledged: AtomicU64,
}

/// Sends one typed request with the official `LogsServiceClient`, to check the endpoint
/// before any timing starts.
pub async fn check_endpoint(addr: SocketAddr, request: ExportLogsServiceRequest) -> anyhow::Result<()> {
    let mut client = LogsServiceClient::connect(format!("http://{addr}")).await?;
    let response = client.export(request).await.context("warm-up export failed")?.into_inner();
    if let Some(partial) = response.partial_success.filter(|p| p.rejected_log_records > 0) {
        anyhow::bail!("warm-up export was partly rejected: {}", partial.error_message);
    }
    Ok(())
}

/// [`check_endpoint`] for a request of any signal, with the signal's typed client.
pub async fn check_signal_endpoint(
    addr: SocketAddr,
    signal: Signal,
    request: &PreEncoded,
) -> anyhow::Result<()> {
    use opentelemetry_proto::tonic::collector::{
        metrics::v1::{ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient},
        trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    };
    use prost::Message;
    let rejected = match signal {
        Signal::Logs => {
            return check_endpoint(addr, ExportLogsServiceRequest::decode(request.bytes.clone())?).await;
        }
        Signal::Traces => {
            let mut client = TraceServiceClient::connect(format!("http://{addr}")).await?;
            let typed = ExportTraceServiceRequest::decode(request.bytes.clone())?;
            let response = client.export(typed).await.context("warm-up export failed")?.into_inner();
            response.partial_success.map(|p| (p.rejected_spans, p.error_message))
        }
        Signal::Metrics => {
            let mut client = MetricsServiceClient::connect(format!("http://{addr}")).await?;
            let typed = ExportMetricsServiceRequest::decode(request.bytes.clone())?;
            let response = client.export(typed).await.context("warm-up export failed")?.into_inner();
            response.partial_success.map(|p| (p.rejected_data_points, p.error_message))
        }
    };
    if let Some((count, message)) = rejected.filter(|(count, _)| *count > 0) {
        anyhow::bail!("warm-up export was partly rejected ({count}): {message}");
    }
    Ok(())
}

/// Runs the plan against `addr`, starting at `start`.
pub async fn run(
    addr: SocketAddr,
    requests: Arc<Vec<PreEncoded>>,
    plan: LoadPlan,
    live: Arc<LiveCounters>,
    start: Instant,
) -> anyhow::Result<LoadResult> {
    let reserved = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(plan.concurrency);
    for index in 0..plan.concurrency {
        let channel = connect(addr).await?;
        let worker = Worker {
            index,
            client: Grpc::new(channel),
            requests: requests.clone(),
            plan: plan.clone(),
            live: live.clone(),
            reserved: reserved.clone(),
            start,
        };
        workers.push(tokio::spawn(worker.run()));
    }
    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.context("load worker panicked")?);
    }
    answers.sort_by_key(|a| a.done_at);
    let elapsed = answers.last().map(|a| a.done_at).unwrap_or_default();
    Ok(LoadResult { answers, elapsed })
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
    endpoint.connect().await.with_context(|| format!("cannot connect to OTLP/gRPC at {addr}"))
}

struct Worker {
    index: usize,
    client: Grpc<Channel>,
    requests: Arc<Vec<PreEncoded>>,
    plan: LoadPlan,
    live: Arc<LiveCounters>,
    reserved: Arc<AtomicU64>,
    start: Instant,
}

impl Worker {
    async fn run(mut self) -> Vec<Answer> {
        let deadline = self.start + self.plan.duration;
        let mut pacer = self.pacer();
        let mut answers = Vec::new();
        let mut next = self.index;
        while Instant::now() < deadline {
            if let Some(pacer) = pacer.as_mut() {
                pacer.tick().await;
            }
            let request = self.requests[next % self.requests.len()].clone();
            next += self.plan.concurrency;
            if !self.reserve(request.records) {
                break;
            }
            let answer = self.export(request).await;
            self.live.acknowledged.fetch_add(answer.acknowledged, Ordering::Relaxed);
            if answer.error.is_some() {
                tokio::time::sleep(ERROR_PAUSE).await;
            }
            answers.push(answer);
        }
        answers
    }

    /// One tick per request this worker may send when a rate is set.
    fn pacer(&self) -> Option<tokio::time::Interval> {
        let rate = self.plan.rate?;
        let batch = self.requests.first().map_or(1, |r| r.records) as f64;
        let period = Duration::from_secs_f64(batch * self.plan.concurrency as f64 / rate);
        let first = tokio::time::Instant::from_std(self.start)
            + period.mul_f64(self.index as f64 / self.plan.concurrency as f64);
        let mut interval = tokio::time::interval_at(first, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Some(interval)
    }

    /// Claims `records` of the `total` budget; false once it is spent.
    fn reserve(&self, records: u64) -> bool {
        let Some(total) = self.plan.total else { return true };
        self.reserved.fetch_add(records, Ordering::Relaxed) + records <= total
    }

    async fn export(&mut self, request: PreEncoded) -> Answer {
        let records = request.records;
        let sent_at = Instant::now();
        let result = self.call(request).await;
        let done = Instant::now();
        let (acknowledged, error) = match result {
            Ok(response) => {
                let rejected = response.partial_success.map_or(0, |p| p.rejected_log_records.max(0) as u64);
                (records.saturating_sub(rejected), None)
            }
            Err(status) => (0, Some(format!("{:?}", status.code()))),
        };
        Answer { done_at: done - self.start, latency: done - sent_at, records, acknowledged, error }
    }

    /// One export. The answer is read as an `ExportLogsServiceResponse`: the traces and metrics
    /// responses have the same fields under the same numbers (`partial_success` = 1: rejected
    /// count = 1, error message = 2).
    async fn call(&mut self, request: PreEncoded) -> Result<ExportLogsServiceResponse, tonic::Status> {
        self.client.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = ProstCodec::<PreEncoded, ExportLogsServiceResponse>::default();
        let path = PathAndQuery::from_static(self.plan.signal.export_path());
        let response = self.client.unary(tonic::Request::new(request), path, codec).await?;
        Ok(response.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(at_ms: u64, records: u64, error: Option<&str>) -> Answer {
        Answer {
            done_at: Duration::from_millis(at_ms),
            latency: Duration::from_millis(5),
            records,
            acknowledged: if error.is_some() { 0 } else { records },
            error: error.map(String::from),
        }
    }

    #[test]
    fn totals_count_errors_by_code() {
        let result = LoadResult {
            answers: vec![answer(1, 10, None), answer(2, 10, Some("Unavailable")), answer(3, 10, None)],
            elapsed: Duration::from_millis(3),
        };
        assert_eq!((result.sent(), result.acknowledged()), (30, 20));
        assert_eq!(result.errors(), BTreeMap::from([("Unavailable".to_string(), 1)]));
    }
}
