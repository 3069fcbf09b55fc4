//! The consumer thread: polls the topics (logs, spans, metrics), sorts each message as its
//! topic's request type ([`sort_message`]) and stages the messages as they came (with their
//! partition and offset, tagged with their signal's tables) in appends of up to
//! [`MAX_BATCH_RECORDS`] items and staging's largest batch in bytes.
//!
//! No record is dropped in silence. What cannot be staged is dead-lettered (`dead_letters.rs`):
//! a message that does not decode or is larger than staging takes in one piece goes whole, the
//! malformed records of a message (the check the ingester applies too) go as a request of their
//! own while its good records are staged. Whatever part of a message stays is staged with its
//! offset, even when it holds no record (a marker), so the next commit moves the table's offsets
//! past the dead-lettered message exactly once and no restart reads it again.
//!
//! It never moves past a message that is neither staged nor dead-lettered: while staging
//! refuses an append, or a dead letter is not delivered, it pauses its partitions (and those
//! assigned meanwhile), keeps serving the group, and retries.
//!
//! Every message read is tagged with its partition's assignment generation
//! (`rebalance::Assignments`). Before each append, messages whose partition was revoked since
//! they were read (and perhaps assigned again, starting from the table's offsets) are dropped:
//! staged after the revocation they would be doubled by the new start, or sealed and committed
//! past rows it reads again. They are read again by whoever owns the partition now.

use std::{
    sync::{Arc, MutexGuard, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use rdkafka::{Message, Offset, TopicPartitionList, consumer::Consumer, message::BorrowedMessage};
use telemetry_lake_common::otlp::{
    SignalKind, records,
    signal::{count_data_points, count_spans},
    walk::walk_logs_request,
};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::{
    SourceCounters,
    dead_letters::{DeadLetter, DeadLetters},
    rebalance::{Assignments, LakeConsumer, TopicPartition},
};
use crate::{
    rows::KafkaPosition,
    staging::{Batch, Staging, StagingError},
    tables_of,
};

/// Rows gathered from the topic before they are staged in one append.
const MAX_BATCH_RECORDS: u64 = 10_000;
const MAX_BATCH_WAIT: Duration = Duration::from_millis(200);
/// What is staged for a message dead-lettered whole: a request of one empty resource (no
/// record, no row). It carries the message's offset into the next commit, and its two bytes
/// count as staged, so the committer's interval flush commits it even when nothing else is
/// staged (a commit that leaves it out would let a restart read the message again).
const MARKER: [u8; 2] = [0x0a, 0x00];
/// The longest wait between two attempts to deliver a dead letter.
const MAX_DEAD_LETTER_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct Worker {
    pub(super) consumer: Arc<LakeConsumer>,
    pub(super) staging: Staging,
    pub(super) counters: Arc<SourceCounters>,
    pub(super) dead_letters: DeadLetters,
    pub(super) handle: Handle,
}

/// A batch read from the topic of `signal`, with the assignment generation of its partition
/// when read.
#[derive(Debug, Clone)]
pub(super) struct Read {
    pub(super) signal: SignalKind,
    pub(super) batch: Batch,
    pub(super) generation: u64,
}

/// The batches of `reads` whose partitions still have the generation they were read under,
/// and how many were dropped because theirs was revoked since.
pub(super) fn current(reads: &[Read], assignments: &Assignments) -> (Vec<Batch>, usize) {
    let kept: Vec<Batch> = reads
        .iter()
        .filter(|read| {
            read.batch
                .source
                .is_some_and(|at| assignments.is_current((read.signal, at.partition), read.generation))
        })
        .map(|read| read.batch.clone())
        .collect();
    let dropped = reads.len() - kept.len();
    (kept, dropped)
}

/// What becomes of one message.
#[derive(Debug)]
pub(super) enum Sorted {
    /// Staged as it came.
    Stage(Batch),
    /// `letter` goes to the dead letters first; then `keep` (the message's good records, or
    /// none: a marker carrying its offset) is staged.
    DeadLetter { keep: Batch, letter: DeadLetter },
}

/// What checking a message found: how many items it holds, and, when some are malformed, the
/// message without them and them alone (both encoded).
enum Checked {
    Good { items: u64 },
    Malformed { checked: records::Checked, keep: Vec<u8>, malformed: Vec<u8> },
}

/// The request type a message of `signal` must be, for messages.
fn request_name(signal: SignalKind) -> &'static str {
    match signal {
        SignalKind::Logs => "ExportLogsServiceRequest",
        SignalKind::Traces => "ExportTraceServiceRequest",
        SignalKind::Metrics => "ExportMetricsServiceRequest",
    }
}

/// Checks a message of `signal`: `Err` with prost's reason when it does not decode. Logs are
/// walked without decoding (the walk agrees with prost) and decoded only when some records are
/// malformed; spans and data points are decoded.
fn check(signal: SignalKind, payload: &[u8]) -> Result<Checked, String> {
    fn decoded<M: prost::Message + Default>(
        payload: &[u8],
        split: fn(&mut M) -> (records::Checked, M),
    ) -> Result<Checked, String> {
        let mut request = M::decode(payload).map_err(|e| e.to_string())?;
        let (checked, malformed) = split(&mut request);
        if checked.rejected == 0 {
            return Ok(Checked::Good { items: checked.accepted });
        }
        Ok(Checked::Malformed {
            checked,
            keep: request.encode_to_vec(),
            malformed: malformed.encode_to_vec(),
        })
    }
    match signal {
        SignalKind::Logs => {
            let walk = walk_logs_request(payload).map_err(|e| e.to_string())?;
            if walk.malformed == 0 {
                return Ok(Checked::Good { items: walk.records });
            }
            decoded::<ExportLogsServiceRequest>(payload, records::split_malformed)
        }
        SignalKind::Traces => decoded(payload, records::split_malformed_spans),
        SignalKind::Metrics => decoded(payload, records::split_malformed_points),
    }
}

/// The items of a message of `signal`, malformed ones included; 0 when it does not decode.
fn count_items(signal: SignalKind, payload: &[u8]) -> u64 {
    use prost::Message as _;
    match signal {
        SignalKind::Logs => walk_logs_request(payload).map(|walk| walk.records).unwrap_or(0),
        SignalKind::Traces => ExportTraceServiceRequest::decode(payload).map_or(0, |r| count_spans(&r)),
        SignalKind::Metrics => {
            ExportMetricsServiceRequest::decode(payload).map_or(0, |r| count_data_points(&r))
        }
    }
}

/// Sorts one message of `signal`'s topic: `payload` from `topic` at `position`, with `key`. A
/// message larger than `max_batch_bytes` (what staging takes in one piece), or one that is not
/// an OTLP export request of the signal, is dead-lettered whole; one with malformed items has
/// just those dead-lettered; anything else is staged byte for byte. A staged metrics message
/// counts for all five metrics tables, so each records the topic's offsets past it.
pub(super) fn sort_message(
    signal: SignalKind,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    position: KafkaPosition,
    max_batch_bytes: u64,
    received_at_micros: i64,
) -> Sorted {
    let tables = tables_of(signal);
    let batch = |bytes: &[u8], items: u64| {
        Batch::new(bytes, items, Some(position), received_at_micros).holding(tables)
    };
    let letter = |payload: Vec<u8>, reason: String, records: u64| DeadLetter {
        topic: topic.to_owned(),
        partition: position.partition,
        offset: position.offset,
        key: key.map(<[u8]>::to_vec),
        payload,
        reason,
        records,
    };
    let whole = |reason: String, records: u64| Sorted::DeadLetter {
        keep: batch(&MARKER, 0),
        letter: letter(payload.to_vec(), reason, records),
    };
    if payload.len() as u64 > max_batch_bytes {
        return whole(
            format!(
                "{} bytes, more than staging takes in one piece ({max_batch_bytes} bytes: \
                 otlp.max_recv_msg_size, at most staging.max_bytes)",
                payload.len()
            ),
            count_items(signal, payload),
        );
    }
    match check(signal, payload) {
        Err(e) => whole(format!("not an OTLP {}: {e}", request_name(signal)), 0),
        Ok(Checked::Good { items }) => Sorted::Stage(batch(payload, items)),
        Ok(Checked::Malformed { checked, keep, malformed }) => Sorted::DeadLetter {
            keep: batch(&keep, checked.accepted),
            letter: letter(malformed, checked.rejection, checked.rejected),
        },
    }
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}

impl Worker {
    pub(super) fn run(self, stop: CancellationToken) {
        let mut carried = None;
        while !stop.is_cancelled() {
            let batch = self.gather(&stop, &mut carried);
            if batch.is_empty() {
                continue;
            }
            self.stage(batch, &stop);
        }
        // Leave the group here, so the revocation runs on this thread rather than wherever the
        // consumer is dropped.
        self.consumer.unsubscribe();
        let leaving = Instant::now();
        let assigned =
            || self.counters.topics.iter().any(|t| !t.assigned.lock().expect("assignment lock").is_empty());
        while assigned() && leaving.elapsed() < Duration::from_secs(5) {
            let _ = self.consumer.poll(Duration::from_millis(100));
        }
        tracing::info!("kafka consumer stopped");
    }

    /// Polls until enough records, enough bytes or enough time. An append never holds more
    /// bytes than staging takes in one piece, so an empty staging always takes it: a batch that
    /// would cross that line is `carried` into the next append.
    fn gather(&self, stop: &CancellationToken, carried: &mut Option<Read>) -> Vec<Read> {
        let started = Instant::now();
        let max_bytes = self.staging.max_batch_bytes();
        let mut batch: Vec<Read> = carried.take().into_iter().collect();
        let mut records: u64 = batch.iter().map(|r| r.batch.records).sum();
        let mut bytes: u64 = batch.iter().map(|r| r.batch.bytes()).sum();
        while records < MAX_BATCH_RECORDS && !stop.is_cancelled() {
            let Some(wait) = MAX_BATCH_WAIT.checked_sub(started.elapsed()) else { break };
            let message = match self.consumer.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll failed");
                    break;
                }
                Some(Ok(message)) => message,
            };
            self.counters.messages.fetch_add(1, Ordering::Relaxed);
            let Some(signal) = self.consumer.context().topics.signal_of(message.topic()) else {
                tracing::warn!(topic = message.topic(), "a message of a topic not consumed here: not staged");
                continue;
            };
            let Some(generation) = self.assignments().generation((signal, message.partition())) else {
                tracing::warn!(
                    partition = message.partition(),
                    offset = message.offset(),
                    "a message of a partition not assigned here: not staged (its owner reads it)"
                );
                continue;
            };
            let staged = match self.sort(signal, &message) {
                Sorted::Stage(staged) => staged,
                Sorted::DeadLetter { keep, letter } => {
                    drop(message);
                    if !self.dead_letter(&letter, signal, generation, stop) {
                        // Stopping, or the partition went to another member: nothing of the
                        // message is staged, and it is read again from the table's offsets.
                        continue;
                    }
                    keep
                }
            };
            let staged = Read { signal, batch: staged, generation };
            if !batch.is_empty() && bytes + staged.batch.bytes() > max_bytes {
                *carried = Some(staged);
                break;
            }
            records += staged.batch.records;
            bytes += staged.batch.bytes();
            batch.push(staged);
        }
        batch
    }

    fn sort(&self, signal: SignalKind, message: &BorrowedMessage<'_>) -> Sorted {
        sort_message(
            signal,
            message.topic(),
            message.key(),
            message.payload().unwrap_or_default(),
            KafkaPosition { partition: message.partition(), offset: message.offset() },
            self.staging.max_batch_bytes(),
            now_micros(),
        )
    }

    /// Delivers `letter`, pausing the partitions and retrying with backoff (serving the group
    /// meanwhile) until Kafka acknowledges it. `false`: not delivered because the consumer is
    /// stopping or the partition was revoked since the message was read under `generation`.
    fn dead_letter(
        &self,
        letter: &DeadLetter,
        signal: SignalKind,
        generation: u64,
        stop: &CancellationToken,
    ) -> bool {
        let mut paused = false;
        let mut failures = 0u32;
        let delivered = loop {
            let error = match self.dead_letters.send(&self.handle, letter) {
                Ok(()) => break true,
                Err(error) => error,
            };
            failures += 1;
            if !paused {
                paused = self.pause();
            }
            let backoff = Duration::from_secs(1 << failures.min(5)).min(MAX_DEAD_LETTER_BACKOFF);
            tracing::error!(
                %error,
                partition = letter.partition,
                offset = letter.offset,
                attempt = failures,
                retry_in = ?backoff,
                "dead letter not delivered: consumption paused, the delivery is retried and the \
                 message is not skipped (check kafka.dead_letter_topic and the producer settings)"
            );
            let retry_at = Instant::now() + backoff;
            while Instant::now() < retry_at && !stop.is_cancelled() {
                self.wait_paused(Duration::from_millis(200));
            }
            if stop.is_cancelled() {
                break false;
            }
            if !self.assignments().is_current((signal, letter.partition), generation) {
                tracing::warn!(
                    partition = letter.partition,
                    offset = letter.offset,
                    "partition revoked while its dead letter was retried; its new owner reads the message again"
                );
                break false;
            }
        };
        if paused {
            self.resume();
        }
        delivered
    }

    /// Stages one append; while staging is full, pauses the partitions and retries. Before each
    /// attempt it drops the messages of partitions revoked since they were read (rebalance
    /// callbacks run only in this thread's polls, so none can come between check and append).
    fn stage(&self, batch: Vec<Read>, stop: &CancellationToken) {
        let mut paused = false;
        loop {
            let (batches, dropped) = current(&batch, &self.assignments());
            if dropped > 0 {
                tracing::info!(
                    dropped,
                    kept = batches.len(),
                    "messages read before their partitions were revoked are not staged; their \
                     owner reads them again from the table's offsets"
                );
            }
            if batches.is_empty() {
                break;
            }
            match self.handle.block_on(self.staging.append(batches)) {
                Ok(()) => break,
                // These rows are past everything staged, so stopping without them loses
                // nothing: the next start reads them again from the table's offsets.
                Err(e) if stop.is_cancelled() => {
                    tracing::warn!(error = %e, "stopping with a batch not staged; it is read again at the next start");
                    break;
                }
                // Never move past rows that are not staged: pause, keep serving the group, retry.
                Err(e) => {
                    if !paused {
                        paused = self.pause();
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
        if paused {
            self.resume();
        }
    }

    fn assignments(&self) -> MutexGuard<'_, Assignments> {
        self.consumer.context().assignments.lock().expect("assignments lock")
    }

    /// Pauses every assigned partition, and (through the rebalance callback) every partition
    /// assigned until [`Self::resume`]. `false`: Kafka refused, nothing paused.
    fn pause(&self) -> bool {
        let assignment = self.consumer.assignment().unwrap_or_default();
        match self.consumer.pause(&assignment) {
            Ok(()) => {
                let partitions = self.topic_partitions(&assignment);
                self.assignments().pausing(partitions);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot pause consumption");
                false
            }
        }
    }

    /// Resumes every partition paused since [`Self::pause`] (revoked ones too: they stay
    /// paused in librdkafka, and would not fetch when assigned again) and every one assigned
    /// now.
    fn resume(&self) {
        let assignment = self.consumer.assignment().unwrap_or_default();
        let assigned = self.topic_partitions(&assignment);
        let partitions = self.assignments().resuming(assigned);
        let topics = &self.consumer.context().topics;
        let mut tpl = TopicPartitionList::new();
        for (signal, partition) in partitions {
            if let Some(topic) = topics.of(signal) {
                tpl.add_partition(&topic.name, partition);
            }
        }
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::error!(error = %e, "cannot resume consumption");
        }
        tracing::info!("consumption resumed");
    }

    /// The partitions of `tpl`, by signal (those of topics not consumed here left out).
    fn topic_partitions(&self, tpl: &TopicPartitionList) -> Vec<TopicPartition> {
        let topics = &self.consumer.context().topics;
        tpl.elements().iter().filter_map(|e| Some((topics.signal_of(e.topic())?, e.partition()))).collect()
    }

    /// Serves the group (rebalances, heartbeats) while paused. A message that still arrives is
    /// not consumed: the partition is sought back to it, so it is delivered again later, and
    /// paused (were it fetching, every poll here would bring a message and seek back).
    fn wait_paused(&self, wait: Duration) {
        if let Some(Ok(message)) = self.consumer.poll(wait) {
            let (topic, partition, offset) =
                (message.topic().to_string(), message.partition(), message.offset());
            drop(message);
            tracing::warn!(
                partition,
                offset,
                "a message arrived while consumption is paused: sought back, partition paused"
            );
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            match self.consumer.pause(&tpl) {
                Ok(()) => {
                    let paused = self.topic_partitions(&tpl);
                    self.assignments().pausing(paused);
                }
                Err(e) => tracing::error!(error = %e, partition, "cannot pause a partition while paused"),
            }
            if let Err(e) =
                self.consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(5))
            {
                tracing::error!(error = %e, partition, offset, "cannot seek back while paused");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, KeyValue, any_value::Value},
        logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
        resource::v1::Resource,
    };

    use prost::Message as _;
    use telemetry_lake_common::otlp::SignalKind::{Logs, Metrics, Traces};

    use super::*;

    const POSITION: KafkaPosition = KafkaPosition { partition: 3, offset: 17 };

    fn request(trace_ids: &[usize]) -> ExportLogsServiceRequest {
        let record = |i: usize, len: usize| LogRecord {
            body: Some(AnyValue { value: Some(Value::StringValue(format!("line {i}"))) }),
            trace_id: vec![1; len],
            ..Default::default()
        };
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue { value: Some(Value::StringValue("svc".into())) }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: trace_ids.iter().enumerate().map(|(i, len)| record(i, *len)).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn sort(payload: &[u8], max_batch_bytes: u64) -> Sorted {
        sort_message(Logs, "otel-logs", Some(b"svc"), payload, POSITION, max_batch_bytes, 5)
    }

    fn decompressed(batch: &Batch) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest::decode(zstd::stream::decode_all(batch.compressed()).unwrap().as_slice())
            .unwrap()
    }

    fn read(partition: i32, offset: i64, generation: u64) -> Read {
        let position = KafkaPosition { partition, offset };
        Read { signal: Logs, batch: Batch::new(&MARKER, 0, Some(position), 5), generation }
    }

    fn offsets(batches: &[Batch]) -> Vec<(i32, i64)> {
        batches.iter().map(|b| b.source.map(|s| (s.partition, s.offset)).unwrap()).collect()
    }

    #[test]
    fn messages_read_before_their_partition_was_revoked_are_not_staged() {
        let mut assignments = Assignments::default();
        assignments.assign(Logs, &[0, 1]);
        assignments.assign(Traces, &[0]);
        let (zero, one) =
            (assignments.generation((Logs, 0)).unwrap(), assignments.generation((Logs, 1)).unwrap());
        let before = [read(0, 10, zero), read(1, 20, one), read(0, 11, zero)];
        assert_eq!(current(&before, &assignments).1, 0);
        assert_eq!(offsets(&current(&before, &assignments).0), [(0, 10), (1, 20), (0, 11)]);

        // Eager: everything revoked, then 0 assigned again (it starts again from the table's
        // offsets). Nothing read before is staged: 1 is not ours, 0 is read again.
        assignments.revoke(Logs, &[0, 1]);
        assert_eq!(offsets(&current(&before, &assignments).0), []);
        assert!(assignments.generation((Traces, 0)).is_some(), "another topic's partition 0 stays");
        assignments.assign(Logs, &[0]);
        assert_eq!(current(&before, &assignments).1, 3);
        let again = assignments.generation((Logs, 0)).unwrap();
        assert_ne!(again, zero);
        let after = [read(0, 10, again)];
        assert_eq!(offsets(&current(&after, &assignments).0), [(0, 10)]);

        // Cooperative: gaining 2 and losing nothing keeps what was read of 0.
        assignments.assign(Logs, &[2]);
        assert_eq!(offsets(&current(&after, &assignments).0), [(0, 10)]);
        assert_eq!(assignments.generation((Logs, 3)), None, "never assigned");
        let of_traces = Read { signal: Traces, ..read(0, 10, again) };
        assert_eq!(current(&[of_traces], &assignments).1, 1, "logs' generation is not the traces topic's");
        let embedded = Read { signal: Logs, batch: Batch::new(&MARKER, 0, None, 5), generation: again };
        assert_eq!(current(&[embedded], &assignments).1, 1, "a Kafka batch always has a position");
    }

    #[test]
    fn a_pause_ends_by_resuming_every_partition_paused_since_revoked_ones_too() {
        let mut assignments = Assignments::default();
        assignments.assign(Logs, &[0, 1]);
        assert!(!assignments.is_paused());
        assignments.pausing([(Logs, 0), (Logs, 1)]);
        assert!(assignments.is_paused());
        // Revoked while paused, then 2 and 3 assigned (the callback pauses them too).
        assignments.revoke(Logs, &[0, 1]);
        assignments.assign(Logs, &[2]);
        assignments.assign(Metrics, &[3]);
        assignments.pausing([(Logs, 2), (Metrics, 3)]);
        assert_eq!(
            assignments.resuming([(Logs, 2), (Metrics, 3)]),
            [(Logs, 0), (Logs, 1), (Logs, 2), (Metrics, 3)],
            "0 and 1 stay paused in librdkafka otherwise"
        );
        assert!(!assignments.is_paused());
        assert_eq!(assignments.resuming([(Logs, 2)]), [(Logs, 2)], "nothing left of the pause");
        assignments.pausing([]);
        assert!(assignments.is_paused(), "paused with nothing assigned: what comes is paused");
    }

    #[test]
    fn a_good_message_is_staged_as_it_came() {
        let payload = request(&[16, 0]).encode_to_vec();
        let Sorted::Stage(batch) = sort(&payload, 1 << 20) else { panic!("dead-lettered") };
        assert_eq!((batch.records, batch.bytes(), batch.source), (2, payload.len() as u64, Some(POSITION)));
        assert_eq!(decompressed(&batch), request(&[16, 0]));
    }

    #[test]
    fn malformed_records_are_dead_lettered_and_the_good_ones_staged() {
        let payload = request(&[16, 3, 0, 5]).encode_to_vec();
        let Sorted::DeadLetter { keep, letter } = sort(&payload, 1 << 20) else { panic!("staged") };
        assert_eq!((keep.records, keep.source), (2, Some(POSITION)));
        let kept = decompressed(&keep);
        assert_eq!(records::check(&kept), records::Checked { accepted: 2, ..Default::default() });
        assert_eq!((letter.partition, letter.offset, letter.records), (3, 17, 2));
        assert_eq!(letter.reason, "trace_id must be 16 bytes, got 3");
        assert_eq!(letter.key.as_deref(), Some(&b"svc"[..]));
        let dead = ExportLogsServiceRequest::decode(letter.payload.as_slice()).unwrap();
        assert_eq!(records::check(&dead).rejected, 2);
        assert_eq!(dead.resource_logs[0].resource, request(&[]).resource_logs[0].resource);
    }

    #[test]
    fn a_message_of_malformed_records_only_leaves_a_marker_of_its_offset() {
        let payload = request(&[3]).encode_to_vec();
        let Sorted::DeadLetter { keep, letter } = sort(&payload, 1 << 20) else { panic!("staged") };
        assert_eq!((keep.records, keep.source), (0, Some(POSITION)));
        assert!(keep.bytes() > 0, "its bytes count as staged, so the interval flush commits it");
        assert_eq!(letter.records, 1);
    }

    #[test]
    fn undecodable_and_too_large_messages_go_whole_and_leave_a_marker() {
        let garbage = b"\x0a\xff\xff\xff this is not protobuf";
        let Sorted::DeadLetter { keep, letter } = sort(garbage, 1 << 20) else { panic!("staged") };
        assert_eq!((keep.records, keep.bytes(), keep.source), (0, 2, Some(POSITION)));
        let marker = decompressed(&keep);
        assert_eq!((marker.resource_logs.len(), records::check(&marker)), (1, records::Checked::default()));
        assert_eq!((letter.payload.as_slice(), letter.records), (&garbage[..], 0));
        assert!(letter.reason.starts_with("not an OTLP ExportLogsServiceRequest"), "{}", letter.reason);

        let payload = request(&[16, 16, 16]).encode_to_vec();
        let Sorted::DeadLetter { keep, letter } = sort(&payload, 10) else { panic!("staged") };
        assert_eq!((keep.records, keep.bytes()), (0, 2));
        assert_eq!((letter.payload, letter.records), (payload.clone(), 3));
        assert!(letter.reason.contains("more than staging takes in one piece"), "{}", letter.reason);
    }

    #[test]
    fn spans_and_data_points_are_sorted_as_log_records_are() {
        use opentelemetry_proto::tonic::{
            collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
            metrics::v1::{
                Exemplar, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data,
            },
            trace::v1::{ResourceSpans, ScopeSpans, Span},
        };
        use telemetry_lake_proto::RowTable;
        let spans = |trace_ids: &[usize]| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: trace_ids
                        .iter()
                        .map(|len| Span { trace_id: vec![1; *len], ..Default::default() })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let good = spans(&[16, 0]).encode_to_vec();
        let Sorted::Stage(batch) = sort_message(Traces, "otel-spans", None, &good, POSITION, 1 << 20, 5)
        else {
            panic!("dead-lettered")
        };
        assert_eq!((batch.records, batch.tables()), (2, crate::staging::table_bits(&[RowTable::Traces])));
        let mixed = spans(&[16, 3]).encode_to_vec();
        let Sorted::DeadLetter { keep, letter } =
            sort_message(Traces, "otel-spans", None, &mixed, POSITION, 1 << 20, 5)
        else {
            panic!("staged")
        };
        assert_eq!((keep.records, letter.records, letter.topic.as_str()), (1, 1, "otel-spans"));
        assert_eq!(ExportTraceServiceRequest::decode(letter.payload.as_slice()).unwrap(), spans(&[3]));
        let Sorted::DeadLetter { keep, letter } =
            sort_message(Traces, "otel-spans", None, b"\x0a\xff", POSITION, 1 << 20, 5)
        else {
            panic!("staged")
        };
        assert_eq!((keep.records, keep.tables()), (0, crate::staging::table_bits(&[RowTable::Traces])));
        assert!(letter.reason.starts_with("not an OTLP ExportTraceServiceRequest"), "{}", letter.reason);

        let points = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![
                                NumberDataPoint::default(),
                                NumberDataPoint {
                                    exemplars: vec![Exemplar { span_id: vec![1; 2], ..Default::default() }],
                                    ..Default::default()
                                },
                            ],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let Sorted::DeadLetter { keep, letter } =
            sort_message(Metrics, "otel-metrics", None, &points, POSITION, 1 << 20, 5)
        else {
            panic!("staged")
        };
        assert_eq!((keep.records, letter.records), (1, 1));
        assert_eq!(letter.reason, "exemplars.span_id must be 8 bytes, got 2");
        assert_eq!(
            keep.tables(),
            crate::staging::table_bits(&RowTable::METRICS),
            "every metrics table records the offset"
        );
        let Sorted::DeadLetter { letter, .. } =
            sort_message(Metrics, "otel-metrics", None, &points, POSITION, 10, 5)
        else {
            panic!("staged")
        };
        assert_eq!(letter.records, 2, "too large: counted, sent whole");
    }
}
