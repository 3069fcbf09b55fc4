#!/usr/bin/env bash
# The soak: >= 1M log records through the ingester, Kafka and three Kafka-mode appenders into one
# Iceberg table (REST catalog on S3), through appender kill -9s, broker restarts, rebalances, a
# catalog and an object store outage, a second writer and a snapshot expiry; then counts lost and
# doubled records (soak.py's header says what it does and prints).
#
#   run.sh                  the full run (1,000,000 records, about 10 minutes on 2 cores)
#   run.sh --quick          a small run of about 2 minutes
#   run.sh ARGS...          any soak.py argument (run.sh --help lists them)
#
# Builds the release `ingester` and `appender` (cargo, incremental) unless LAKE_BIN_DIR names a
# directory that already holds them, and runs soak.py in the integration tests' venv
# (integration-tests/setup.sh). Exit status: soak.py's (0 passed, 1 lost/doubled, 2 harness).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
given_bin_dir="${LAKE_BIN_DIR:-}"
eval "$("$root/dev" env)" # DUCKDB_LIB_DIR, LD_LIBRARY_PATH, CARGO_TARGET_DIR, LAKE_SHARED_DIR
if [[ -n "$given_bin_dir" ]]; then
    export LAKE_BIN_DIR="$given_bin_dir"
else
    (cd "$root" && cargo build --release -p telemetry-lake-ingester -p telemetry-lake-appender)
    export LAKE_BIN_DIR="$CARGO_TARGET_DIR/release"
fi
venv="$(bash "$root/integration-tests/setup.sh")"
exec "$venv/bin/python" "$here/soak.py" "$@"
