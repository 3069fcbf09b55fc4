#!/usr/bin/env bash
# The side-by-side benchmark: our ingester and the OpenTelemetry Collector on one Kafka broker,
# then the appender (Kafka -> Iceberg rows/s, export-to-queryable freshness).
#
#   run.sh              the full run (about 25 minutes on 2 cores): the summary git keeps in
#                       results/ here (results.md, timeline.png), the raw output in out/ here
#                       (results.json, profile-*.txt; ignored by git)
#   run.sh --quick      a smoke run of at most 2 minutes, everything in out/quick/ here
#   run.sh ARGS...      any compare.py argument (run.sh --help lists them)
#
# Builds the release `ingester` and `appender` (cargo, incremental) and runs compare.py in the
# integration tests' venv (integration-tests/setup.sh). compare.py builds what else it needs on
# first use and caches it: the load generator (loadgen/, a workspace member, cargo), the
# Collector (integration-tests/tools/build.sh, Go), Kafka (integration-tests/kafka/fetch.sh,
# Maven Central) and KafkaCount.java's class.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
eval "$("$root/dev" env)" # DUCKDB_LIB_DIR, LD_LIBRARY_PATH, CARGO_TARGET_DIR, LAKE_SHARED_DIR
(cd "$root" && cargo build --release -p telemetry-lake-ingester -p telemetry-lake-appender)
venv="$(bash "$root/integration-tests/setup.sh")"
exec "$venv/bin/python" "$here/compare.py" --bin-dir "$CARGO_TARGET_DIR/release" "$@"
