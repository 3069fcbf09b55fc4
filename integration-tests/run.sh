#!/usr/bin/env bash
# Runs the integration tests: ./run.sh [pytest args], e.g. ./run.sh -k flush -x
#
# Needs the binaries built (cargo build; TELEMETRY_LAKE_BIN_DIR overrides <repo>/target/debug)
# and, for a DuckDB linked at run time, DUCKDB_LIB_DIR (added to LD_LIBRARY_PATH by the tests).
# Paths given as arguments are relative to this directory; without any, pytest.ini's testpaths.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(bash "$here/setup.sh")"
cd "$here"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
