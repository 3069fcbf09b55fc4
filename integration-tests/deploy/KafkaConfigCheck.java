// Checks a Kafka server.properties with Kafka's own KafkaConfig, the validation the broker runs
// at start-up (KRaft roles, listeners, controller quorum, node id among the voters, ...).
//
//   java -cp "$(integration-tests/kafka/fetch.sh)/libs/*" KafkaConfigCheck.java FILE
//
// Prints the node id and the advertised listeners and exits 0, or prints Kafka's error and
// exits 1.
import java.io.FileReader;
import java.util.Properties;

public class KafkaConfigCheck {
    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: KafkaConfigCheck FILE");
            System.exit(2);
        }
        Properties props = new Properties();
        try (FileReader reader = new FileReader(args[0])) {
            props.load(reader);
        }
        try {
            kafka.server.KafkaConfig config = kafka.server.KafkaConfig.fromProps(props);
            System.out.println("node.id=" + config.nodeId());
            System.out.println("advertised.listeners=" + config.effectiveAdvertisedBrokerListeners().mkString(","));
        } catch (RuntimeException e) {
            System.err.println("invalid kafka config: " + e);
            System.exit(1);
        }
    }
}
