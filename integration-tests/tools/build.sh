#!/usr/bin/env bash
# Builds (once) the Go tools the conformance tests and benchmarks drive, from Go modules.
#
#   build.sh NAME...    builds what is missing and prints one binary path per NAME, in order
#   build.sh all        the same for every tool
#
# NAME is one of:
#   otelcol            an OpenTelemetry Collector made by the collector builder (ocb) from
#                      otelcol-builder.yaml beside this script (every module from one release)
#   telemetrygen       the contrib load generator, same release
#   grpcurl            github.com/fullstorydev/grpcurl
#   grpc-health-probe  github.com/grpc-ecosystem/grpc-health-probe
#
# The binaries live in ${XDG_CACHE_HOME:-~/.cache}/telemetry-lake/go-tools-<release>/bin/, one file
# per tool and version (the Collector's name carries the hash of otelcol-builder.yaml); the
# module cache and the build cache in .../telemetry-lake/go/ (shared with deploy/fetch-helm.sh,
# so helm reuses the standard library and common modules already compiled here). Each binary is
# built in a temporary directory and renamed into bin/, so an interrupted build leaves nothing
# half-made; a lock keeps two runs from building at once. Needs `go` (1.26) and the Go module
# proxy. Quiet on success: stdout is the paths, progress and build times go to stderr.
set -euo pipefail

OTEL_RELEASE="0.160.0"        # core beta modules, contrib and telemetrygen; the builder yaml must agree
OTEL_STABLE="1.66.0"          # core stable modules of the same release
GRPCURL_VERSION="v1.9.3"
HEALTH_PROBE_VERSION="v0.4.62"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
builder_yaml="$here/otelcol-builder.yaml"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/telemetry-lake/go-tools-$OTEL_RELEASE"
go_cache="${XDG_CACHE_HOME:-$HOME/.cache}/telemetry-lake/go"
bin="$cache/bin"

usage() {
    echo "usage: build.sh otelcol|telemetrygen|grpcurl|grpc-health-probe|all ..." >&2
    exit 2
}
[[ $# -ge 1 ]] || usage

# The path each tool is cached at; a new version (or builder yaml) is a new file.
target() {
    case "$1" in
    otelcol) echo "$bin/otelcol-lake-$(sha256sum "$builder_yaml" | cut -c1-12)" ;;
    telemetrygen) echo "$bin/telemetrygen-v$OTEL_RELEASE" ;;
    grpcurl) echo "$bin/grpcurl-$GRPCURL_VERSION" ;;
    grpc-health-probe) echo "$bin/grpc-health-probe-$HEALTH_PROBE_VERSION" ;;
    *) echo "build.sh: unknown tool '$1'" >&2; usage ;;
    esac
}

names=()
for name in "$@"; do
    if [[ "$name" == all ]]; then
        names+=(otelcol telemetrygen grpcurl grpc-health-probe)
    else
        target "$name" >/dev/null
        names+=("$name")
    fi
done

missing=()
for name in "${names[@]}"; do
    [[ -x "$(target "$name")" ]] || missing+=("$name")
done

go_env() {
    export GOPATH="$go_cache/path"
    export GOMODCACHE="$go_cache/path/pkg/mod"
    export GOCACHE="$go_cache/build"
    # -modcacherw: a cache anyone can delete with rm -rf; the tools need no cgo.
    export GOFLAGS="-modcacherw -buildvcs=false"
    export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
    export CGO_ENABLED=0
}

# `go install MODULE/PATH@VERSION` into a temp dir, then rename the binary to $2.
go_install() {
    local package="$1" dest="$2" tmp
    tmp="$(mktemp -d "$cache/tmp.XXXXXX")"
    GOBIN="$tmp" go install -trimpath -ldflags="-s -w" "$package" >&2
    mv "$tmp/$(basename "${package%@*}")" "$dest"
    rm -rf "$tmp"
}

build_one() {
    local name="$1" dest started
    dest="$(target "$name")"
    started=$SECONDS
    echo "build.sh: building $name into $dest" >&2
    case "$name" in
    otelcol)
        local ocb="$bin/ocb-v$OTEL_RELEASE" work
        [[ -x "$ocb" ]] || go_install "go.opentelemetry.io/collector/cmd/builder@v$OTEL_RELEASE" "$ocb"
        work="$(mktemp -d "$cache/tmp.XXXXXX")"
        cp "$builder_yaml" "$work/otelcol-builder.yaml"
        # ocb writes the generated sources and the binary under dist.output_path (./dist). Its
        # `go mod tidy` also resolves the imports of the components' own tests, and the
        # fileexporter's tests import a module the proxy does not serve at this release; -e
        # (through GOFLAGS, which only the go commands that know a flag apply) lets tidy go on.
        # The build itself needs none of those, and ocb still checks every component's version.
        (cd "$work" && GOFLAGS="-e $GOFLAGS" "$ocb" --config=otelcol-builder.yaml >"$work/ocb.log" 2>&1) || {
            echo "build.sh: the collector builder failed; last lines of its log:" >&2
            tail -40 "$work/ocb.log" >&2
            rm -rf "$work"
            exit 1
        }
        # One release for everything: no collector module of another release crept in.
        local strays
        strays="$(grep -E '(go\.opentelemetry\.io/collector|opentelemetry-collector-contrib)[^ ]* v' "$work/dist/go.mod" |
            grep -vE " v($OTEL_RELEASE|$OTEL_STABLE)( |$)" || true)"
        if [[ -n "$strays" ]]; then
            echo "build.sh: collector modules outside release $OTEL_RELEASE/$OTEL_STABLE:" >&2
            echo "$strays" >&2
            rm -rf "$work"
            exit 1
        fi
        mv "$work/dist/otelcol-lake" "$dest"
        rm -rf "$work"
        ;;
    telemetrygen)
        go_install "github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen@v$OTEL_RELEASE" "$dest"
        ;;
    grpcurl) go_install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION" "$dest" ;;
    grpc-health-probe)
        go_install "github.com/grpc-ecosystem/grpc-health-probe@$HEALTH_PROBE_VERSION" "$dest"
        ;;
    esac
    echo "build.sh: built $name in $((SECONDS - started))s" >&2
}

if [[ ${#missing[@]} -gt 0 ]]; then
    if ! command -v go >/dev/null 2>&1; then
        echo "build.sh: go not found; install Go 1.26 (the tools are built from Go modules)" >&2
        exit 1
    fi
    mkdir -p "$bin"
    exec 9>"$cache/.lock"
    flock 9
    go_env
    for name in "${missing[@]}"; do
        [[ -x "$(target "$name")" ]] || build_one "$name" # another run may have built it meanwhile
    done
    rm -rf "$cache"/tmp.* 2>/dev/null || true
fi

for name in "${names[@]}"; do
    target "$name"
done
