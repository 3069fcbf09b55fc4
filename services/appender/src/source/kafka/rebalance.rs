//! Rebalances: what happens when the group gives this appender partitions or takes them away.
//!
//! - Assigned: unsealed rows of those partitions are dropped (they are read again), and each
//!   partition starts at the table's next offset of this topic id and cluster (from the table's
//!   properties and snapshot summaries), or at its earliest offset when the table holds none,
//!   never at the group's committed offset (unless the table or Kafka cannot be asked).
//! - Revoked: commits from now on leave the partitions out; the revocation waits for the commit
//!   in flight (which may hold them) and drops their unsealed rows before it returns, so the new
//!   owner (assigned only after that, with the eager protocol) starts from the table's offsets.

use std::sync::Arc;

use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol},
    types::RDKafkaRespErr,
};
use tokio::runtime::Handle;

use telemetry_lake_common::kafka_ids::IdLookup;

use super::{IDENTIFY_TIMEOUT, SourceCounters};
use crate::{commit::summary, lake::Lake, staging::Staging};

/// The consumer's context: rebalance callbacks run on the consumer thread.
pub(super) struct LakeContext {
    pub(super) handle: Handle,
    pub(super) staging: Staging,
    pub(super) lake: Arc<Lake>,
    pub(super) topic: String,
    pub(super) counters: Arc<SourceCounters>,
    pub(super) ids: Arc<IdLookup>,
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
                        tracing::info!(?partitions, "partitions assigned");
                    }
                    Err(e) => tracing::error!(error = %e, ?partitions, "cannot assign partitions"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Commits from now on leave these partitions out; the one in flight (if any) may
                // still hold them, so wait for it before the new owner can start.
                self.counters.assigned.lock().expect("assignment lock").retain(|p| !partitions.contains(p));
                let dropped = self.block_on(async {
                    let _in_flight = self.counters.commit_gate.lock().await;
                    self.staging
                        .discard_unsealed_partitions(partitions.clone())
                        .await
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = dropped {
                    tracing::error!(error = %e, ?partitions, "cannot drop staged rows of revoked partitions");
                }
                let revoked =
                    if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = revoked {
                    tracing::error!(error = %e, ?partitions, "cannot unassign partitions");
                }
                tracing::info!(?partitions, "partitions revoked");
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
