#!/usr/bin/env bash
# Runs the integration tests: ./run.sh [pytest args], e.g. ./run.sh -k flush -x
#
# Needs the binaries built (cargo build; LAKE_BIN_DIR overrides <repo>/target/debug) and, for a
# DuckDB linked at run time, DUCKDB_LIB_DIR (added to LD_LIBRARY_PATH by the tests).
# Paths given as arguments are relative to this directory; without any, pytest.ini's testpaths.
#
# Two pytest runs: first every test not marked `serial`, in LAKE_TEST_WORKERS processes (default
# 3; pytest-xdist, one test module per process at a time, so a module's Kafka broker, object
# store or catalog is set up once), then the `serial` ones (conftest.py's SERIAL: they measure
# memory or wall-clock bounds) alone. Fails if either fails; a run that selects nothing is fine
# as long as the other selects something. LAKE_TEST_WORKERS=1, or a -m of your own: one pytest
# run, everything in one process. LAKE_TEST_TIMINGS: a file to append "NAME<TAB>SECONDS" lines
# to (./dev test's summary).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(bash "$here/setup.sh")"
cd "$here"
pytest=("$venv/bin/python" -m pytest -p no:cacheprovider)
workers="${LAKE_TEST_WORKERS:-3}"

single=false
[[ "$workers" =~ ^[0-9]+$ && "$workers" -gt 1 ]] || single=true
paths_given=false
exit_first=false
for arg in "$@"; do
    case "$arg" in
    -m | -m*) single=true ;;
    -x | --exitfirst | --maxfail*) exit_first=true ;;
    -*) ;;
    *) [[ -e "${arg%%::*}" ]] && paths_given=true ;;
    esac
done
if $single; then
    exec "${pytest[@]}" "$@"
fi

# The longest modules first: a long one handed out last would run on alone at the end.
# pytest collects a file named twice once.
paths=()
if ! $paths_given; then
    for module in test_outages test_staging test_appender_kafka test_conformance test_embedded test_deploy \
        test_rest_catalog test_ingester; do
        [[ -f "tests/$module.py" ]] && paths+=("tests/$module.py")
    done
    paths+=(tests/test_*.py)
fi

timing() { [[ -z "${LAKE_TEST_TIMINGS:-}" ]] || printf '  %s\t%s\t%s\n' "$1" "$2" "${3:-}" >>"$LAKE_TEST_TIMINGS"; }

status() { # exit status of a pytest run: 5 (nothing selected) counts as 0, noted in $nothing
    "$@" && return 0
    local rc=$?
    if [[ $rc == 5 ]]; then nothing=$((nothing + 1)); return 0; fi
    return "$rc"
}

nothing=0
started=$SECONDS
parallel=0
status "${pytest[@]}" -n "$workers" --dist loadfile -m "not serial" "${paths[@]}" "$@" || parallel=$?
timing "parallel run (-n $workers, not serial)" $((SECONDS - started)) "$([[ $parallel == 0 ]] || echo "FAILED (exit $parallel)")"
echo "run.sh: parallel run ($workers workers): exit $parallel after $((SECONDS - started)) s" >&2

serial=0
if [[ $parallel != 0 ]] && $exit_first; then
    echo "run.sh: not running the serial tests (-x or --maxfail, and the parallel run failed)" >&2
    exit "$parallel"
fi
started=$SECONDS
status "${pytest[@]}" -m serial "${paths[@]}" "$@" || serial=$?
timing "serial run (-m serial)" $((SECONDS - started)) "$([[ $serial == 0 ]] || echo "FAILED (exit $serial)")"
echo "run.sh: serial run: exit $serial after $((SECONDS - started)) s" >&2

if [[ $nothing == 2 ]]; then exit 5; fi
if [[ $parallel != 0 ]]; then exit "$parallel"; fi
exit "$serial"
