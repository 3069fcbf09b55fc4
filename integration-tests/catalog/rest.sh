#!/usr/bin/env bash
# Apache Iceberg's REST catalog test server on 127.0.0.1, for tests.
#
#   rest.sh start DIR PORT   start in the background, write DIR/rest.pid, log to DIR/rest.log
#   rest.sh wait  DIR PORT   wait (up to WAIT_SECONDS, default 60) until GET /v1/config answers
#   rest.sh stop  DIR PORT   SIGTERM (Jetty stops), wait for the exit
#   rest.sh kill  DIR PORT   SIGKILL
#
# The catalog is RESTCatalogServer's own JdbcCatalog, configured by CATALOG_* variables from the
# environment (RCKUtils: CATALOG_IO__IMPL -> io-impl, CATALOG_S3_PATH__STYLE__ACCESS ->
# s3.path-style-access). Unless given, CATALOG_URI is a SQLite file in DIR, so a restart on the
# same DIR keeps every namespace and table. For an S3 warehouse, for example:
#
#   CATALOG_WAREHOUSE=s3://lake/warehouse CATALOG_IO__IMPL=org.apache.iceberg.aws.s3.S3FileIO \
#   CATALOG_S3_ENDPOINT=http://127.0.0.1:9000 CATALOG_S3_PATH__STYLE__ACCESS=true \
#   CATALOG_S3_ACCESS__KEY__ID=... CATALOG_S3_SECRET__ACCESS__KEY=... CATALOG_CLIENT_REGION=us-east-1 \
#   rest.sh start /tmp/rest 8181
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { echo "usage: rest.sh start|wait|stop|kill DIR PORT" >&2; exit 2; }
[[ $# -eq 3 ]] || usage
command="$1"
dir="$(mkdir -p "$2" && cd "$2" && pwd)"
port="$3"
pid_file="$dir/rest.pid"
log="$dir/rest.log"

running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid="$(cat "$pid_file")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

case "$command" in
start)
    if pid="$(running_pid)"; then
        echo "rest.sh: already running as pid $pid" >&2
        exit 1
    fi
    home="$(bash "$here/fetch.sh" rest)"
    export CATALOG_URI="${CATALOG_URI:-jdbc:sqlite:file:$dir/catalog.db}"
    # The AWS SDK would otherwise look for ~/.aws and instance metadata.
    export AWS_REGION="${AWS_REGION:-${CATALOG_CLIENT_REGION:-us-east-1}}"
    echo "===== start at $(date +%T) on 127.0.0.1:$port =====" >>"$log"
    nohup java -Xms64m -Xmx384m -XX:+UseSerialGC -Djava.awt.headless=true \
        -cp "$home/libs/*:$home/classes" org.apache.iceberg.rest.LoopbackRestCatalog 127.0.0.1 "$port" \
        >>"$log" 2>&1 </dev/null &
    echo $! >"$pid_file"
    ;;
wait)
    deadline=$((SECONDS + ${WAIT_SECONDS:-60}))
    until curl -sf --noproxy '*' -o /dev/null "http://127.0.0.1:$port/v1/config"; do
        if ! running_pid >/dev/null; then
            echo "rest.sh: the catalog is not running; tail of $log:" >&2
            tail -20 "$log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "rest.sh: catalog on port $port not ready after ${WAIT_SECONDS:-60}s; see $log" >&2
            exit 1
        fi
        sleep 0.2
    done
    ;;
stop | kill)
    if pid="$(running_pid)"; then
        signal=TERM
        [[ "$command" == kill ]] && signal=KILL
        kill -s "$signal" "$pid"
        for _ in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "rest.sh: pid $pid still alive 30s after SIG$signal; killing it" >&2
            kill -s KILL "$pid"
        fi
    fi
    rm -f "$pid_file"
    ;;
*) usage ;;
esac
