//! Every key the appender writes into an Iceberg snapshot summary or the table's properties,
//! and how it reads them back.
//!
//! A snapshot summary is where the appender leaves what exactly-once needs, in the same commit
//! as the rows:
//! - [`WRITER_ID`] and [`SEAL_ID`]: the staging file and the sealed set the rows came from, so a
//!   retried flush finds its own earlier commit instead of repeating it;
//! - [`COMMIT_ID`]: a fresh id per append attempt, so a commit whose reply was lost is found;
//! - Kafka mode: [`KAFKA_TOPIC`], [`KAFKA_TOPIC_ID`], [`KAFKA_CLUSTER_ID`] and [`KAFKA_OFFSETS`],
//!   the next offset of EVERY partition of that topic the table holds rows of (the table's
//!   offsets merged with the commit's own), from which every assignment resumes. The same four
//!   keys are set as table properties in the same commit, so the offsets survive the expiry of
//!   every snapshot that carried them and commits by other tools that carry none.
//!
//! Offsets apply only to the topic they were recorded for: the same name with another topic id
//! (the topic was deleted and created again) or in another cluster is another topic, whose
//! partitions start from their earliest offset ([`table_offsets`]). Offsets recorded before ids
//! were (name only) apply while the table holds no offsets with ids.

use std::collections::{BTreeMap, HashMap};

use telemetry_lake_common::kafka_ids::TopicIdentity;

/// The staging file that committed the rows.
pub const WRITER_ID: &str = "telemetry-lake.writer-id";
/// The sealed set the rows came from.
pub const SEAL_ID: &str = "telemetry-lake.seal-id";
/// A fresh id per append attempt.
pub const COMMIT_ID: &str = "telemetry-lake.commit-id";
/// The topic the offsets belong to.
pub const KAFKA_TOPIC: &str = "telemetry-lake.kafka.topic";
/// Kafka's id of the topic the offsets belong to (base64, as Kafka's tools print it).
pub const KAFKA_TOPIC_ID: &str = "telemetry-lake.kafka.topic-id";
/// The id of the Kafka cluster holding that topic.
pub const KAFKA_CLUSTER_ID: &str = "telemetry-lake.kafka.cluster-id";
/// `{"<partition>": <next offset>, ...}`: every partition of the topic the table holds rows of.
pub const KAFKA_OFFSETS: &str = "telemetry-lake.kafka.offsets";

/// `(snapshot id, summary properties)`: Iceberg's own keys (`added-records`, …) next to ours.
pub type SnapshotSummary = (i64, HashMap<String, String>);

/// The next offset of each partition, as the table knows it.
pub type PartitionOffsets = BTreeMap<i32, i64>;

/// Whether `summary` is the commit of sealed set `seal_id` of staging file `writer_id`.
pub fn is_sealed_set(summary: &HashMap<String, String>, writer_id: &str, seal_id: &str) -> bool {
    summary.get(WRITER_ID).map(String::as_str) == Some(writer_id)
        && summary.get(SEAL_ID).map(String::as_str) == Some(seal_id)
}

/// The properties naming a sealed set.
pub fn sealed_set(writer_id: &str, seal_id: &str) -> HashMap<String, String> {
    HashMap::from([
        (WRITER_ID.to_string(), writer_id.to_string()),
        (SEAL_ID.to_string(), seal_id.to_string()),
    ])
}

/// The properties carrying `offsets` of the topic `identity` names (for the snapshot summary
/// and the table properties alike).
pub fn kafka_offsets(identity: &TopicIdentity, offsets: &PartitionOffsets) -> [(String, String); 4] {
    let as_strings: BTreeMap<String, i64> = offsets.iter().map(|(p, o)| (p.to_string(), *o)).collect();
    let encoded = serde_json::to_string(&as_strings).expect("a map of numbers encodes");
    [
        (KAFKA_TOPIC.to_string(), identity.topic.clone()),
        (KAFKA_TOPIC_ID.to_string(), identity.topic_id.clone()),
        (KAFKA_CLUSTER_ID.to_string(), identity.cluster_id.clone()),
        (KAFKA_OFFSETS.to_string(), encoded),
    ]
}

/// Offsets one set of properties (a snapshot summary or the table's properties) records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `None`: recorded before topic ids were (by name only).
    pub topic_id: Option<String>,
    pub cluster_id: Option<String>,
    pub offsets: PartitionOffsets,
}

impl Recorded {
    /// What `properties` record for `topic` (`None`: nothing, or another topic's name).
    pub fn read(properties: &HashMap<String, String>, topic: &str) -> Option<Recorded> {
        if properties.get(KAFKA_TOPIC).map(String::as_str) != Some(topic) {
            return None;
        }
        let encoded = properties.get(KAFKA_OFFSETS)?;
        let Ok(committed) = serde_json::from_str::<BTreeMap<String, i64>>(encoded) else {
            tracing::warn!(property = KAFKA_OFFSETS, value = %encoded, "unreadable kafka offsets in the table");
            return None;
        };
        Some(Recorded {
            topic_id: properties.get(KAFKA_TOPIC_ID).cloned(),
            cluster_id: properties.get(KAFKA_CLUSTER_ID).cloned(),
            offsets: committed.into_iter().filter_map(|(p, o)| Some((p.parse().ok()?, o))).collect(),
        })
    }

    /// Whether these offsets are of the topic `identity` names: the same topic id and cluster
    /// (offsets recorded by name only are checked by [`table_offsets`]).
    pub fn is_of(&self, identity: &TopicIdentity) -> bool {
        self.topic_id.as_deref() == Some(&identity.topic_id)
            && self.cluster_id.as_deref() == Some(&identity.cluster_id)
    }

    /// `topic id X in cluster Y`, for messages.
    pub fn describe(&self) -> String {
        let or_none = |id: &Option<String>| id.clone().unwrap_or_else(|| "(none)".into());
        format!("topic id {} in cluster {}", or_none(&self.topic_id), or_none(&self.cluster_id))
    }
}

/// Raises each partition of `into` to its offset in `from`: offsets of one topic only grow.
pub fn merge_max(into: &mut PartitionOffsets, from: &PartitionOffsets) {
    for (partition, next) in from {
        let entry = into.entry(*partition).or_insert(*next);
        *entry = (*entry).max(*next);
    }
}

/// The offsets several tables of one topic all hold: per partition that every one of them
/// has, the lowest next offset (a partition some table has no offset of is left out); empty for
/// no tables.
pub fn lowest_common(tables: &[PartitionOffsets]) -> PartitionOffsets {
    let Some((first, rest)) = tables.split_first() else { return PartitionOffsets::new() };
    let mut lowest = first.clone();
    for offsets in rest {
        lowest.retain(|partition, next| match offsets.get(partition) {
            Some(theirs) => {
                *next = (*next).min(*theirs);
                true
            }
            None => false,
        });
    }
    lowest
}

/// The table's offsets of the topic `identity` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableOffsets {
    pub offsets: PartitionOffsets,
    /// The newest offsets the table holds are of another topic id or cluster: what they were
    /// recorded for (the topic was deleted and created again, or another cluster is behind the
    /// name). Those offsets do not apply.
    pub recorded_for: Option<String>,
}

/// The table's next offset per partition of the topic `identity` names, from its properties
/// and its snapshot summaries (newest first): the highest recorded for that topic id and
/// cluster. Offsets recorded by name only count while nothing has ids.
pub fn table_offsets<'a>(
    properties: &HashMap<String, String>,
    summaries: impl IntoIterator<Item = &'a SnapshotSummary>,
    identity: &TopicIdentity,
) -> TableOffsets {
    let mut with_ids = PartitionOffsets::new();
    let mut by_name = PartitionOffsets::new();
    let mut newest_with_ids: Option<Recorded> = None;
    let recorded = std::iter::once(properties).chain(summaries.into_iter().map(|(_, s)| s));
    for recorded in recorded.filter_map(|props| Recorded::read(props, &identity.topic)) {
        if recorded.topic_id.is_none() {
            merge_max(&mut by_name, &recorded.offsets);
            continue;
        }
        if recorded.is_of(identity) {
            merge_max(&mut with_ids, &recorded.offsets);
        }
        newest_with_ids.get_or_insert(recorded);
    }
    match newest_with_ids {
        None => TableOffsets { offsets: by_name, recorded_for: None },
        Some(newest) => TableOffsets {
            offsets: with_ids,
            recorded_for: (!newest.is_of(identity)).then(|| newest.describe()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_common_offsets_keep_partitions_every_table_has_at_their_lowest() {
        let a = PartitionOffsets::from([(0, 10), (1, 5), (2, 7)]);
        let b = PartitionOffsets::from([(0, 4), (1, 9)]);
        assert_eq!(lowest_common(&[a.clone(), b]), PartitionOffsets::from([(0, 4), (1, 5)]));
        assert_eq!(lowest_common(std::slice::from_ref(&a)), a);
        assert_eq!(lowest_common(&[]), PartitionOffsets::new());
    }

    fn identity(topic_id: &str, cluster_id: &str) -> TopicIdentity {
        TopicIdentity { topic: "otel-logs".into(), topic_id: topic_id.into(), cluster_id: cluster_id.into() }
    }

    fn recorded(topic: &str, ids: Option<(&str, &str)>, offsets: &str) -> HashMap<String, String> {
        let mut props = HashMap::from([
            (KAFKA_TOPIC.to_string(), topic.to_string()),
            (KAFKA_OFFSETS.to_string(), offsets.to_string()),
        ]);
        if let Some((topic_id, cluster_id)) = ids {
            props.insert(KAFKA_TOPIC_ID.into(), topic_id.into());
            props.insert(KAFKA_CLUSTER_ID.into(), cluster_id.into());
        }
        props
    }

    #[test]
    fn offsets_by_name_only_count_while_nothing_has_ids_and_other_topics_are_ignored() {
        let summaries = vec![
            (3, recorded("otel-logs", None, r#"{"0":120}"#)),
            (2, recorded("other", None, r#"{"1":999}"#)),
            (1, recorded("otel-logs", None, r#"{"0":100,"1":50}"#)),
            (0, HashMap::new()),
        ];
        let found = table_offsets(&HashMap::new(), &summaries, &identity("A", "C"));
        assert_eq!(
            found,
            TableOffsets { offsets: PartitionOffsets::from([(0, 120), (1, 50)]), recorded_for: None }
        );
        let [_, _, _, (_, encoded)] = kafka_offsets(&identity("A", "C"), &found.offsets);
        assert_eq!(encoded, r#"{"0":120,"1":50}"#);
    }

    #[test]
    fn offsets_of_another_topic_id_or_cluster_do_not_apply_and_are_named() {
        let old = vec![(1, recorded("otel-logs", Some(("A", "C")), r#"{"0":30,"1":30}"#))];
        let properties = recorded("otel-logs", Some(("A", "C")), r#"{"0":30,"1":30}"#);
        let found = table_offsets(&properties, &old, &identity("A", "C"));
        assert_eq!(found.offsets, PartitionOffsets::from([(0, 30), (1, 30)]));
        assert_eq!(found.recorded_for, None);

        let recreated = table_offsets(&properties, &old, &identity("B", "C"));
        assert_eq!(recreated.offsets, PartitionOffsets::new(), "a new topic starts from its beginning");
        assert_eq!(recreated.recorded_for.as_deref(), Some("topic id A in cluster C"));
        let other_cluster = table_offsets(&properties, &old, &identity("A", "D"));
        assert_eq!(other_cluster.offsets, PartitionOffsets::new());
        assert_eq!(other_cluster.recorded_for.as_deref(), Some("topic id A in cluster C"));

        // Once the new topic has offsets in the table, the old ones are history, not news.
        let mut summaries = old.clone();
        summaries.insert(0, (2, recorded("otel-logs", Some(("B", "C")), r#"{"0":5}"#)));
        let after = table_offsets(
            &recorded("otel-logs", Some(("B", "C")), r#"{"0":5}"#),
            &summaries,
            &identity("B", "C"),
        );
        assert_eq!(after, TableOffsets { offsets: PartitionOffsets::from([(0, 5)]), recorded_for: None });
        // Offsets by name only are older than any with ids: they no longer count.
        summaries.push((0, recorded("otel-logs", None, r#"{"3":77}"#)));
        assert_eq!(
            table_offsets(&HashMap::new(), &summaries, &identity("B", "C")).offsets,
            PartitionOffsets::from([(0, 5)])
        );
    }

    #[test]
    fn table_properties_keep_offsets_whose_snapshots_expired_and_the_highest_wins() {
        // Only the current snapshot is left, and it is a foreign one with no offsets at all.
        let summaries = vec![(9, HashMap::from([("added-records".to_string(), "3".to_string())]))];
        let properties = recorded("otel-logs", Some(("A", "C")), r#"{"0":40,"1":70}"#);
        let found = table_offsets(&properties, &summaries, &identity("A", "C"));
        assert_eq!(found.offsets, PartitionOffsets::from([(0, 40), (1, 70)]));
        // A summary that carried an older value of a partition does not lower it.
        let summaries = vec![(9, recorded("otel-logs", Some(("A", "C")), r#"{"0":41,"1":60}"#))];
        let found = table_offsets(&properties, &summaries, &identity("A", "C"));
        assert_eq!(found.offsets, PartitionOffsets::from([(0, 41), (1, 70)]));
    }

    #[test]
    fn a_sealed_set_is_found_by_writer_and_seal() {
        let props = sealed_set("w1", "4");
        assert!(is_sealed_set(&props, "w1", "4"));
        assert!(!is_sealed_set(&props, "w1", "3"));
        assert!(!is_sealed_set(&props, "w2", "4"));
    }
}
