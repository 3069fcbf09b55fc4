//! Every key the appender writes into an Iceberg snapshot summary, and how it reads them back.
//!
//! A snapshot summary is where the appender leaves what exactly-once needs, in the same commit
//! as the rows:
//! - [`WRITER_ID`] and [`SEAL_ID`]: the staging file and the sealed set the rows came from, so a
//!   retried flush finds its own earlier commit instead of repeating it;
//! - [`COMMIT_ID`]: a fresh id per append attempt, so a commit whose reply was lost is found;
//! - [`KAFKA_TOPIC`] and [`KAFKA_OFFSETS`] (Kafka mode): the next offset of each partition the
//!   commit covers, from which every assignment resumes.

use std::collections::{BTreeMap, HashMap};

/// The staging file that committed the rows.
pub const WRITER_ID: &str = "telemetry-lake.writer-id";
/// The sealed set the rows came from.
pub const SEAL_ID: &str = "telemetry-lake.seal-id";
/// A fresh id per append attempt.
pub const COMMIT_ID: &str = "telemetry-lake.commit-id";
/// The topic the offsets belong to.
pub const KAFKA_TOPIC: &str = "telemetry-lake.kafka.topic";
/// `{"<partition>": <next offset>, ...}` of the rows the commit holds.
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

/// The properties carrying `offsets` of `topic`.
pub fn kafka_offsets(topic: &str, offsets: &PartitionOffsets) -> [(String, String); 2] {
    let as_strings: BTreeMap<String, i64> = offsets.iter().map(|(p, o)| (p.to_string(), *o)).collect();
    let encoded = serde_json::to_string(&as_strings).expect("a map of numbers encodes");
    [(KAFKA_TOPIC.to_string(), topic.to_string()), (KAFKA_OFFSETS.to_string(), encoded)]
}

/// The next offset per partition of `topic`; summaries come newest first and the newest wins.
pub fn offsets_from_summaries<'a>(
    summaries: impl IntoIterator<Item = &'a SnapshotSummary>,
    topic: &str,
) -> PartitionOffsets {
    let mut offsets = PartitionOffsets::new();
    for (_, summary) in summaries {
        if summary.get(KAFKA_TOPIC).map(String::as_str) != Some(topic) {
            continue;
        }
        let Some(encoded) = summary.get(KAFKA_OFFSETS) else { continue };
        let Ok(committed) = serde_json::from_str::<BTreeMap<String, i64>>(encoded) else {
            tracing::warn!(property = KAFKA_OFFSETS, value = %encoded, "unreadable offsets in a snapshot summary");
            continue;
        };
        for (partition, next) in committed {
            if let Ok(partition) = partition.parse() {
                offsets.entry(partition).or_insert(next);
            }
        }
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(topic: &str, offsets: &str) -> HashMap<String, String> {
        HashMap::from([
            (KAFKA_TOPIC.to_string(), topic.to_string()),
            (KAFKA_OFFSETS.to_string(), offsets.to_string()),
        ])
    }

    #[test]
    fn newest_snapshot_wins_per_partition_and_other_topics_are_ignored() {
        let summaries = vec![
            (3, summary("otel-logs", r#"{"0":120}"#)),
            (2, summary("other", r#"{"1":999}"#)),
            (1, summary("otel-logs", r#"{"0":100,"1":50}"#)),
            (0, HashMap::new()),
        ];
        let offsets = offsets_from_summaries(&summaries, "otel-logs");
        assert_eq!(offsets, PartitionOffsets::from([(0, 120), (1, 50)]));
        let [(_, topic), (_, encoded)] = kafka_offsets("otel-logs", &offsets);
        assert_eq!((topic.as_str(), encoded.as_str()), ("otel-logs", r#"{"0":120,"1":50}"#));
    }

    #[test]
    fn a_sealed_set_is_found_by_writer_and_seal() {
        let props = sealed_set("w1", "4");
        assert!(is_sealed_set(&props, "w1", "4"));
        assert!(!is_sealed_set(&props, "w1", "3"));
        assert!(!is_sealed_set(&props, "w2", "4"));
    }
}
