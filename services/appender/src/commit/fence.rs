//! Fencing: which staged rows a commit may take, and what it records about them. The committer
//! asks a [`Fencer`] and has no mode branches of its own.
//!
//! - Embedded ([`Fencer::Embedded`]): every staged row, nothing else recorded.
//! - Kafka ([`Fencer::Kafka`]): only rows of partitions this appender owns now, past the offsets
//!   the table already holds for this topic id and cluster; the commit records the next offset
//!   of every partition the table then holds (the table's offsets merged with its own), in its
//!   snapshot summary and in the table's properties ([`summary::KAFKA_OFFSETS`]); revocations
//!   wait a little while it runs ([`Fencer::hold`]), and Kafka is told afterwards (for lag
//!   monitoring).
//!   When the topic behind the name changed since the partitions were assigned (deleted and
//!   created again), the commit takes no Kafka rows and the source subscribes again, so the
//!   partitions are assigned afresh from the new topic's earliest offsets.
//!
//! A commit checked against snapshot S may land on a newer snapshot only if nothing committed
//! since holds its rows: [`Fence::rebase`] names what does (the same sealed set, committed by
//! an earlier attempt, or offsets a partition it covers moved to, committed by another
//! appender), and otherwise gives the properties to commit on top of the newer snapshots.

use std::sync::Arc;

use telemetry_lake_common::{kafka_ids::TopicIdentity, otlp::SignalKind};

use crate::commit::summary::{self, PartitionOffsets, Recorded, SnapshotSummary};
use crate::lake::{CommitProperties, TableState};
use crate::source::kafka::KafkaSource;

/// Where fences come from: the mode the appender runs in.
pub enum Fencer {
    Embedded,
    Kafka(Arc<KafkaSource>),
}

/// What one commit may take, decided from the table it checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    kafka: Option<OffsetFence>,
}

/// Kafka mode: the topic (of `signal`), the table's offsets of it and the partitions owned when
/// the table was read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OffsetFence {
    signal: SignalKind,
    identity: TopicIdentity,
    table: PartitionOffsets,
    owned: Vec<i32>,
}

impl Fencer {
    /// Held while a commit of Kafka rows runs. A revocation waits for it only briefly
    /// (`source::kafka`'s rebalance: a member that rejoins late is evicted), so the commit may
    /// land rows of partitions revoked meanwhile. That stays exactly once without the hold: a
    /// new owner starts from the table's offsets and its commits drop rows below the offsets
    /// this one recorded, and every attempt of this commit is checked against the snapshots
    /// committed since its table was read ([`Fence::rebase`]): once another owner committed a
    /// partition it holds, it fails as a conflict and is fenced again, without that partition.
    pub async fn hold(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self {
            Fencer::Embedded => None,
            Fencer::Kafka(source) => Some(source.counters.commit_gate.lock().await),
        }
    }

    /// The fence for a commit on top of the table `state`, a table of `signal`'s rows. Kafka
    /// mode asks Kafka which topic the signal's topic name stands for now; `Err` when that is
    /// unknown (never learnt, Kafka unreachable). A signal whose topic is not consumed (its rows
    /// come over OTLP only) is fenced as in embedded mode.
    pub async fn fence(&self, state: &TableState, signal: SignalKind) -> Result<Fence, String> {
        let Fencer::Kafka(source) = self else { return Ok(Fence::default()) };
        if !source.consumes(signal) {
            return Ok(Fence::default());
        }
        let (assigned, now) = source.identities(signal).await?;
        let mut owned = source.counters.topic(signal).assigned.lock().expect("assignment lock").clone();
        if assigned.as_ref().is_some_and(|assigned| *assigned != now) && !owned.is_empty() {
            tracing::warn!(
                assigned = %assigned.as_ref().expect("checked"),
                now = %now,
                "the topic changed since its partitions were assigned (deleted and created \
                 again?): committing none of its rows and subscribing again"
            );
            owned.clear();
            source.resubscribe();
        }
        let found = summary::table_offsets(&state.properties, &state.summaries, &now);
        Ok(Fence { kafka: Some(OffsetFence { signal, identity: now, table: found.offsets, owned }) })
    }

    /// After a commit that recorded `committed` on top of `fence`: tells Kafka, for lag
    /// monitoring, how far the table got.
    pub fn committed(&self, fence: Fence, committed: &CommitProperties) {
        if let (Fencer::Kafka(source), Some(offsets)) = (self, fence.kafka)
            && let Some(recorded) = Recorded::read(&committed.summary, &offsets.identity.topic)
        {
            source.commit_to_kafka(offsets.signal, &recorded.offsets);
        }
    }
}

impl Fence {
    /// The staged rows this commit may take, as SQL over the row's columns.
    pub fn sql_condition(&self) -> String {
        let Some(fence) = &self.kafka else { return "TRUE".into() };
        if fence.owned.is_empty() {
            return "kafka_partition IS NULL".into();
        }
        let owned: Vec<String> = fence.owned.iter().map(i32::to_string).collect();
        let cases: Vec<String> = fence.table.iter().map(|(p, o)| format!("WHEN {p} THEN {o}")).collect();
        let past = if cases.is_empty() {
            String::new()
        } else {
            format!(" AND kafka_offset >= CASE kafka_partition {} ELSE 0 END", cases.join(" "))
        };
        format!("(kafka_partition IS NULL OR (kafka_partition IN ({}){past}))", owned.join(", "))
    }

    /// What the commit records besides its sealed set: in Kafka mode the table's offsets
    /// merged with `next` (the next offsets of the rows it takes), in its summary and as table
    /// properties.
    pub fn commit_properties(&self, next: &PartitionOffsets) -> CommitProperties {
        let Some(fence) = &self.kafka else { return CommitProperties::default() };
        let mut all = fence.table.clone();
        summary::merge_max(&mut all, next);
        let pairs = summary::kafka_offsets(&fence.identity, &all);
        CommitProperties { summary: pairs.clone().into_iter().collect(), table: pairs.into_iter().collect() }
    }

    /// Whether this commit, prepared as `properties`, may land on top of the snapshots others
    /// committed after the table was checked (`newer`, newest first): `Err(reason)` when they
    /// may hold rows of it (the same sealed set, or new offsets of a partition in `committing`),
    /// else the properties to commit instead, carrying their offsets too.
    pub fn rebase(
        &self,
        newer: &[SnapshotSummary],
        properties: &CommitProperties,
        writer_id: &str,
        seal_id: &str,
        committing: &PartitionOffsets,
    ) -> Result<CommitProperties, String> {
        if let Some(reason) = self.overlap(newer, writer_id, seal_id, committing) {
            return Err(reason);
        }
        let Some(fence) = &self.kafka else { return Ok(properties.clone()) };
        let mut all =
            Recorded::read(&properties.summary, &fence.identity.topic).map(|r| r.offsets).unwrap_or_default();
        for (_, snapshot) in newer {
            if let Some(theirs) = Recorded::read(snapshot, &fence.identity.topic)
                && (theirs.topic_id.is_none() || theirs.is_of(&fence.identity))
            {
                summary::merge_max(&mut all, &theirs.offsets);
            }
        }
        let mut rebased = properties.clone();
        for (key, value) in summary::kafka_offsets(&fence.identity, &all) {
            rebased.summary.insert(key.clone(), value.clone());
            rebased.table.insert(key, value);
        }
        Ok(rebased)
    }

    /// Why snapshots that others committed after the table was checked (`newer`) may already
    /// hold rows of this commit: the same sealed set, or offsets of a partition in
    /// `committing` moved past the table's. `None`: no overlap.
    pub fn overlap(
        &self,
        newer: &[SnapshotSummary],
        writer_id: &str,
        seal_id: &str,
        committing: &PartitionOffsets,
    ) -> Option<String> {
        for snapshot in newer {
            let (id, properties) = snapshot;
            if summary::is_sealed_set(properties, writer_id, seal_id) {
                return Some(format!("snapshot {id} already holds sealed set {seal_id}"));
            }
            let Some(fence) = &self.kafka else { continue };
            let Some(theirs) = Recorded::read(properties, &fence.identity.topic) else { continue };
            if theirs.topic_id.is_some() && !theirs.is_of(&fence.identity) {
                continue;
            }
            let moved = |p: &i32, next: &i64| {
                committing.contains_key(p) && fence.table.get(p).is_none_or(|t| next > t)
            };
            if let Some((partition, _)) = theirs.offsets.iter().find(|(p, o)| moved(p, o)) {
                return Some(format!(
                    "snapshot {id} holds offsets of partition {partition} of {}",
                    fence.identity.topic
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn identity(topic_id: &str) -> TopicIdentity {
        TopicIdentity { topic: "otel-logs".into(), topic_id: topic_id.into(), cluster_id: "C".into() }
    }

    fn kafka(table: &[(i32, i64)], owned: &[i32]) -> Fence {
        Fence {
            kafka: Some(OffsetFence {
                signal: SignalKind::Logs,
                identity: identity("A"),
                table: table.iter().copied().collect(),
                owned: owned.to_vec(),
            }),
        }
    }

    #[test]
    fn the_fence_keeps_owned_rows_past_the_table_offsets_and_embedded_rows() {
        assert_eq!(Fence::default().sql_condition(), "TRUE");
        assert_eq!(kafka(&[], &[]).sql_condition(), "kafka_partition IS NULL");
        assert_eq!(
            kafka(&[(0, 120), (3, 7)], &[0, 1]).sql_condition(),
            "(kafka_partition IS NULL OR (kafka_partition IN (0, 1) AND kafka_offset >= \
             CASE kafka_partition WHEN 0 THEN 120 WHEN 3 THEN 7 ELSE 0 END))"
        );
        assert_eq!(kafka(&[], &[2]).sql_condition(), "(kafka_partition IS NULL OR (kafka_partition IN (2)))");
    }

    #[test]
    fn the_fence_really_filters_staged_rows() {
        let conn = duckdb::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (kafka_partition INTEGER, kafka_offset BIGINT);
             INSERT INTO t VALUES (NULL, NULL), (0, 119), (0, 120), (1, 5), (2, 9), (3, 7);",
        )
        .unwrap();
        let sql = format!(
            "SELECT count(*) FROM t WHERE {}",
            kafka(&[(0, 120), (1, 6)], &[0, 1, 3]).sql_condition()
        );
        let kept: i64 = conn.query_row(&sql, [], |r| r.get(0)).unwrap();
        // kept: the embedded row, (0,120) and (3,7); dropped: below the table, or not owned
        assert_eq!(kept, 3);
    }

    #[test]
    fn kafka_commits_record_every_partition_of_the_table_in_summary_and_table_properties() {
        let next = PartitionOffsets::from([(3, 120)]);
        assert_eq!(Fence::default().commit_properties(&next), CommitProperties::default());
        let props = kafka(&[(0, 50), (3, 100)], &[3]).commit_properties(&next);
        assert_eq!(props.summary, props.table, "the table properties carry the same offsets");
        assert_eq!(props.summary[summary::KAFKA_TOPIC], "otel-logs");
        assert_eq!(props.summary[summary::KAFKA_TOPIC_ID], "A");
        assert_eq!(props.summary[summary::KAFKA_CLUSTER_ID], "C");
        assert_eq!(
            props.summary[summary::KAFKA_OFFSETS],
            r#"{"0":50,"3":120}"#,
            "partition 0 is carried along"
        );
    }

    fn snapshot(id: i64, pairs: &[(&str, &str)]) -> SnapshotSummary {
        (id, pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn offsets(id: i64, topic_id: &str, encoded: &str) -> SnapshotSummary {
        snapshot(
            id,
            &[
                (summary::KAFKA_TOPIC, "otel-logs"),
                (summary::KAFKA_TOPIC_ID, topic_id),
                (summary::KAFKA_CLUSTER_ID, "C"),
                (summary::KAFKA_OFFSETS, encoded),
            ],
        )
    }

    #[test]
    fn overlap_names_our_own_earlier_commit_and_partitions_moved_by_others() {
        let committing = PartitionOffsets::from([(3, 120), (5, 40)]);
        let ours = snapshot(7, &[(summary::WRITER_ID, "w1"), (summary::SEAL_ID, "4")]);
        let other_seal = snapshot(8, &[(summary::WRITER_ID, "w1"), (summary::SEAL_ID, "3")]);
        // Another appender's commit carries partitions 3 and 5 along without moving them.
        let carried = offsets(9, "A", r#"{"1":10,"2":20,"3":100,"5":30}"#);
        let taken = offsets(10, "A", r#"{"2":30,"3":100,"5":35}"#);
        let by_name_only =
            snapshot(11, &[(summary::KAFKA_TOPIC, "otel-logs"), (summary::KAFKA_OFFSETS, r#"{"5":31}"#)]);
        let other_topic_id = offsets(12, "B", r#"{"3":1000}"#);
        let other_topic =
            snapshot(13, &[(summary::KAFKA_TOPIC, "other"), (summary::KAFKA_OFFSETS, r#"{"3":1000}"#)]);
        let in_kafka = kafka(&[(3, 100), (5, 30)], &[3, 5]);
        let check = |fence: &Fence, newer: &[SnapshotSummary]| fence.overlap(newer, "w1", "4", &committing);

        assert_eq!(check(&in_kafka, &[other_seal, carried.clone(), other_topic_id, other_topic]), None);
        assert_eq!(
            check(&Fence::default(), std::slice::from_ref(&ours)).unwrap(),
            "snapshot 7 already holds sealed set 4"
        );
        let reason = check(&in_kafka, &[carried.clone(), taken.clone()]).unwrap();
        assert_eq!(reason, "snapshot 10 holds offsets of partition 5 of otel-logs");
        let reason = check(&in_kafka, &[by_name_only]).unwrap();
        assert_eq!(reason, "snapshot 11 holds offsets of partition 5 of otel-logs");
        assert_eq!(check(&Fence::default(), &[taken]), None, "embedded mode has no partitions to overlap");
    }

    #[test]
    fn a_rebased_commit_carries_what_others_committed_meanwhile() {
        let fence = kafka(&[(0, 10), (1, 20)], &[1]);
        let committing = PartitionOffsets::from([(1, 25)]);
        let mut prepared = fence.commit_properties(&committing);
        prepared.summary.extend(summary::sealed_set("w1", "4"));
        // Another appender moved partition 0 (and carried an old value of 1 along).
        let newer = [offsets(9, "A", r#"{"0":15,"1":20}"#), offsets(8, "B", r#"{"0":99}"#)];
        let rebased = fence.rebase(&newer, &prepared, "w1", "4", &committing).unwrap();
        assert_eq!(rebased.summary[summary::KAFKA_OFFSETS], r#"{"0":15,"1":25}"#);
        assert_eq!(rebased.table[summary::KAFKA_OFFSETS], r#"{"0":15,"1":25}"#);
        assert_eq!(rebased.summary[summary::SEAL_ID], "4");
        let taken = [offsets(9, "A", r#"{"1":22}"#)];
        assert!(fence.rebase(&taken, &prepared, "w1", "4", &committing).is_err());
        let embedded = CommitProperties { summary: summary::sealed_set("w1", "5"), table: HashMap::new() };
        assert_eq!(Fence::default().rebase(&newer, &embedded, "w1", "5", &committing), Ok(embedded));
    }
}
