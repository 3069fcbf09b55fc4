//! Rebalances: what happens when the group gives this appender partitions or takes them away.
//!
//! - Assigned: unsealed rows of those partitions are dropped (they are read again), and each
//!   partition starts at the lowest next offset of this topic id and cluster among its signal's
//!   tables (from their properties and snapshot summaries; logs and traces have one table,
//!   metrics five), or at its earliest offset when one of them holds none, never at the group's
//!   committed offset (unless a table or Kafka cannot be asked). Partitions are of three topics:
//!   everything here is per (signal, partition). Each
//!   assignment gets a new generation ([`Assignments`]); a message is tagged with its
//!   partition's generation when it is read, and the consumer thread stages it only while that
//!   partition still has that generation, so nothing read under an old assignment is staged
//!   after a revocation (it would be doubled, or sealed past rows the new start reads again).
//!   While the consumer is paused (staging full, a dead letter retried), assigned partitions
//!   are paused as they come, so they do not fetch.
//! - Revoked: commits from now on leave the partitions out; their unsealed rows are dropped
//!   before it returns, so the new owner (assigned only after that, with the eager protocol)
//!   starts from the table's offsets. It waits for the commit in flight at most
//!   [`REVOKE_WAIT`], never for its Parquet writes and catalog retries: the group would evict
//!   a member that rejoins late. That commit may still land rows of the revoked partitions,
//!   and that is safe: every attempt of a commit checks the table it lands on (`lake`'s
//!   checked base): another owner's commit of the same partitions since makes it re-read the
//!   table and re-fence (leaving the partitions out), and a new owner's commit drops rows below
//!   the offsets this one recorded (`crate::commit::fence`).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol},
    types::RDKafkaRespErr,
};
use tokio::runtime::Handle;

use telemetry_lake_common::{kafka_ids::IdLookup, otlp::SignalKind};

use super::{IDENTIFY_TIMEOUT, SourceCounters};
use crate::{
    commit::summary,
    lake::Lake,
    staging::{Staging, table_bits},
    tables_of,
};

/// How long a revocation waits for the commit in flight before it goes on without it (a
/// fraction of `max.poll.interval.ms`, the longest a member may take to rejoin).
pub(super) const REVOKE_WAIT: Duration = Duration::from_secs(2);

/// A partition of the topic of a signal.
pub(super) type TopicPartition = (SignalKind, i32);

/// Which assignment each owned partition came with, and whether the consumer is paused. Only
/// the consumer thread changes it (rebalance callbacks run inside its polls).
#[derive(Debug, Default)]
pub(super) struct Assignments {
    last: u64,
    owned: HashMap<TopicPartition, u64>,
    /// `Some` while the consumer thread has paused consumption: every partition paused since,
    /// revoked ones included (librdkafka keeps a partition paused through a revocation, so one
    /// assigned again later would never fetch unless it is resumed too).
    paused: Option<BTreeSet<TopicPartition>>,
}

impl Assignments {
    /// A new generation for `partitions` of `signal`'s topic: what was read of them before is
    /// stale.
    pub(super) fn assign(&mut self, signal: SignalKind, partitions: &[i32]) {
        self.last += 1;
        for partition in partitions {
            self.owned.insert((signal, *partition), self.last);
        }
    }

    pub(super) fn revoke(&mut self, signal: SignalKind, partitions: &[i32]) {
        for partition in partitions {
            self.owned.remove(&(signal, *partition));
        }
    }

    /// The generation a message of `partition` read now belongs to; `None`: not owned.
    pub(super) fn generation(&self, partition: TopicPartition) -> Option<u64> {
        self.owned.get(&partition).copied()
    }

    /// Whether a message of `partition` read under `generation` may still be staged: the
    /// partition was not revoked (nor revoked and assigned again) since.
    pub(super) fn is_current(&self, partition: TopicPartition, generation: u64) -> bool {
        self.owned.get(&partition) == Some(&generation)
    }

    pub(super) fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// Notes `partitions` as paused (the consumer is paused from now on).
    pub(super) fn pausing(&mut self, partitions: impl IntoIterator<Item = TopicPartition>) {
        self.paused.get_or_insert_default().extend(partitions);
    }

    /// Ends the pause: the partitions to resume, every one paused since it began and every
    /// one `assigned` now.
    pub(super) fn resuming(
        &mut self,
        assigned: impl IntoIterator<Item = TopicPartition>,
    ) -> Vec<TopicPartition> {
        let mut partitions = self.paused.take().unwrap_or_default();
        partitions.extend(assigned);
        partitions.into_iter().collect()
    }
}

/// The consumer's context: rebalance callbacks run on the consumer thread.
pub(super) struct LakeContext {
    pub(super) handle: Handle,
    pub(super) staging: Staging,
    /// The topics consumed, and the tables each one's rows land in.
    pub(super) topics: Topics,
    pub(super) counters: Arc<SourceCounters>,
    pub(super) ids: Arc<IdLookup>,
    pub(super) assignments: Mutex<Assignments>,
}

impl ClientContext for LakeContext {}

impl ConsumerContext for LakeContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let by_signal = self.topics.partitions_by_signal(tpl);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                for (signal, partitions) in &by_signal {
                    self.start_from_table(tpl, *signal, partitions);
                }
                let assigned =
                    if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                match assigned {
                    Ok(()) => {
                        let mut assignments = self.assignments.lock().expect("assignments lock");
                        for (signal, partitions) in &by_signal {
                            let mut owned =
                                self.counters.topic(*signal).assigned.lock().expect("assignment lock");
                            owned.extend(partitions);
                            owned.sort_unstable();
                            owned.dedup();
                            drop(owned);
                            assignments.assign(*signal, partitions);
                        }
                        // Consumption is paused: these must not fetch either (wait_paused
                        // would seek back every message they bring, again and again).
                        let paused = assignments.is_paused();
                        if paused {
                            match consumer.pause(tpl) {
                                Ok(()) => assignments.pausing(
                                    by_signal.iter().flat_map(|(s, ps)| ps.iter().map(move |p| (*s, *p))),
                                ),
                                Err(e) => {
                                    tracing::error!(error = %e, ?by_signal, "cannot pause assigned partitions")
                                }
                            }
                        }
                        tracing::info!(?by_signal, paused, "partitions assigned");
                    }
                    Err(e) => tracing::error!(error = %e, ?by_signal, "cannot assign partitions"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Commits from now on leave these partitions out, and messages of them read
                // before now are not staged. The commit in flight (if any) may still hold
                // them: it is given REVOKE_WAIT, no more (see the module doc).
                for (signal, partitions) in &by_signal {
                    let topic = self.counters.topic(*signal);
                    topic.assigned.lock().expect("assignment lock").retain(|p| !partitions.contains(p));
                    self.assignments.lock().expect("assignments lock").revoke(*signal, partitions);
                }
                let started = Instant::now();
                let dropped = self.block_on(async {
                    let waited = tokio::time::timeout(REVOKE_WAIT, self.counters.commit_gate.lock()).await;
                    let committing = waited.is_err();
                    drop(waited);
                    for (signal, partitions) in &by_signal {
                        self.staging
                            .discard_unsealed_partitions(table_bits(tables_of(*signal)), partitions.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(committing)
                });
                match dropped {
                    Ok(true) => tracing::warn!(
                        ?by_signal,
                        waited = ?started.elapsed(),
                        "revoking without waiting for the commit in flight to finish (it may still \
                         commit rows of these partitions; the table's offsets keep them once)"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, ?by_signal, "cannot drop staged rows of revoked partitions")
                    }
                }
                let revoked =
                    if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = revoked {
                    tracing::error!(error = %e, ?by_signal, "cannot unassign partitions");
                }
                tracing::info!(?by_signal, seconds = started.elapsed().as_secs_f64(), "partitions revoked");
            }
            other => tracing::error!(error = ?other, "rebalance failed"),
        }
    }
}

/// The topics a source consumes: each signal's topic and the tables its rows land in.
#[derive(Clone)]
pub(crate) struct Topics(pub(crate) Vec<ConsumedTopic>);

#[derive(Clone)]
pub(crate) struct ConsumedTopic {
    pub(crate) signal: SignalKind,
    pub(crate) name: String,
    /// The tables of the signal (logs: one; metrics: five), whose offsets of the topic decide
    /// where it starts.
    pub(crate) lakes: Vec<Arc<Lake>>,
}

impl Topics {
    /// The topic of `signal`, if it is consumed.
    pub(crate) fn of(&self, signal: SignalKind) -> Option<&ConsumedTopic> {
        self.0.iter().find(|t| t.signal == signal)
    }

    /// The signal whose topic is `name`.
    pub(crate) fn signal_of(&self, name: &str) -> Option<SignalKind> {
        self.0.iter().find(|t| t.name == name).map(|t| t.signal)
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        self.0.iter().map(|t| t.name.as_str()).collect()
    }

    /// The partitions of `tpl`, by the signal of their topic (those of unknown topics left out).
    fn partitions_by_signal(&self, tpl: &TopicPartitionList) -> Vec<(SignalKind, Vec<i32>)> {
        let mut by_signal: Vec<(SignalKind, Vec<i32>)> = Vec::new();
        for element in tpl.elements() {
            let Some(signal) = self.signal_of(element.topic()) else {
                tracing::warn!(topic = element.topic(), "a partition of a topic not consumed here, ignored");
                continue;
            };
            match by_signal.iter_mut().find(|(s, _)| *s == signal) {
                Some((_, partitions)) => partitions.push(element.partition()),
                None => by_signal.push((signal, vec![element.partition()])),
            }
        }
        by_signal
    }
}

impl LakeContext {
    /// Runs `work` from a rebalance callback. Callbacks normally run on the consumer thread,
    /// which may block; the last one can run where the consumer is dropped, on a runtime thread
    /// at shutdown, after the final flush: there it is skipped (the rows stay staged and are
    /// dropped at the next assignment).
    fn block_on<T>(&self, work: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
        if Handle::try_current().is_ok() {
            return Err("rebalance outside the consumer thread (shutting down), skipped".into());
        }
        self.handle.block_on(work)
    }

    /// Drops unsealed rows of newly assigned partitions of `signal`'s topic (they will be read
    /// again from the tables' offsets, and must not be staged twice) and sets each start offset:
    /// the lowest next offset of this topic id and cluster among the signal's tables (a metrics
    /// message has rows in up to five), or the earliest offset of a partition one of them holds
    /// no rows of (a new topic or table, or a topic deleted and created again).
    fn start_from_table(&self, tpl: &mut TopicPartitionList, signal: SignalKind, partitions: &[i32]) {
        let Some(topic) = self.topics.of(signal) else { return };
        let found = self.block_on(async {
            self.staging
                .discard_unsealed_partitions(table_bits(tables_of(signal)), partitions.to_vec())
                .await
                .map_err(|e| e.to_string())?;
            let mut states = Vec::with_capacity(topic.lakes.len());
            for lake in &topic.lakes {
                states.push(lake.state().await.map_err(|e| e.to_string())?);
            }
            Ok(states)
        });
        // Here, on the consumer thread, blocking is allowed.
        let found = found.and_then(|states| Ok((states, self.ids.identify(&topic.name, IDENTIFY_TIMEOUT)?)));
        match found {
            Ok((states, identity)) => {
                let tables: Vec<summary::PartitionOffsets> = states
                    .iter()
                    .map(|state| {
                        let found = summary::table_offsets(&state.properties, &state.summaries, &identity);
                        if let Some(recorded_for) = &found.recorded_for {
                            tracing::warn!(
                                "the table's offsets of topic {} are of {recorded_for}, but the topic \
                                 is {identity} now (deleted and created again, or another cluster): \
                                 they do not apply, its partitions start from their earliest offsets",
                                topic.name
                            );
                        }
                        found.offsets
                    })
                    .collect();
                // Per partition, the lowest next offset of the tables; absent when one has none.
                let offsets = summary::lowest_common(&tables);
                {
                    let counters = self.counters.topic(signal);
                    let mut known = counters.table_offsets.lock().expect("offsets lock");
                    known.retain(|p, _| !partitions.contains(p));
                    known.extend(offsets.iter().filter(|(p, _)| partitions.contains(p)));
                    *counters.identity.lock().expect("identity lock") = Some(identity.clone());
                }
                for partition in partitions {
                    let start =
                        offsets.get(partition).map_or(Offset::Beginning, |next| Offset::Offset(*next));
                    let _ = tpl.set_partition_offset(&topic.name, *partition, start);
                }
                tracing::info!(topic = %topic.name, ?offsets, %identity, "starting assigned partitions from the tables' offsets");
            }
            // Safe, only slower: the fence drops rows the table already holds.
            Err(error) => {
                tracing::warn!(%error, topic = %topic.name, "table offsets unavailable, starting from the group's committed offsets")
            }
        }
    }
}

/// The appender's consumer.
pub(super) type LakeConsumer = BaseConsumer<LakeContext>;
