//! Rebalances: what happens when the group gives this appender partitions or takes them away.
//!
//! - Assigned: unsealed rows of those partitions are dropped (they are read again), and each
//!   partition starts at the table's next offset of this topic id and cluster (from the table's
//!   properties and snapshot summaries), or at its earliest offset when the table holds none,
//!   never at the group's committed offset (unless the table or Kafka cannot be asked). Each
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

use telemetry_lake_common::kafka_ids::IdLookup;

use super::{IDENTIFY_TIMEOUT, SourceCounters};
use crate::{commit::summary, lake::Lake, staging::Staging};

/// How long a revocation waits for the commit in flight before it goes on without it (a
/// fraction of `max.poll.interval.ms`, the longest a member may take to rejoin).
pub(super) const REVOKE_WAIT: Duration = Duration::from_secs(2);

/// Which assignment each owned partition came with, and whether the consumer is paused. Only
/// the consumer thread changes it (rebalance callbacks run inside its polls).
#[derive(Debug, Default)]
pub(super) struct Assignments {
    last: u64,
    owned: HashMap<i32, u64>,
    /// `Some` while the consumer thread has paused consumption: every partition paused since,
    /// revoked ones included (librdkafka keeps a partition paused through a revocation, so one
    /// assigned again later would never fetch unless it is resumed too).
    paused: Option<BTreeSet<i32>>,
}

impl Assignments {
    /// A new generation for `partitions`: what was read of them before is stale.
    pub(super) fn assign(&mut self, partitions: &[i32]) {
        self.last += 1;
        for partition in partitions {
            self.owned.insert(*partition, self.last);
        }
    }

    pub(super) fn revoke(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.owned.remove(partition);
        }
    }

    /// The generation a message of `partition` read now belongs to; `None`: not owned.
    pub(super) fn generation(&self, partition: i32) -> Option<u64> {
        self.owned.get(&partition).copied()
    }

    /// Whether a message of `partition` read under `generation` may still be staged: the
    /// partition was not revoked (nor revoked and assigned again) since.
    pub(super) fn is_current(&self, partition: i32, generation: u64) -> bool {
        self.owned.get(&partition) == Some(&generation)
    }

    pub(super) fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// Notes `partitions` as paused (the consumer is paused from now on).
    pub(super) fn pausing(&mut self, partitions: impl IntoIterator<Item = i32>) {
        self.paused.get_or_insert_default().extend(partitions);
    }

    /// Ends the pause: the partitions to resume, every one paused since it began and every
    /// one `assigned` now.
    pub(super) fn resuming(&mut self, assigned: impl IntoIterator<Item = i32>) -> Vec<i32> {
        let mut partitions = self.paused.take().unwrap_or_default();
        partitions.extend(assigned);
        partitions.into_iter().collect()
    }
}

/// The consumer's context: rebalance callbacks run on the consumer thread.
pub(super) struct LakeContext {
    pub(super) handle: Handle,
    pub(super) staging: Staging,
    pub(super) lake: Arc<Lake>,
    pub(super) topic: String,
    pub(super) counters: Arc<SourceCounters>,
    pub(super) ids: Arc<IdLookup>,
    pub(super) assignments: Mutex<Assignments>,
}

impl ClientContext for LakeContext {}

impl ConsumerContext for LakeContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.start_from_table(tpl, &partitions);
                let assigned =
                    if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                match assigned {
                    Ok(()) => {
                        let mut owned = self.counters.assigned.lock().expect("assignment lock");
                        owned.extend(&partitions);
                        owned.sort_unstable();
                        owned.dedup();
                        drop(owned);
                        let mut assignments = self.assignments.lock().expect("assignments lock");
                        assignments.assign(&partitions);
                        // Consumption is paused: these must not fetch either (wait_paused
                        // would seek back every message they bring, again and again).
                        let paused = assignments.is_paused();
                        if paused {
                            match consumer.pause(tpl) {
                                Ok(()) => assignments.pausing(partitions.iter().copied()),
                                Err(e) => {
                                    tracing::error!(error = %e, ?partitions, "cannot pause assigned partitions")
                                }
                            }
                        }
                        tracing::info!(?partitions, paused, "partitions assigned");
                    }
                    Err(e) => tracing::error!(error = %e, ?partitions, "cannot assign partitions"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Commits from now on leave these partitions out, and messages of them read
                // before now are not staged. The commit in flight (if any) may still hold
                // them: it is given REVOKE_WAIT, no more (see the module doc).
                self.counters.assigned.lock().expect("assignment lock").retain(|p| !partitions.contains(p));
                self.assignments.lock().expect("assignments lock").revoke(&partitions);
                let started = Instant::now();
                let dropped = self.block_on(async {
                    let waited = tokio::time::timeout(REVOKE_WAIT, self.counters.commit_gate.lock()).await;
                    let committing = waited.is_err();
                    drop(waited);
                    self.staging
                        .discard_unsealed_partitions(partitions.clone())
                        .await
                        .map(|_| committing)
                        .map_err(|e| e.to_string())
                });
                match dropped {
                    Ok(true) => tracing::warn!(
                        ?partitions,
                        waited = ?started.elapsed(),
                        "revoking without waiting for the commit in flight to finish (it may still \
                         commit rows of these partitions; the table's offsets keep them once)"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, ?partitions, "cannot drop staged rows of revoked partitions")
                    }
                }
                let revoked =
                    if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = revoked {
                    tracing::error!(error = %e, ?partitions, "cannot unassign partitions");
                }
                tracing::info!(?partitions, seconds = started.elapsed().as_secs_f64(), "partitions revoked");
            }
            other => tracing::error!(error = ?other, "rebalance failed"),
        }
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

    /// Drops unsealed rows of newly assigned partitions (they will be read again from the
    /// table's offsets, and must not be staged twice) and sets each start offset: the table's
    /// next offset of this topic id and cluster, or the earliest offset of a partition the
    /// table holds no rows of (a new topic, or one deleted and created again).
    fn start_from_table(&self, tpl: &mut TopicPartitionList, partitions: &[i32]) {
        let found = self.block_on(async {
            self.staging.discard_unsealed_partitions(partitions.to_vec()).await.map_err(|e| e.to_string())?;
            self.lake.state().await.map_err(|e| e.to_string())
        });
        // Here, on the consumer thread, blocking is allowed.
        let found = found.and_then(|state| Ok((state, self.ids.identify(&self.topic, IDENTIFY_TIMEOUT)?)));
        match found {
            Ok((state, identity)) => {
                let found = summary::table_offsets(&state.properties, &state.summaries, &identity);
                if let Some(recorded_for) = &found.recorded_for {
                    tracing::warn!(
                        "the table's offsets of topic {} are of {recorded_for}, but the topic is \
                         {identity} now (deleted and created again, or another cluster): they do \
                         not apply, its partitions start from their earliest offsets",
                        self.topic
                    );
                }
                let offsets = found.offsets;
                {
                    let mut known = self.counters.table_offsets.lock().expect("offsets lock");
                    known.retain(|p, _| !partitions.contains(p));
                    known.extend(offsets.iter().filter(|(p, _)| partitions.contains(p)));
                }
                *self.counters.identity.lock().expect("identity lock") = Some(identity.clone());
                for partition in partitions {
                    let start =
                        offsets.get(partition).map_or(Offset::Beginning, |next| Offset::Offset(*next));
                    let _ = tpl.set_partition_offset(&self.topic, *partition, start);
                }
                tracing::info!(?offsets, %identity, "starting assigned partitions from the table's offsets");
            }
            // Safe, only slower: the fence drops rows the table already holds.
            Err(error) => {
                tracing::warn!(%error, "table offsets unavailable, starting from the group's committed offsets")
            }
        }
    }
}

/// The appender's consumer.
pub(super) type LakeConsumer = BaseConsumer<LakeContext>;
