#!/usr/bin/env bash
# The whole pipeline on one machine, without containers: one Kafka node (KRaft), the ingester
# and the appender in Kafka mode, writing an Iceberg table (SQLite catalog, local warehouse).
#
#   deploy/local/run.sh         build, start everything, print the endpoints, run until Ctrl-C/SIGTERM
#   deploy/local/run.sh --tls   the same with TLS and bearer tokens on the OTLP and admin ports
#                               (certificates and tokens from deploy/tls/certs.sh in
#                               LOCAL_DATA_DIR/tls), a plain-text probe port for health, and
#                               the grpcurl / curl commands that reach them printed
#
# OTLP goes to the ingester (gRPC :4317, HTTP :4318), through the Kafka topic otel-logs, to the
# appender, which commits it to the table default.logs under LOCAL_DATA_DIR. Ctrl-C or SIGTERM
# stops the ingester (drains), then the appender (commits what it staged), then Kafka, and
# exits 0. If a service dies on its own, the rest are stopped and the exit code is 1.
#
# Settings (environment, all optional):
#   LOCAL_DATA_DIR        <repo>/data/local    Kafka's data, staging, catalog.db, warehouse/, logs/
#   LOCAL_BIND            127.0.0.1            address the services listen on (0.0.0.0: all)
#   LOCAL_KAFKA_PORT      9092                 Kafka's client port (its controller takes the next)
#   LOCAL_INGESTER_PORTS  4317,4318,4320,8080  OTLP gRPC, OTLP HTTP, admin gRPC, admin HTTP
#   LOCAL_APPENDER_PORTS  14317,14318,14320,18080
#   LOCAL_HEALTH_PORTS    8081,18081           with --tls: the ingester's and the appender's probe port
#   LOCAL_BUILD           release              release | debug | none (use LAKE_BIN_DIR as is)
#   LAKE_BIN_DIR                               with LOCAL_BUILD=none: where ingester and appender are
#   TELEMETRY_LAKE_*      passed to both services: they override the generated config files,
#                         e.g. TELEMETRY_LAKE_FLUSH__INTERVAL=2s or TELEMETRY_LAKE_KAFKA__PARTITIONS=4
#
# Needs what ./dev needs (Rust, npm for libduckdb) and, for Kafka, Java 17 and Maven
# (integration-tests/kafka/fetch.sh fetches Kafka once from Maven Central).
set -euo pipefail

tls=0
for arg in "$@"; do
    case "$arg" in
    --tls) tls=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "run.sh: unknown argument '$arg' (--tls, --help)" >&2
        exit 2
        ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
kafka_dir="$root/integration-tests/kafka"

data_dir="${LOCAL_DATA_DIR:-$root/data/local}"
bind="${LOCAL_BIND:-127.0.0.1}"
kafka_port="${LOCAL_KAFKA_PORT:-9092}"
IFS=, read -r ing_grpc ing_http ing_admin_grpc ing_admin_http <<<"${LOCAL_INGESTER_PORTS:-4317,4318,4320,8080}"
IFS=, read -r app_grpc app_http app_admin_grpc app_admin_http <<<"${LOCAL_APPENDER_PORTS:-14317,14318,14320,18080}"
IFS=, read -r ing_health app_health <<<"${LOCAL_HEALTH_PORTS:-8081,18081}"
build="${LOCAL_BUILD:-release}"
user_bin_dir="${LAKE_BIN_DIR:-}"

say() { printf '\033[1mlocal:\033[0m %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

for port in "$kafka_port" "$ing_grpc" "$ing_http" "$ing_admin_grpc" "$ing_admin_http" \
    "$app_grpc" "$app_http" "$app_admin_grpc" "$app_admin_http" "$ing_health" "$app_health"; do
    [[ "$port" =~ ^[0-9]+$ ]] || die "port '$port' is not a number (check LOCAL_*_PORT(S))"
done
# The address to reach a service at: itself, or loopback when it listens on every address.
probe_host="$bind"
[[ "$bind" == 0.0.0.0 ]] && probe_host=127.0.0.1

# ---- binaries --------------------------------------------------------------------------------
# ./dev env fetches libduckdb (once) and says where the cargo target dir is.
eval "$("$root/dev" env)"
case "$build" in
release | debug)
    say "building ingester and appender ($build)"
    flags=()
    [[ "$build" == release ]] && flags=(--release)
    (cd "$root" && cargo build --quiet "${flags[@]}" -p telemetry-lake-ingester -p telemetry-lake-appender)
    bin_dir="$CARGO_TARGET_DIR/$build"
    ;;
none) bin_dir="${user_bin_dir:-$LAKE_BIN_DIR}" ;;
*) die "LOCAL_BUILD must be release, debug or none, not '$build'" ;;
esac
for binary in ingester appender; do
    [[ -x "$bin_dir/$binary" ]] || die "$bin_dir/$binary not found (build it, or set LAKE_BIN_DIR)"
done

# ---- one instance per data dir, free ports ----------------------------------------------------
mkdir -p "$data_dir/logs" "$data_dir/run"
data_dir="$(cd "$data_dir" && pwd)"
exec 9>"$data_dir/run/lock"
flock -n 9 || die "another run.sh is using $data_dir (or set LOCAL_DATA_DIR)"

port_in_use() { (exec 3<>"/dev/tcp/$probe_host/$1") 2>/dev/null; }
check_free() {
    if port_in_use "$1"; then die "port $1 is in use; choose another with $2"; fi
}
check_free "$kafka_port" LOCAL_KAFKA_PORT
check_free "$((kafka_port + 1))" "LOCAL_KAFKA_PORT (the controller takes LOCAL_KAFKA_PORT+1)"
for p in "$ing_grpc" "$ing_http" "$ing_admin_grpc" "$ing_admin_http"; do check_free "$p" LOCAL_INGESTER_PORTS; done
for p in "$app_grpc" "$app_http" "$app_admin_grpc" "$app_admin_http"; do check_free "$p" LOCAL_APPENDER_PORTS; done
if ((tls)); then
    for p in "$ing_health" "$app_health"; do check_free "$p" LOCAL_HEALTH_PORTS; done
fi

# ---- certificates and tokens (--tls) ------------------------------------------------------------
tls_dir="$data_dir/tls"
if ((tls)); then
    sans=()
    # A specific address to listen on goes into the certificate too.
    [[ "$bind" =~ ^[0-9.]+$ && "$bind" != 0.0.0.0 && "$bind" != 127.0.0.1 ]] && sans+=("IP:$bind")
    bash "$root/deploy/tls/certs.sh" "$tls_dir" "${sans[@]}" >/dev/null 9>&-
fi

# ---- config --------------------------------------------------------------------------------
# Both services read the same sections; each gets its own ports.
write_config() { # FILE GRPC HTTP ADMIN_GRPC ADMIN_HTTP HEALTH
    local health=""
    ((tls)) && health="health_endpoint = \"$bind:$6\""
    cat >"$1" <<TOML
[otlp]
grpc_endpoint = "$bind:$2"
http_endpoint = "$bind:$3"

[admin]
grpc_endpoint = "$bind:$4"
http_endpoint = "$bind:$5"
$health

[kafka]
brokers = "127.0.0.1:$kafka_port"
topic = "otel-logs"
traces_topic = "otel-spans"
metrics_topic = "otel-metrics"
replication_factor = 1

[staging]
path = "$data_dir/appender/staging.duckdb"

[flush]
interval = "10s"

[iceberg]
catalog_type = "sql"
catalog_uri = "sqlite://$data_dir/catalog.db"
warehouse = "$data_dir/warehouse"
TOML
    if ((tls)); then
        cat >>"$1" <<TOML

[otlp.tls]
cert_file = "$tls_dir/tls.crt"
key_file = "$tls_dir/tls.key"

[otlp.auth]
tokens_file = "$tls_dir/otlp-tokens"

[admin.tls]
cert_file = "$tls_dir/tls.crt"
key_file = "$tls_dir/tls.key"

[admin.auth]
tokens_file = "$tls_dir/admin-tokens"
TOML
    fi
}
mkdir -p "$data_dir/appender"
write_config "$data_dir/ingester.toml" "$ing_grpc" "$ing_http" "$ing_admin_grpc" "$ing_admin_http" "$ing_health"
write_config "$data_dir/appender.toml" "$app_grpc" "$app_http" "$app_admin_grpc" "$app_admin_http" "$app_health"

# ---- processes ---------------------------------------------------------------------------------
declare -A pids=()
kafka_started=0
stopping=0

stop_service() { # NAME: SIGTERM, then wait (up to 90 s) for its clean exit
    local name="$1" pid="${pids[$1]:-}"
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 900); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not exit 90 s after SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    local rc=0
    wait "$pid" 2>/dev/null || rc=$?
    unset "pids[$name]"
    rm -f "$data_dir/run/$name.pid"
    return "$rc"
}

stop_all() {
    ((stopping)) && return 0
    stopping=1
    local failed=0
    # Upstream first: nothing new enters, then what reached Kafka is committed, then Kafka.
    stop_service ingester || { say "ingester exited with an error; see $data_dir/logs/ingester.log"; failed=1; }
    stop_service appender || { say "appender exited with an error; see $data_dir/logs/appender.log"; failed=1; }
    if ((kafka_started)); then
        say "stopping kafka"
        bash "$kafka_dir/broker.sh" stop "$data_dir/kafka" "$kafka_port" 9>&- || failed=1
    fi
    return "$failed"
}

on_signal() {
    trap '' INT TERM
    say "$1: shutting down"
    if stop_all; then exit 0; fi
    exit 1
}
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM
trap 'stop_all || true' EXIT

# Each child runs in its own session: a Ctrl-C in the terminal reaches this script alone, which
# then stops the children in order.
start_service() { # NAME
    local name="$1"
    (cd "$data_dir" && exec setsid "$bin_dir/$name" --config "$data_dir/$name.toml" \
        >>"$data_dir/logs/$name.log" 2>&1 </dev/null 9>&-) &
    pids[$name]=$!
    echo "${pids[$name]}" >"$data_dir/run/$name.pid"
}

http_status() { # PORT PATH: the status code of GET PATH, or nothing
    local line
    { exec 3<>"/dev/tcp/$probe_host/$1"; } 2>/dev/null || return 0
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$probe_host" >&3
    read -r -t 5 line <&3 || true
    exec 3>&-
    line="${line#HTTP/* }"
    echo "${line%% *}"
}

wait_ready() { # NAME ADMIN_HTTP_PORT
    local name="$1" deadline=$((SECONDS + 120))
    until [[ "$(http_status "$2" /readyz)" == 200 ]]; do
        if ! kill -0 "${pids[$name]}" 2>/dev/null; then
            say "$name exited during start-up; last lines of $data_dir/logs/$name.log:"
            tail -n 20 "$data_dir/logs/$name.log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            say "$name not ready after 120 s; last lines of $data_dir/logs/$name.log:"
            tail -n 20 "$data_dir/logs/$name.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

say "starting kafka on 127.0.0.1:$kafka_port (data in $data_dir/kafka)"
bash "$kafka_dir/fetch.sh" >/dev/null 9>&-
kafka_started=1
setsid bash "$kafka_dir/broker.sh" start "$data_dir/kafka" "$kafka_port" 9>&-
WAIT_SECONDS=120 bash "$kafka_dir/broker.sh" wait "$data_dir/kafka" "$kafka_port" 9>&-

say "starting the ingester (creates the topic) and the appender"
# Ready: /readyz on the admin HTTP port, or with --tls on the probe port (plain text, no token).
start_service ingester
if ((tls)); then wait_ready ingester "$ing_health"; else wait_ready ingester "$ing_admin_http"; fi
start_service appender
if ((tls)); then wait_ready appender "$app_health"; else wait_ready appender "$app_admin_http"; fi

if ((tls)); then
    # Commands that work as printed (each token is read from its file, never printed).
    ca="$(printf %q "$tls_dir/ca.crt")"
    otlp_auth="-H \"authorization: Bearer \$(cat $(printf %q "$tls_dir/otlp-tokens"))\""
    admin_auth="-H \"authorization: Bearer \$(cat $(printf %q "$tls_dir/admin-tokens"))\""
    log='{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"run.sh"}}]},'
    log+='"scopeLogs":[{"logRecords":[{"timeUnixNano":"1700000000000000000","severityText":"INFO",'
    log+='"body":{"stringValue":"hello over TLS"}}]}]}]}'
    cat <<EOF
telemetry-lake is running with TLS and bearer tokens; Ctrl-C (or SIGTERM to pid $$) stops it.
  send OTLP logs   gRPC $probe_host:$ing_grpc    HTTP https://$probe_host:$ing_http/v1/logs   (the ingester)
  kafka            127.0.0.1:$kafka_port, topics otel-logs, otel-spans, otel-metrics (traces and metrics stop there for now)
  ingester admin   gRPC $probe_host:$ing_admin_grpc    HTTP https://$probe_host:$ing_admin_http  (/stats /metrics)
  appender admin   gRPC $probe_host:$app_admin_grpc   HTTP https://$probe_host:$app_admin_http (POST /flush, /stats)
  probe ports      ingester $probe_host:$ing_health, appender $probe_host:$app_health (plain text, no token, health only)
  CA and tokens    $tls_dir/ca.crt, otlp-tokens, admin-tokens (one token a line)
  iceberg table    default.logs: catalog sqlite://$data_dir/catalog.db, warehouse $data_dir/warehouse
  logs             $data_dir/logs/{ingester,appender}.log, $data_dir/kafka/logs/server.log
Send a log, commit it, read the stats, probe (grpcurl, grpc-health-probe: integration-tests/tools/build.sh):
  \$ curl -sS --fail --cacert $ca $otlp_auth -H 'content-type: application/json' -d '$log' https://$probe_host:$ing_http/v1/logs
  \$ curl -sS --fail --cacert $ca $admin_auth -X POST https://$probe_host:$app_admin_http/flush
  \$ grpcurl -cacert $ca $admin_auth $probe_host:$ing_admin_grpc telemetry_lake.admin.v1.Admin/Stats
  \$ curl -sS --fail --cacert $ca $admin_auth https://$probe_host:$app_admin_http/stats
  \$ grpc-health-probe -addr=$probe_host:$ing_health
  \$ curl -sS --fail http://$probe_host:$app_health/readyz
EOF
else
    cat <<EOF
telemetry-lake is running; Ctrl-C (or SIGTERM to pid $$) stops it.
  send OTLP logs   gRPC $probe_host:$ing_grpc    HTTP http://$probe_host:$ing_http/v1/logs   (the ingester)
  kafka            127.0.0.1:$kafka_port, topics otel-logs, otel-spans, otel-metrics (traces and metrics stop there for now)
  ingester admin   gRPC $probe_host:$ing_admin_grpc    HTTP http://$probe_host:$ing_admin_http  (/stats /metrics /readyz)
  appender admin   gRPC $probe_host:$app_admin_grpc   HTTP http://$probe_host:$app_admin_http (POST /flush, /stats)
  iceberg table    default.logs: catalog sqlite://$data_dir/catalog.db, warehouse $data_dir/warehouse
  logs             $data_dir/logs/{ingester,appender}.log, $data_dir/kafka/logs/server.log
EOF
fi

# Until a signal, or until a service dies on its own.
while true; do
    for name in ingester appender; do
        if ! kill -0 "${pids[$name]}" 2>/dev/null; then
            rc=0
            wait "${pids[$name]}" 2>/dev/null || rc=$?
            unset "pids[$name]"
            say "$name exited on its own (code $rc); last lines of $data_dir/logs/$name.log:"
            tail -n 20 "$data_dir/logs/$name.log" >&2
            stop_all || true
            trap - EXIT
            exit 1
        fi
    done
    if [[ ! -f "$data_dir/kafka/broker.pid" ]] || ! kill -0 "$(cat "$data_dir/kafka/broker.pid")" 2>/dev/null; then
        say "kafka exited on its own; see $data_dir/kafka/logs/server.log"
        kafka_started=0
        stop_all || true
        trap - EXIT
        exit 1
    fi
    # `sleep` in the background and `wait` on it, so a signal is handled at once.
    sleep 1 &
    wait $! 2>/dev/null || true
done
