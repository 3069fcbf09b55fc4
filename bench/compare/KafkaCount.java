// Topic chores of the side-by-side benchmark (compare.py), with Kafka's own Java client (the
// jars ../../kafka/fetch.sh downloads): java -cp 'LIBS/*:CLASSES' KafkaCount COMMAND BOOTSTRAP TOPIC
//
//   create BOOTSTRAP TOPIC[,TOPIC...] PARTITIONS
//                            creates the topics (replication 1): the Collector's kafka exporter
//                            does not create topics and the broker does not create them itself
//   count BOOTSTRAP TOPIC [delete]
//                            reads the whole topic and prints one JSON object: messages (end
//                            minus start offsets), records read, log records in them (each value
//                            decoded as an OTLP ExportLogsServiceRequest), value bytes and
//                            undecodable values; then, with `delete`, deletes the topic (frees
//                            the broker's disk between runs)
//   delete BOOTSTRAP TOPIC   deletes the topic
//
// Counting walks the protobuf wire format by hand (field 1 resource_logs -> field 2 scope_logs
// -> field 2 log_records), so no protobuf jar is needed. Traces and metrics requests have the same
// layout (resource_spans -> scope_spans -> spans; resource_metrics -> scope_metrics -> metrics),
// so the same count is their spans, or their metrics (the benchmark's carry one data point each). Exit code 1 with a message on stderr
// when the broker cannot be reached or the end offsets are not reached within 10 minutes.
import java.time.Duration;
import java.util.*;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class KafkaCount {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: KafkaCount create|count|delete BOOTSTRAP TOPIC [PARTITIONS|delete]");
            System.exit(2);
        }
        String bootstrap = args[1];
        String topic = args[2];
        switch (args[0]) {
            case "create" -> create(bootstrap, topic, Integer.parseInt(args[3]));
            case "count" -> {
                count(bootstrap, topic);
                if (args.length > 3 && args[3].equals("delete")) {
                    delete(bootstrap, topic);
                }
            }
            case "delete" -> delete(bootstrap, topic);
            default -> {
                System.err.println("unknown command " + args[0]);
                System.exit(2);
            }
        }
    }

    static Properties common(String bootstrap) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("request.timeout.ms", "30000");
        props.put("default.api.timeout.ms", "60000");
        return props;
    }

    static void create(String bootstrap, String topics, int partitions) throws Exception {
        List<NewTopic> list = new ArrayList<>();
        for (String topic : topics.split(",")) {
            list.add(new NewTopic(topic, partitions, (short) 1));
        }
        try (Admin admin = Admin.create(common(bootstrap))) {
            admin.createTopics(list).all().get(60, TimeUnit.SECONDS);
        }
    }

    static void delete(String bootstrap, String topic) throws Exception {
        try (Admin admin = Admin.create(common(bootstrap))) {
            admin.deleteTopics(List.of(topic)).all().get(60, TimeUnit.SECONDS);
        }
    }

    static void count(String bootstrap, String topic) throws Exception {
        Properties props = common(bootstrap);
        props.put("enable.auto.commit", "false");
        // Values reach ~100 KB (a request's spans of one service): 500 of them stay far below -Xmx512m.
        props.put("max.poll.records", "500");
        props.put("fetch.max.bytes", String.valueOf(64 << 20));
        props.put("max.partition.fetch.bytes", String.valueOf(16 << 20));
        try (KafkaConsumer<byte[], byte[]> consumer =
                new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> parts = new ArrayList<>();
            consumer.partitionsFor(topic, Duration.ofSeconds(60))
                    .forEach(p -> parts.add(new TopicPartition(topic, p.partition())));
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            Map<TopicPartition, Long> begin = consumer.beginningOffsets(parts, Duration.ofSeconds(60));
            Map<TopicPartition, Long> end = consumer.endOffsets(parts, Duration.ofSeconds(60));
            long messages = 0;
            for (TopicPartition p : parts) {
                messages += end.get(p) - begin.get(p);
            }
            long deadline = System.nanoTime() + TimeUnit.MINUTES.toNanos(10);
            long records = 0, logs = 0, bytes = 0, undecodable = 0;
            while (parts.stream().anyMatch(p -> consumer.position(p) < end.get(p))) {
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("did not reach the end offsets " + end + " within 10 minutes");
                }
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                    if (r.offset() >= end.get(new TopicPartition(r.topic(), r.partition()))) {
                        continue;
                    }
                    records++;
                    byte[] value = r.value() == null ? new byte[0] : r.value();
                    bytes += value.length;
                    try {
                        logs += logRecords(value);
                    } catch (IllegalArgumentException e) {
                        undecodable++;
                    }
                }
            }
            StringBuilder ends = new StringBuilder("[");
            for (int i = 0; i < parts.size(); i++) {
                ends.append(i == 0 ? "" : ",").append(end.get(parts.get(i)));
            }
            ends.append(']');
            System.out.printf(
                    "{\"topic\":\"%s\",\"partitions\":%d,\"messages\":%d,\"records_read\":%d,\"logs\":%d,"
                            + "\"value_bytes\":%d,\"undecodable\":%d,\"end_offsets\":%s}%n",
                    topic, parts.size(), messages, records, logs, bytes, undecodable, ends);
        }
    }

    /** Log records in an ExportLogsServiceRequest (resource_logs=1 -> scope_logs=2 -> log_records=2). */
    static long logRecords(byte[] request) {
        long n = 0;
        for (int[] resource : lengthDelimited(request, 0, request.length, 1)) {
            for (int[] scope : lengthDelimited(request, resource[0], resource[1], 2)) {
                n += lengthDelimited(request, scope[0], scope[1], 2).size();
            }
        }
        return n;
    }

    /** [start, end) of every length-delimited field `field` of the message in buf[from, to). */
    static List<int[]> lengthDelimited(byte[] buf, int from, int to, int field) {
        List<int[]> out = new ArrayList<>();
        int[] pos = {from};
        while (pos[0] < to) {
            long key = varint(buf, pos, to);
            int wire = (int) (key & 7);
            long number = key >>> 3;
            switch (wire) {
                case 0 -> varint(buf, pos, to);
                case 1 -> pos[0] += 8;
                case 5 -> pos[0] += 4;
                case 2 -> {
                    long len = varint(buf, pos, to);
                    if (len < 0 || pos[0] + len > to) {
                        throw new IllegalArgumentException("length past the end of the message");
                    }
                    if (number == field) {
                        out.add(new int[] {pos[0], (int) (pos[0] + len)});
                    }
                    pos[0] += (int) len;
                }
                default -> throw new IllegalArgumentException("unexpected wire type " + wire);
            }
            if (pos[0] > to) {
                throw new IllegalArgumentException("field past the end of the message");
            }
        }
        return out;
    }

    static long varint(byte[] buf, int[] pos, int to) {
        long value = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (pos[0] >= to) {
                throw new IllegalArgumentException("truncated varint");
            }
            byte b = buf[pos[0]++];
            value |= (long) (b & 0x7f) << shift;
            if (b >= 0) {
                return value;
            }
        }
        throw new IllegalArgumentException("varint too long");
    }
}
