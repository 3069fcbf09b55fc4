#!/usr/bin/env bash
# One Apache Kafka node in KRaft mode (broker and controller in one JVM) on 127.0.0.1, for tests.
#
#   broker.sh start DIR PORT   format DIR/data once, start in the background, write DIR/broker.pid
#   broker.sh wait  DIR PORT   wait (up to WAIT_SECONDS, default 60) until the broker answers
#   broker.sh stop  DIR PORT   SIGTERM (controlled shutdown), wait for the exit
#   broker.sh kill  DIR PORT   SIGKILL, no shutdown at all
#
# Clients connect to 127.0.0.1:PORT; the controller listens on 127.0.0.1:PORT+1. The jars come
# from fetch.sh (cached). Logs go to DIR/logs (server.log) and DIR/broker.out. Restarting with
# the same DIR keeps the data: only an unformatted DIR is formatted.
#
# Secured listeners, besides the PLAINTEXT one (which the tests' own Java client keeps using):
#   KAFKA_TLS_DIR=D          certificates from certs.sh (D/broker.pem, D/ca.crt)
#   KAFKA_SASL_SSL_PORT=P    a SASL_SSL listener on 127.0.0.1:P, mechanism SCRAM-SHA-512
#   KAFKA_SSL_PORT=P         an SSL listener on 127.0.0.1:P that requires a client certificate
#                            signed by D/ca.crt (mTLS)
#   KAFKA_SCRAM_USERS_FILE=F SCRAM-SHA-512 users, one "NAME PASSWORD" a line, created when DIR
#                            is formatted (StorageTool format --add-scram)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/service.sh
source "$here/../lib/service.sh"
svc_init broker "broker.sh start|stop|kill|wait DIR PORT" 3 "$@"
controller_port=$((port + 1))

java_cmd() {
    local home
    home="$(bash "$here/fetch.sh")"
    JAVA_CMD=(java -Xms128m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$dir/log4j2.properties"
        -Dkafka.logs.dir="$dir/logs"
        -cp "$home/libs/*")
}

write_config() {
    mkdir -p "$dir/data" "$dir/logs"
    local listeners="PLAINTEXT://127.0.0.1:$port" secured=""
    if [[ -n "${KAFKA_SASL_SSL_PORT:-}" ]]; then
        listeners+=",SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
    fi
    if [[ -n "${KAFKA_SSL_PORT:-}" ]]; then
        listeners+=",SSL://127.0.0.1:$KAFKA_SSL_PORT"
    fi
    if [[ -n "${KAFKA_SASL_SSL_PORT:-}${KAFKA_SSL_PORT:-}" ]]; then
        local tls="${KAFKA_TLS_DIR:?KAFKA_TLS_DIR (certs.sh output) is needed for TLS listeners}"
        secured="ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.crt
listener.name.ssl.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
    fi
    cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=$listeners,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
$secured
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
    cat >"$dir/log4j2.properties" <<'PROPS'
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.apache.name = org.apache.kafka
logger.apache.level = info
PROPS
}

# This start's "Kafka Server started" line (start moves an older server.log away) and the port.
started_and_listening() {
    grep -q "Kafka Server started" "$dir/logs/server.log" 2>/dev/null &&
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

case "$command" in
start)
    svc_refuse_if_running
    write_config
    java_cmd
    # `wait` looks for this start's "Kafka Server started" line, not a previous one.
    if [[ -f "$dir/logs/server.log" ]]; then
        mv "$dir/logs/server.log" "$dir/logs/server.log.$(date +%s%N)"
    fi
    if [[ ! -f "$dir/data/meta.properties" ]]; then
        scram=()
        if [[ -n "${KAFKA_SCRAM_USERS_FILE:-}" ]]; then
            while read -r name password; do
                [[ -n "$name" ]] && scram+=(--add-scram "SCRAM-SHA-512=[name=$name,password=$password]")
            done <"$KAFKA_SCRAM_USERS_FILE"
        fi
        "${JAVA_CMD[@]}" kafka.tools.StorageTool format --standalone --ignore-formatted \
            -t "$(tr -d - </proc/sys/kernel/random/uuid | head -c 22)" \
            "${scram[@]}" -c "$dir/server.properties" >>"$dir/broker.out" 2>&1 || {
            echo "broker.sh: storage format failed; see $dir/broker.out" >&2
            tail -20 "$dir/broker.out" >&2
            exit 1
        }
    fi
    svc_launch "$dir/broker.out" nohup "${JAVA_CMD[@]}" kafka.Kafka "$dir/server.properties"
    ;;
wait)
    # The server logs this line once the broker has registered and listens for clients.
    svc_wait "the broker" "$dir/broker.out" started_and_listening
    ;;
stop) svc_stop TERM ;;
kill) svc_stop KILL ;;
*) svc_usage ;;
esac
