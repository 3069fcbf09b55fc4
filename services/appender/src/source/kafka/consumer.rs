//! The consumer thread: polls the topic, checks that each message decodes as an OTLP request,
//! and stages the messages as they came (with their partition and offset) in appends of up to
//! [`MAX_BATCH_RECORDS`] records.
//! Undecodable messages go to the dead letters. It never moves past rows that are not staged:
//! while staging refuses them it pauses its partitions, keeps serving the group, and retries.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message as _;
use rdkafka::{Message, Offset, TopicPartitionList, consumer::Consumer};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::{SourceCounters, dead_letters::DeadLetters, rebalance::LakeConsumer};
use crate::{
    rows::{self, KafkaPosition},
    staging::{Batch, Staging, StagingError},
};

/// Rows gathered from the topic before they are staged in one append.
const MAX_BATCH_RECORDS: u64 = 10_000;
const MAX_BATCH_WAIT: Duration = Duration::from_millis(200);

pub(super) struct Worker {
    pub(super) consumer: Arc<LakeConsumer>,
    pub(super) staging: Staging,
    pub(super) counters: Arc<SourceCounters>,
    pub(super) dead_letters: DeadLetters,
    pub(super) handle: Handle,
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}

impl Worker {
    pub(super) fn run(self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let batch = self.gather(&stop);
            if batch.is_empty() {
                continue;
            }
            self.stage(batch, &stop);
        }
        // Leave the group here, so the revocation runs on this thread rather than wherever the
        // consumer is dropped.
        self.consumer.unsubscribe();
        let leaving = Instant::now();
        while !self.counters.assigned.lock().expect("assignment lock").is_empty()
            && leaving.elapsed() < Duration::from_secs(5)
        {
            let _ = self.consumer.poll(Duration::from_millis(100));
        }
        tracing::info!("kafka consumer stopped");
    }

    /// Polls until enough records or enough time; undecodable messages go to the dead letters.
    fn gather(&self, stop: &CancellationToken) -> Vec<Batch> {
        let started = Instant::now();
        let mut batch = Vec::new();
        let mut records = 0u64;
        while records < MAX_BATCH_RECORDS && !stop.is_cancelled() {
            let Some(wait) = MAX_BATCH_WAIT.checked_sub(started.elapsed()) else { break };
            match self.consumer.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll failed");
                    break;
                }
                Some(Ok(message)) => {
                    self.counters.messages.fetch_add(1, Ordering::Relaxed);
                    let position = KafkaPosition { partition: message.partition(), offset: message.offset() };
                    let payload = message.payload().unwrap_or_default();
                    if payload.len() as u64 > self.staging.max_batch_bytes() {
                        let reason = format!(
                            "{} bytes, more than staging takes in one piece ({} bytes, otlp.max_recv_msg_size)",
                            payload.len(),
                            self.staging.max_batch_bytes()
                        );
                        self.dead_letters.send(&self.handle, &message, &reason);
                        continue;
                    }
                    match ExportLogsServiceRequest::decode(payload) {
                        Ok(request) => {
                            // The bytes are staged as they came; rows are made at flush, where
                            // records with malformed ids are left out again.
                            let accepted = rows::check(&request).accepted;
                            records += accepted;
                            batch.push(Batch::new(payload, accepted, Some(position), now_micros()));
                        }
                        Err(e) => self.dead_letters.send(&self.handle, &message, &e.to_string()),
                    }
                }
            }
        }
        batch
    }

    /// Stages one append; while staging is full, pauses the partitions and retries.
    fn stage(&self, batch: Vec<Batch>, stop: &CancellationToken) {
        let mut paused: Option<TopicPartitionList> = None;
        loop {
            match self.handle.block_on(self.staging.append(batch.clone())) {
                Ok(()) => break,
                // These rows are past everything staged, so stopping without them loses
                // nothing: the next start reads them again from the table's offsets.
                Err(e) if stop.is_cancelled() => {
                    tracing::warn!(error = %e, "stopping with a batch not staged; it is read again at the next start");
                    break;
                }
                // Never move past rows that are not staged: pause, keep serving the group, retry.
                Err(e) => {
                    if paused.is_none() {
                        let assignment = self.consumer.assignment().unwrap_or_default();
                        if self.consumer.pause(&assignment).is_ok() {
                            paused = Some(assignment);
                        }
                        match e {
                            StagingError::Full { .. } => {
                                tracing::warn!(error = %e, "staging is full, consumption paused until commits catch up")
                            }
                            _ => tracing::error!(error = %e, "staging failed, consumption paused, retrying"),
                        }
                    }
                    self.wait_paused(Duration::from_secs(1));
                }
            }
        }
        if let Some(assignment) = paused {
            let _ = self.consumer.resume(&assignment);
            tracing::info!("consumption resumed");
        }
    }

    /// Serves the group (rebalances, heartbeats) while paused. A message that still arrives is
    /// not consumed: the partition is sought back to it, so it is delivered again later.
    fn wait_paused(&self, wait: Duration) {
        if let Some(Ok(message)) = self.consumer.poll(wait) {
            let (topic, partition, offset) =
                (message.topic().to_string(), message.partition(), message.offset());
            drop(message);
            if let Err(e) =
                self.consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(5))
            {
                tracing::error!(error = %e, partition, offset, "cannot seek back while paused");
            }
        }
    }
}
