#!/usr/bin/env bash
# An S3-compatible server (moto, from PyPI) on 127.0.0.1, for tests.
#
#   s3.sh start  DIR PORT        start in the background, write DIR/s3.pid, log to DIR/s3.log
#   s3.sh wait   DIR PORT        wait (up to WAIT_SECONDS, default 60) until it answers
#   s3.sh bucket DIR PORT NAME   create bucket NAME (path-style PUT; fine if it exists)
#   s3.sh stop   DIR PORT        SIGTERM, wait for the exit
#   s3.sh kill   DIR PORT        SIGKILL
#
# moto keeps objects in memory: a stopped server has lost them. To take the store away and
# bring it back with its objects, put gate.py in front of it. moto accepts any credentials and
# checks SigV4 signatures' shape, not their keys.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { echo "usage: s3.sh start|wait|stop|kill DIR PORT | s3.sh bucket DIR PORT NAME" >&2; exit 2; }
[[ $# -ge 3 ]] || usage
command="$1"
dir="$(mkdir -p "$2" && cd "$2" && pwd)"
port="$3"
pid_file="$dir/s3.pid"
log="$dir/s3.log"

running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid="$(cat "$pid_file")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

case "$command" in
start)
    [[ $# -eq 3 ]] || usage
    if pid="$(running_pid)"; then
        echo "s3.sh: already running as pid $pid" >&2
        exit 1
    fi
    venv="$(bash "$here/fetch.sh" moto)"
    echo "===== start at $(date +%T) on 127.0.0.1:$port =====" >>"$log"
    nohup "$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$port" >>"$log" 2>&1 </dev/null &
    echo $! >"$pid_file"
    ;;
wait)
    [[ $# -eq 3 ]] || usage
    deadline=$((SECONDS + ${WAIT_SECONDS:-60}))
    until curl -sf --noproxy '*' -o /dev/null "http://127.0.0.1:$port/"; do
        if ! running_pid >/dev/null; then
            echo "s3.sh: the S3 server is not running; tail of $log:" >&2
            tail -20 "$log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "s3.sh: S3 server on port $port not ready after ${WAIT_SECONDS:-60}s; see $log" >&2
            exit 1
        fi
        sleep 0.2
    done
    ;;
bucket)
    [[ $# -eq 4 ]] || usage
    code="$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$port/$4")"
    if [[ "$code" != 200 && "$code" != 409 ]]; then
        echo "s3.sh: creating bucket $4 answered HTTP $code; see $log" >&2
        exit 1
    fi
    ;;
stop | kill)
    [[ $# -eq 3 ]] || usage
    if pid="$(running_pid)"; then
        signal=TERM
        [[ "$command" == kill ]] && signal=KILL
        kill -s "$signal" "$pid"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -s KILL "$pid"
        fi
    fi
    rm -f "$pid_file"
    ;;
*) usage ;;
esac
