#!/usr/bin/env bash
# Fetches the Compose Specification's JSON schema, once, and prints its path.
#
#   fetch-compose-schema.sh   prints ${XDG_CACHE_HOME:-~/.cache}/telemetry-lake/compose-spec-<version>/compose-spec.json
#
# The schema is the one Docker Compose itself validates with: it ships in the Go module
# github.com/compose-spec/compose-go/v2 (schema/compose-spec.json), which `go mod download`
# takes from the Go module proxy (no build). Copied to a temp file, then renamed: an
# interrupted run never leaves a half entry. COMPOSE_GO_VERSION overrides the version.
set -euo pipefail

version="${COMPOSE_GO_VERSION:-v2.16.2}"
module="github.com/compose-spec/compose-go/v2"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/telemetry-lake"
home="$cache/compose-spec-$version"
schema="$home/compose-spec.json"

if [[ -f "$schema" ]]; then
    echo "$schema"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "fetch-compose-schema.sh: go not found; the schema comes from the Go module $module" >&2
    exit 1
fi
echo "fetch-compose-schema.sh: fetching $module@$version" >&2
dir="$(cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "$module@$version" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [[ -z "$dir" || ! -f "$dir/schema/compose-spec.json" ]]; then
    echo "fetch-compose-schema.sh: $module@$version has no schema/compose-spec.json" >&2
    exit 1
fi
mkdir -p "$home"
tmp="$(mktemp "$home/compose-spec.json.XXXXXX")"
cp "$dir/schema/compose-spec.json" "$tmp"
mv "$tmp" "$schema"
echo "$schema"
