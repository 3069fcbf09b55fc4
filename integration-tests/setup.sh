#!/usr/bin/env bash
# Builds (once) the Python venv the integration tests run in and prints its path.
#
# The venv lives in the user cache, keyed by the hash of requirements.txt, so a run with
# unchanged requirements installs nothing and a changed file gets a fresh venv beside the old.
# A marker written after the install tells a complete venv from an interrupted one (which is
# rebuilt), and a lock keeps two runs from building the same venv at once. Quiet on success:
# stdout is the venv path, progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/requirements.txt"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/telemetry-lake"
hash="$(sha256sum "$requirements" | cut -c1-12)"
venv="$cache/venv-py311-$hash"

complete() { [[ -x "$venv/bin/python" && -f "$venv/.complete" ]]; }

if complete; then
    echo "$venv"
    exit 0
fi

python=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        python="$(command -v "$candidate")"
        break
    fi
done
if [[ -z "$python" ]]; then
    echo "setup.sh: CPython 3.11 not found (tried python3.11, python3)" >&2
    exit 1
fi

mkdir -p "$cache"
exec 9>"$venv.lock"
flock 9
if ! complete; then
    echo "setup.sh: building $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$requirements" >&2
    touch "$venv/.complete"
fi
echo "$venv"
