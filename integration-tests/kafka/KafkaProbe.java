// A small Kafka client for the tests, built on Kafka's own Java client (kafka-clients from the
// jars fetch.sh downloads), run as a single-file program: java -cp 'LIBS/*' KafkaProbe.java ...
//
//   partitions BOOTSTRAP TOPIC        prints the partition count, or -1 if the topic is missing
//   dump BOOTSTRAP TOPIC              prints every record now on the topic, one JSON object a line:
//                                     {"partition","offset","key","headers":{..},"value_b64"}
//   produce BOOTSTRAP TOPIC KEY HEX   writes one record (value given in hex), acks=all
//   topic-id BOOTSTRAP TOPIC          prints the topic's id (base64, as Kafka's tools print it)
//   recreate BOOTSTRAP TOPIC N        deletes the topic, then creates it again with N partitions
//                                     (retrying while the deletion is still under way); prints
//                                     the new topic id
//
// Exit code 1 with a message on stderr when the broker cannot be reached within 30 s.
import java.time.Duration;
import java.util.*;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class KafkaProbe {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: KafkaProbe partitions|dump|produce|topic-id|recreate BOOTSTRAP TOPIC [KEY HEX | N]");
            System.exit(2);
        }
        String bootstrap = args[1];
        String topic = args[2];
        switch (args[0]) {
            case "partitions" -> System.out.println(partitions(bootstrap, topic));
            case "dump" -> dump(bootstrap, topic);
            case "produce" -> produce(bootstrap, topic, args[3], HexFormat.of().parseHex(args[4]));
            case "topic-id" -> System.out.println(topicId(bootstrap, topic));
            case "recreate" -> System.out.println(recreate(bootstrap, topic, Integer.parseInt(args[3])));
            default -> {
                System.err.println("unknown command " + args[0]);
                System.exit(2);
            }
        }
    }

    static Properties common(String bootstrap) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("request.timeout.ms", "10000");
        props.put("default.api.timeout.ms", "30000");
        return props;
    }

    static int partitions(String bootstrap, String topic) throws Exception {
        try (Admin admin = Admin.create(common(bootstrap))) {
            TopicDescription description =
                    admin.describeTopics(List.of(topic)).allTopicNames().get(30, TimeUnit.SECONDS).get(topic);
            return description.partitions().size();
        } catch (java.util.concurrent.ExecutionException e) {
            if (e.getCause() instanceof UnknownTopicOrPartitionException) {
                return -1;
            }
            throw e;
        }
    }

    static void dump(String bootstrap, String topic) throws Exception {
        Properties props = common(bootstrap);
        props.put("enable.auto.commit", "false");
        props.put("isolation.level", "read_committed");
        try (KafkaConsumer<byte[], byte[]> consumer =
                new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> parts = new ArrayList<>();
            consumer.partitionsFor(topic, Duration.ofSeconds(30))
                    .forEach(p -> parts.add(new TopicPartition(topic, p.partition())));
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            Map<TopicPartition, Long> end = consumer.endOffsets(parts, Duration.ofSeconds(30));
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            Base64.Encoder b64 = Base64.getEncoder();
            StringBuilder out = new StringBuilder();
            while (parts.stream().anyMatch(p -> consumer.position(p) < end.get(p))) {
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("did not reach the end offsets " + end + " within 60s");
                }
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                    out.setLength(0);
                    out.append("{\"partition\":").append(r.partition())
                            .append(",\"offset\":").append(r.offset())
                            .append(",\"key\":").append(r.key() == null ? "null" : json(new String(r.key(), "UTF-8")))
                            .append(",\"headers\":{");
                    String sep = "";
                    for (Header h : r.headers()) {
                        out.append(sep).append(json(h.key())).append(':')
                                .append(h.value() == null ? "null" : json(new String(h.value(), "UTF-8")));
                        sep = ",";
                    }
                    out.append("},\"value_b64\":")
                            .append(r.value() == null ? "null" : "\"" + b64.encodeToString(r.value()) + "\"")
                            .append('}');
                    System.out.println(out);
                }
            }
        }
    }

    static void produce(String bootstrap, String topic, String key, byte[] value) throws Exception {
        Properties props = common(bootstrap);
        props.put("acks", "all");
        try (KafkaProducer<byte[], byte[]> producer =
                new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer())) {
            producer.send(new ProducerRecord<>(topic, key.getBytes("UTF-8"), value)).get(30, TimeUnit.SECONDS);
        }
    }

    static String topicId(String bootstrap, String topic) throws Exception {
        try (Admin admin = Admin.create(common(bootstrap))) {
            return admin.describeTopics(List.of(topic)).allTopicNames().get(30, TimeUnit.SECONDS).get(topic)
                    .topicId().toString();
        }
    }

    static String recreate(String bootstrap, String topic, int partitions) throws Exception {
        try (Admin admin = Admin.create(common(bootstrap))) {
            admin.deleteTopics(List.of(topic)).all().get(30, TimeUnit.SECONDS);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (true) {
                try {
                    admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all()
                            .get(30, TimeUnit.SECONDS);
                    break;
                } catch (java.util.concurrent.ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException) || System.nanoTime() > deadline) {
                        throw e;
                    }
                    Thread.sleep(200);
                }
            }
        }
        // The new topic's metadata reaches the broker's cache a moment after its creation.
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        while (true) {
            try {
                return topicId(bootstrap, topic);
            } catch (java.util.concurrent.ExecutionException e) {
                if (!(e.getCause() instanceof UnknownTopicOrPartitionException) || System.nanoTime() > deadline) {
                    throw e;
                }
                Thread.sleep(200);
            }
        }
    }

    static String json(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }
}
