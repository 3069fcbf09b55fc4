//! Fencing: which staged rows a commit may take, and what its snapshot summary records about
//! them. The committer asks a [`Fencer`] and has no mode branches of its own.
//!
//! - Embedded ([`Fencer::Embedded`]): every staged row, nothing else recorded.
//! - Kafka ([`Fencer::Kafka`]): only rows of partitions this appender owns now, past the offsets
//!   the table already holds; the commit records the next offset of every partition it covers
//!   ([`summary::KAFKA_OFFSETS`]), revocations wait while it runs ([`Fencer::hold`]), and Kafka
//!   is told afterwards (for lag monitoring only).
//!
//! A commit checked against snapshot S may land on a newer snapshot only if nothing committed
//! since holds its rows: [`Fence::overlap`] names what does (the same sealed set, committed by
//! an earlier attempt, or offsets of a partition it covers, committed by another appender).

use std::sync::Arc;

use crate::commit::summary::{self, PartitionOffsets, SnapshotSummary};
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

/// Kafka mode: the table's offsets of `topic` and the partitions owned when the table was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct OffsetFence {
    topic: String,
    table: PartitionOffsets,
    owned: Vec<i32>,
}

impl Fencer {
    /// Held while a commit of Kafka rows runs: a revocation waits for it, so the partitions'
    /// new owner starts only from offsets this commit has or has not recorded.
    pub async fn hold(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self {
            Fencer::Embedded => None,
            Fencer::Kafka(source) => Some(source.counters.commit_gate.lock().await),
        }
    }

    /// The fence for a commit on top of the table whose `summaries` (newest first) were read.
    pub fn fence(&self, summaries: &[SnapshotSummary]) -> Fence {
        match self {
            Fencer::Embedded => Fence::default(),
            Fencer::Kafka(source) => Fence {
                kafka: Some(OffsetFence {
                    table: summary::offsets_from_summaries(summaries, &source.topic),
                    owned: source.counters.assigned.lock().expect("assignment lock").clone(),
                    topic: source.topic.clone(),
                }),
            },
        }
    }

    /// After a commit that recorded `committed` on top of `fence`: tells Kafka, for lag
    /// monitoring, how far the table got.
    pub fn committed(&self, fence: Fence, committed: &PartitionOffsets) {
        if let (Fencer::Kafka(source), Some(offsets)) = (self, fence.kafka) {
            let mut table = offsets.table;
            table.extend(committed.iter().map(|(p, o)| (*p, *o)));
            source.commit_to_kafka(&table);
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

    /// What the commit's summary records besides its sealed set: the next offsets it covers.
    pub fn summary_properties(&self, next: &PartitionOffsets) -> Vec<(String, String)> {
        match &self.kafka {
            None => Vec::new(),
            Some(fence) => summary::kafka_offsets(&fence.topic, next).into(),
        }
    }

    /// Why snapshots that others committed after the table was checked (`newer`) may already
    /// hold rows of this commit: the same sealed set, or offsets of a partition in
    /// `committing`. `None`: no overlap.
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
            let theirs = summary::offsets_from_summaries([snapshot], &fence.topic);
            if let Some(partition) = theirs.keys().find(|p| committing.contains_key(p)) {
                return Some(format!(
                    "snapshot {id} holds offsets of partition {partition} of {}",
                    fence.topic
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

    fn kafka(table: &[(i32, i64)], owned: &[i32]) -> Fence {
        Fence {
            kafka: Some(OffsetFence {
                topic: "otel-logs".into(),
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
    fn only_kafka_commits_record_offsets() {
        let next = PartitionOffsets::from([(3, 120)]);
        assert!(Fence::default().summary_properties(&next).is_empty());
        let props: HashMap<String, String> = kafka(&[], &[3]).summary_properties(&next).into_iter().collect();
        assert_eq!(props[summary::KAFKA_TOPIC], "otel-logs");
        assert_eq!(props[summary::KAFKA_OFFSETS], r#"{"3":120}"#);
    }

    fn snapshot(id: i64, pairs: &[(&str, &str)]) -> SnapshotSummary {
        (id, pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn overlap_names_our_own_earlier_commit_and_partitions_taken_by_others() {
        let committing = PartitionOffsets::from([(3, 120), (5, 40)]);
        let ours = snapshot(7, &[(summary::WRITER_ID, "w1"), (summary::SEAL_ID, "4")]);
        let other_seal = snapshot(8, &[(summary::WRITER_ID, "w1"), (summary::SEAL_ID, "3")]);
        let other_partitions = snapshot(
            9,
            &[(summary::KAFKA_TOPIC, "otel-logs"), (summary::KAFKA_OFFSETS, r#"{"1":10,"2":20}"#)],
        );
        let taken = snapshot(
            10,
            &[(summary::KAFKA_TOPIC, "otel-logs"), (summary::KAFKA_OFFSETS, r#"{"2":30,"5":35}"#)],
        );
        let other_topic =
            snapshot(11, &[(summary::KAFKA_TOPIC, "other"), (summary::KAFKA_OFFSETS, r#"{"3":1}"#)]);
        let in_kafka = kafka(&[], &[3, 5]);
        let check = |fence: &Fence, newer: &[SnapshotSummary]| fence.overlap(newer, "w1", "4", &committing);

        assert_eq!(check(&in_kafka, &[other_seal, other_partitions.clone(), other_topic]), None);
        assert_eq!(
            check(&Fence::default(), std::slice::from_ref(&ours)).unwrap(),
            "snapshot 7 already holds sealed set 4"
        );
        let reason = check(&in_kafka, &[other_partitions, taken.clone()]).unwrap();
        assert_eq!(reason, "snapshot 10 holds offsets of partition 5 of otel-logs");
        assert_eq!(check(&Fence::default(), &[taken]), None, "embedded mode has no partitions to overlap");
    }
}
