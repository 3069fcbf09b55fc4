//! Which topic a name stands for: the Kafka topic id (a UUID, new each time a topic is created)
//! and the cluster id, the only FFI the services have.
//!
//! ```text
//!  topic name --DescribeTopics (librdkafka admin API)--> topic id, as Kafka's tools print it
//!                                                       (base64, e.g. "Q_R4ZXkSSKWthgXo1ZsCUA")
//!  any client --rd_kafka_clusterid-----------------------> cluster id
//! ```
//!
//! rdkafka 0.39 wraps neither `rd_kafka_DescribeTopics` nor frees the string behind its
//! `fetch_cluster_id`, so both are called here through `rdkafka::bindings`, each behind a safe
//! function that owns and frees every librdkafka object it creates. Both block for up to
//! `timeout`: call them off the async workers.

use std::{
    ffi::{CStr, CString, c_char, c_void},
    fmt,
    time::Duration,
};

use rdkafka::{
    ClientConfig, admin::AdminClient, bindings as rd, client::DefaultClientContext, types::RDKafkaRespErr,
};

use crate::{
    kafka::{Side, admin_config},
    settings::KafkaSettings,
};

/// A topic as Kafka knows it now: its name, the id of this incarnation of the topic, and the
/// id of the cluster that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicIdentity {
    pub topic: String,
    pub topic_id: String,
    pub cluster_id: String,
}

impl fmt::Display for TopicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "topic {} (id {}) in cluster {}", self.topic, self.topic_id, self.cluster_id)
    }
}

/// A client that looks topic ids and the cluster id up.
pub struct IdLookup {
    admin: AdminClient<DefaultClientContext>,
}

impl IdLookup {
    /// A client reaching the cluster as `side`'s clients do (same security settings).
    pub fn new(kafka: &KafkaSettings, side: Side) -> Result<Self, String> {
        Self::from_config(&admin_config(kafka, side, "telemetry-lake-ids"))
    }

    pub fn from_config(config: &ClientConfig) -> Result<Self, String> {
        let admin = config.create().map_err(|e| format!("cannot create the kafka id lookup client: {e}"))?;
        Ok(Self { admin })
    }

    /// The identity of `topic` now. Blocks up to about twice `timeout`.
    pub fn identify(&self, topic: &str, timeout: Duration) -> Result<TopicIdentity, String> {
        let topic_id = self.topic_id(topic, timeout)?;
        let cluster_id = self.cluster_id(timeout)?;
        Ok(TopicIdentity { topic: topic.to_string(), topic_id, cluster_id })
    }

    /// The id of `topic` (base64, as Kafka's tools print it).
    pub fn topic_id(&self, topic: &str, timeout: Duration) -> Result<String, String> {
        let name = CString::new(topic).map_err(|_| format!("topic name {topic:?} holds a NUL byte"))?;
        let rk = self.admin.inner().native_ptr();
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: every object created here is destroyed by its guard before returning; the
        // pointers read from the result event live as long as the event, which outlives them.
        unsafe {
            let mut names = [name.as_ptr()];
            let collection = Guard(
                rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1),
                rd::rd_kafka_TopicCollection_destroy,
            );
            let queue = Guard(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
            rd::rd_kafka_DescribeTopics(rk, collection.0, std::ptr::null(), queue.0);
            let event = Guard(rd::rd_kafka_queue_poll(queue.0, timeout_ms), rd::rd_kafka_event_destroy);
            if event.0.is_null() {
                return Err(format!("kafka did not describe topic {topic} within {timeout:?}"));
            }
            if rd::rd_kafka_event_error(event.0) != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                let message = text(rd::rd_kafka_event_error_string(event.0));
                return Err(format!("kafka cannot describe topic {topic}: {message}"));
            }
            let result = rd::rd_kafka_event_DescribeTopics_result(event.0);
            if result.is_null() {
                return Err(format!("kafka answered the description of topic {topic} with another event"));
            }
            let mut count = 0usize;
            let topics = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
            for i in 0..count {
                let description = *topics.add(i);
                if text(rd::rd_kafka_TopicDescription_name(description)) != topic {
                    continue;
                }
                let error = rd::rd_kafka_TopicDescription_error(description);
                if !error.is_null()
                    && rd::rd_kafka_error_code(error) != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
                {
                    return Err(format!(
                        "kafka cannot describe topic {topic}: {}",
                        text(rd::rd_kafka_error_string(error))
                    ));
                }
                let uuid = rd::rd_kafka_TopicDescription_topic_id(description);
                let id = if uuid.is_null() { String::new() } else { text(rd::rd_kafka_Uuid_base64str(uuid)) };
                let id = kafka_style(&id);
                // Brokers without topic ids (before Kafka 2.8) answer the all-zero id.
                if id.is_empty() || id == "AAAAAAAAAAAAAAAAAAAAAA" {
                    return Err(format!(
                        "kafka has no topic id for topic {topic} (brokers before Kafka 2.8)"
                    ));
                }
                return Ok(id);
            }
            Err(format!("kafka's description of topic {topic} does not name it"))
        }
    }

    /// The cluster id.
    pub fn cluster_id(&self, timeout: Duration) -> Result<String, String> {
        let rk = self.admin.inner().native_ptr();
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: rd_kafka_clusterid returns a string librdkafka allocated (or NULL), freed with
        // rd_kafka_mem_free after it is copied.
        unsafe {
            let id = rd::rd_kafka_clusterid(rk, timeout_ms);
            if id.is_null() {
                return Err(format!("kafka did not tell its cluster id within {timeout:?}"));
            }
            let copied = text(id);
            rd::rd_kafka_mem_free(rk, id as *mut c_void);
            Ok(copied)
        }
    }
}

/// librdkafka prints ids in standard base64 with padding; Kafka's tools (and Java clients) in
/// URL-safe base64 without it. The ids are recorded and shown as Kafka's tools print them.
fn kafka_style(base64: &str) -> String {
    base64.trim_end_matches('=').replace('+', "-").replace('/', "_")
}

/// Destroys the librdkafka object it holds (if not NULL) when dropped.
struct Guard<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching constructor and is destroyed once.
            unsafe { (self.1)(self.0) }
        }
    }
}

/// A copy of a C string librdkafka owns ("" for NULL).
///
/// # Safety
/// `ptr` is NULL or a valid NUL-terminated string.
unsafe fn text(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_as_kafkas_tools_print_them() {
        assert_eq!(kafka_style("FVR0exR+TsOVxLhuyibuyw=="), "FVR0exR-TsOVxLhuyibuyw");
        assert_eq!(kafka_style("Q/R4ZXkSSKWthgXo1ZsCUA"), "Q_R4ZXkSSKWthgXo1ZsCUA");
    }
}
