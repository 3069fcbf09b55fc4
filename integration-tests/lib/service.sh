# shellcheck shell=bash
# The start/wait/stop/kill skeleton of the test servers' scripts (catalog/rest.sh, catalog/s3.sh,
# catalog/postgres.sh, kafka/broker.sh), sourced by each; they keep only what is their own.
#
#   svc_init NAME USAGE MAX_ARGS "$@"   checks 3..MAX_ARGS arguments (else USAGE, exit 2) and sets
#                                       svc_name, svc_argc, command, dir (created, absolute),
#                                       port and pid_file (DIR/NAME.pid)
#   svc_expect_args N                   exit 2 with the usage unless there were N arguments
#   svc_usage                           print the usage, exit 2
#   running_pid                         print the pid from pid_file if that process lives; else fail
#   svc_refuse_if_running               exit 1 if a process from pid_file still runs
#   svc_launch LOG CMD...               append a start header to LOG, run CMD in the background
#                                       (stdout and stderr to LOG, stdin from /dev/null) and write
#                                       its pid to pid_file; CMD must exec what it runs (nohup,
#                                       env, setpriv do), so that pid is the server's
#   svc_wait WHAT LOG PROBE...          run PROBE until it succeeds; fail with LOG's tail when the
#                                       process is gone, or after WAIT_SECONDS (default 60)
#   svc_stop SIGNAL [SECONDS]           send SIGNAL to the running process, wait up to SECONDS
#                                       (default 30) for its exit, then SIGKILL; remove pid_file

svc_usage() {
    echo "usage: $svc_usage" >&2
    exit 2
}

svc_init() {
    svc_name="$1"
    svc_usage="$2"
    local max_args="$3"
    shift 3
    svc_argc=$#
    [[ $# -ge 3 && $# -le $max_args ]] || svc_usage
    command="$1"
    dir="$(mkdir -p "$2" && cd "$2" && pwd)"
    port="$3"
    pid_file="$dir/$svc_name.pid"
}

svc_expect_args() {
    [[ $svc_argc -eq $1 ]] || svc_usage
}

running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid="$(cat "$pid_file")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

svc_refuse_if_running() {
    local pid
    if pid="$(running_pid)"; then
        echo "$svc_name.sh: already running as pid $pid" >&2
        exit 1
    fi
}

svc_launch() {
    local log="$1"
    shift
    echo "===== start at $(date +%T) on 127.0.0.1:$port =====" >>"$log"
    "$@" >>"$log" 2>&1 </dev/null &
    echo $! >"$pid_file"
}

svc_wait() {
    local what="$1" log="$2"
    shift 2
    local seconds="${WAIT_SECONDS:-60}"
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ! running_pid >/dev/null; then
            echo "$svc_name.sh: $what is not running; tail of $log:" >&2
            tail -20 "$log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "$svc_name.sh: $what on port $port not ready after ${seconds}s; see $log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

svc_stop() {
    local signal="$1" seconds="${2:-30}" pid
    if pid="$(running_pid)"; then
        kill -s "$signal" "$pid"
        for _ in $(seq 1 $((seconds * 10))); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$svc_name.sh: pid $pid still alive ${seconds}s after SIG$signal; killing it" >&2
            kill -s KILL "$pid"
        fi
    fi
    rm -f "$pid_file"
}
