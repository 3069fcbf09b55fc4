#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on 127.0.0.1, for tests of the SQL catalog on postgres.
#
#   postgres.sh start   DIR PORT   initdb once, start in the background, write DIR/postgres.pid
#   postgres.sh wait    DIR PORT   wait (up to WAIT_SECONDS, default 60) until it accepts
#                                  connections, then create the database `catalog` if missing
#   postgres.sh stop    DIR PORT   fast shutdown (SIGINT), wait for the exit
#   postgres.sh kill    DIR PORT   SIGKILL
#   postgres.sh destroy DIR PORT   stop, then delete the cluster's files
#
# The user is `lake` with password $PG_PASSWORD (default "lake"), checked with scram-sha-256, so
# postgres://lake:$PG_PASSWORD@127.0.0.1:PORT/catalog connects. Only TCP on 127.0.0.1 (its unix
# socket lives in the cluster's directory); fsync is off: nothing here outlives its test.
#
# Uses the newest /usr/lib/postgresql/*/bin; when there is none and this runs as root, installs
# Debian's `postgresql` package. initdb and postgres refuse to run as root, so as root the
# cluster lives in a directory of its own under /tmp owned by `nobody` (DIR may sit under a
# directory nobody can enter), runs as `nobody`, and DIR/pgdata.path says where it is.
set -euo pipefail

usage() { echo "usage: postgres.sh start|wait|stop|kill|destroy DIR PORT" >&2; exit 2; }
[[ $# -eq 3 ]] || usage
command="$1"
dir="$(mkdir -p "$2" && cd "$2" && pwd)"
port="$3"
pid_file="$dir/postgres.pid"
password="${PG_PASSWORD:-lake}"

newest_bin() {
    printf '%s\n' /usr/lib/postgresql/*/bin | grep -v '\*' | sort -V | tail -1 || true
}

bin_dir() {
    local found
    found="$(newest_bin)"
    if [[ -z "$found" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        echo "postgres.sh: installing Debian's postgresql package" >&2
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2; then
            apt-get update -q >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
        fi
        found="$(newest_bin)"
    fi
    if [[ -z "$found" || ! -x "$found/initdb" ]]; then
        echo "postgres.sh: no PostgreSQL server found under /usr/lib/postgresql (apt-get install postgresql)" >&2
        exit 1
    fi
    echo "$found"
}

# Where the cluster lives, created on first use.
data_dir() {
    if [[ "$(id -u)" != 0 ]]; then
        mkdir -p "$dir/pgdata"
        echo "$dir/pgdata"
    elif [[ -f "$dir/pgdata.path" ]]; then
        cat "$dir/pgdata.path"
    else
        local data
        data="$(mktemp -d /tmp/telemetry-lake-pg.XXXXXX)"
        chown nobody: "$data"
        echo "$data" >"$dir/pgdata.path"
        echo "$data"
    fi
}

# The prefix that runs a command as the cluster's owner (exec'd, so a pid stays the command's).
owner_prefix() {
    if [[ "$(id -u)" == 0 ]]; then
        owner=(env HOME="$1" setpriv --reuid=nobody --regid=nogroup --clear-groups --)
    else
        owner=()
    fi
}

running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid="$(cat "$pid_file")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

stop() {
    local signal="$1" pid
    if pid="$(running_pid)"; then
        kill -s "$signal" "$pid"
        for _ in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "postgres.sh: pid $pid still alive 30s after SIG$signal; killing it" >&2
            kill -s KILL "$pid"
        fi
    fi
    rm -f "$pid_file"
}

case "$command" in
start)
    if pid="$(running_pid)"; then
        echo "postgres.sh: already running as pid $pid" >&2
        exit 1
    fi
    bin="$(bin_dir)"
    data="$(data_dir)"
    log="$dir/postgres.log"
    if [[ ! -f "$data/db/PG_VERSION" ]]; then
        printf '%s\n' "$password" >"$data/pwfile"
        [[ "$(id -u)" == 0 ]] && chown nobody: "$data/pwfile"
        owner_prefix "$data"
        "${owner[@]}" "$bin/initdb" -D "$data/db" -U lake --pwfile="$data/pwfile" \
            --auth=scram-sha-256 -E UTF8 --locale=C --no-sync >>"$log" 2>&1 || {
            echo "postgres.sh: initdb failed; tail of $log:" >&2
            tail -20 "$log" >&2
            exit 1
        }
        rm -f "$data/pwfile"
    fi
    echo "===== start at $(date +%T) on 127.0.0.1:$port =====" >>"$log"
    # env and setpriv exec postgres, so $! is the postmaster's pid.
    owner_prefix "$data"
    "${owner[@]}" "$bin/postgres" -D "$data/db" -p "$port" -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories="$data" -c fsync=off -c full_page_writes=off \
        -c max_connections=100 >>"$log" 2>&1 </dev/null &
    echo $! >"$pid_file"
    ;;
wait)
    bin="$(bin_dir)"
    deadline=$((SECONDS + ${WAIT_SECONDS:-60}))
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres -U lake; do
        if ! running_pid >/dev/null; then
            echo "postgres.sh: postgres is not running; tail of $dir/postgres.log:" >&2
            tail -20 "$dir/postgres.log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "postgres.sh: postgres on port $port not ready after ${WAIT_SECONDS:-60}s" >&2
            exit 1
        fi
        sleep 0.2
    done
    export PGPASSWORD="$password"
    if [[ -z "$("$bin/psql" -h 127.0.0.1 -p "$port" -U lake -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'catalog'")" ]]; then
        "$bin/createdb" -h 127.0.0.1 -p "$port" -U lake catalog
    fi
    ;;
stop) stop INT ;;
kill) stop KILL ;;
destroy)
    stop INT
    if [[ "$(id -u)" == 0 && -f "$dir/pgdata.path" ]]; then
        rm -rf "$(cat "$dir/pgdata.path")"
        rm -f "$dir/pgdata.path"
    else
        rm -rf "$dir/pgdata"
    fi
    ;;
*) usage ;;
esac
