#!/usr/bin/env bash
# Builds Helm from the Go module proxy, once, and prints the path of the `helm` binary.
#
#   fetch-helm.sh        prints ${XDG_CACHE_HOME:-~/.cache}/telemetry-lake/helm-<version>/helm
#
# `go install helm.sh/helm/v4/cmd/helm@<version>` into a temp dir beside the cache entry, a
# check that the binary runs, then one rename: an interrupted build never leaves a half entry,
# and a lock keeps two runs from building at once. HELM_VERSION overrides the version. Needs Go
# (1.26 builds v4.3.1). Quiet on success: stdout is the path, progress goes to stderr.
set -euo pipefail

version="${HELM_VERSION:-v4.3.1}"
major="${version%%.*}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/telemetry-lake"
home="$cache/helm-$version"

if [[ -x "$home/helm" ]]; then
    echo "$home/helm"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "fetch-helm.sh: go not found; Helm $version is built from the Go module proxy (install Go 1.26+)" >&2
    exit 1
fi

mkdir -p "$cache"
exec 9>"$home.lock"
flock 9
if [[ -x "$home/helm" ]]; then
    echo "$home/helm"
    exit 0
fi

echo "fetch-helm.sh: building helm $version with $(go version | cut -d' ' -f3) (a few minutes, once)" >&2
work="$(mktemp -d "$cache/helm-$version.tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT
started=$SECONDS
# Helm's own Makefile stamps the version with -X; without it `helm version` says "unknown".
# The module and build caches of tools/build.sh (same place, same flags): what the Go tools
# already compiled (the standard library, common modules) is not compiled again.
GOPATH="$cache/go/path" GOMODCACHE="$cache/go/path/pkg/mod" GOCACHE="$cache/go/build" \
    GOBIN="$work/bin" CGO_ENABLED=0 GOFLAGS="-trimpath -modcacherw" go install \
        -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$version" \
        "helm.sh/helm/$major/cmd/helm@$version" >&2
"$work/bin/helm" version >&2
mv "$work/bin" "$home"
echo "fetch-helm.sh: built helm $version in $((SECONDS - started)) s" >&2
echo "$home/helm"
