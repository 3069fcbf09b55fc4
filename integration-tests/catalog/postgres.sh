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

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/service.sh
source "$here/../lib/service.sh"
svc_init postgres "postgres.sh start|wait|stop|kill|destroy DIR PORT" 3 "$@"
log="$dir/postgres.log"
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

case "$command" in
start)
    svc_refuse_if_running
    bin="$(bin_dir)"
    data="$(data_dir)"
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
    # env and setpriv exec postgres, so $! is the postmaster's pid.
    owner_prefix "$data"
    svc_launch "$log" "${owner[@]}" "$bin/postgres" -D "$data/db" -p "$port" -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories="$data" -c fsync=off -c full_page_writes=off -c max_connections=100
    ;;
wait)
    bin="$(bin_dir)"
    svc_wait postgres "$log" "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres -U lake
    export PGPASSWORD="$password"
    if [[ -z "$("$bin/psql" -h 127.0.0.1 -p "$port" -U lake -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'catalog'")" ]]; then
        "$bin/createdb" -h 127.0.0.1 -p "$port" -U lake catalog
    fi
    ;;
stop) svc_stop INT ;;
kill) svc_stop KILL ;;
destroy)
    svc_stop INT
    if [[ "$(id -u)" == 0 && -f "$dir/pgdata.path" ]]; then
        rm -rf "$(cat "$dir/pgdata.path")"
        rm -f "$dir/pgdata.path"
    else
        rm -rf "$dir/pgdata"
    fi
    ;;
*) svc_usage ;;
esac
