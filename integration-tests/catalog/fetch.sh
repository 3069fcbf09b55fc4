#!/usr/bin/env bash
# Fetches, once, what the production-lake tests run: an Iceberg REST catalog and an S3 server.
#
#   fetch.sh rest    Apache Iceberg's REST catalog test server (RESTCatalogServer from the
#                    iceberg-open-api test fixtures) with iceberg-core (+ its tests jar, which
#                    holds the servlet), iceberg-aws + iceberg-aws-bundle (S3FileIO), sqlite-jdbc
#                    (the JdbcCatalog behind it), Jetty 12 and hadoop-client (its Configuration),
#                    all from Maven Central; LoopbackRestCatalog.java compiled beside them.
#                    Prints the directory holding libs/ and classes/.
#   fetch.sh moto    moto[s3] (an S3-compatible server, `moto_server`) with Flask, in a venv
#                    pinned by moto-requirements.txt. Prints the venv directory.
#
# Each lands in ${XDG_CACHE_HOME:-~/.cache}/telemetry-lake/<name>-<version>, built in a temp dir
# and renamed into place, so an interrupted fetch leaves nothing half done; a lock keeps two
# runs from fetching the same thing at once. Quiet on success: stdout is the directory,
# progress goes to stderr. ICEBERG_VERSION overrides the Iceberg version (1.11.0: the newest
# whose test fixtures are on Maven Central).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/telemetry-lake"
iceberg_version="${ICEBERG_VERSION:-1.11.0}"
jetty_version="12.1.14"   # Iceberg 1.11's server classes use Jetty 12.1 (ee10, jetty-compression)
hadoop_version="3.4.1"
sqlite_jdbc_version="3.51.1.0"
slf4j_version="2.0.17"

usage() { echo "usage: fetch.sh rest|moto" >&2; exit 2; }
[[ $# -eq 1 ]] || usage

# Runs "$build TMPDIR" under a lock unless $dest/.complete exists, then renames TMPDIR to $dest.
cached() {
    local dest="$1" build="$2"
    if [[ -f "$dest/.complete" ]]; then
        echo "$dest"
        return
    fi
    mkdir -p "$cache"
    exec 9>"$dest.lock"
    flock 9
    if [[ ! -f "$dest/.complete" ]]; then
        local tmp
        tmp="$(mktemp -d "$dest.tmp.XXXXXX")"
        # shellcheck disable=SC2064
        trap "rm -rf '$tmp'" EXIT
        "$build" "$tmp"
        touch "$tmp/.complete"
        rm -rf "$dest"
        mv "$tmp" "$dest"
        trap - EXIT
    fi
    exec 9>&-
    echo "$dest"
}

need() {
    local tool
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "fetch.sh: $tool not found (apt-get install maven openjdk-17-jdk-headless)" >&2
            exit 1
        fi
    done
}

build_rest() {
    local out="$1"
    need mvn java javac
    echo "fetch.sh: fetching the Iceberg $iceberg_version REST catalog into $out" >&2
    cat >"$out/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>telemetry-lake</groupId>
  <artifactId>rest-catalog-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencyManagement>
    <dependencies>
      <dependency><groupId>org.eclipse.jetty</groupId><artifactId>jetty-bom</artifactId>
        <version>$jetty_version</version><type>pom</type><scope>import</scope></dependency>
      <dependency><groupId>org.eclipse.jetty.ee10</groupId><artifactId>jetty-ee10-bom</artifactId>
        <version>$jetty_version</version><type>pom</type><scope>import</scope></dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-open-api</artifactId>
      <version>$iceberg_version</version><classifier>test-fixtures</classifier></dependency>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-core</artifactId>
      <version>$iceberg_version</version></dependency>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-core</artifactId>
      <version>$iceberg_version</version><classifier>tests</classifier></dependency>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-aws</artifactId>
      <version>$iceberg_version</version></dependency>
    <dependency><groupId>org.apache.iceberg</groupId><artifactId>iceberg-aws-bundle</artifactId>
      <version>$iceberg_version</version></dependency>
    <dependency><groupId>org.xerial</groupId><artifactId>sqlite-jdbc</artifactId>
      <version>$sqlite_jdbc_version</version></dependency>
    <dependency><groupId>org.eclipse.jetty</groupId><artifactId>jetty-server</artifactId></dependency>
    <dependency><groupId>org.eclipse.jetty.ee10</groupId><artifactId>jetty-ee10-servlet</artifactId></dependency>
    <dependency><groupId>org.eclipse.jetty.compression</groupId><artifactId>jetty-compression-server</artifactId></dependency>
    <dependency><groupId>org.eclipse.jetty.compression</groupId><artifactId>jetty-compression-gzip</artifactId></dependency>
    <dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-client-api</artifactId>
      <version>$hadoop_version</version></dependency>
    <dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-client-runtime</artifactId>
      <version>$hadoop_version</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId>
      <version>$slf4j_version</version></dependency>
  </dependencies>
</project>
POM
    mvn -B -q -f "$out/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$out/libs" >&2
    mkdir -p "$out/classes"
    javac -nowarn -d "$out/classes" -cp "$out/libs/*" "$here/LoopbackRestCatalog.java" >&2
    rm "$out/pom.xml"
}

build_moto() {
    local out="$1" python=""
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 9))' 2>/dev/null; then
            python="$(command -v "$candidate")"
            break
        fi
    done
    [[ -n "$python" ]] || { echo "fetch.sh: python 3.9 or newer not found" >&2; exit 1; }
    echo "fetch.sh: installing moto into $out" >&2
    "$python" -m venv "$out"
    "$out/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$here/moto-requirements.txt" >&2
    # Renamed after the install, so its bin/ scripts name a stale path: run `python -m moto.server`.
}

case "$1" in
rest)
    cached "$cache/iceberg-rest-$iceberg_version" build_rest
    ;;
moto)
    moto_version="$(sed -n 's/^moto\[[^]]*\]==//p' "$here/moto-requirements.txt")"
    dest="$cache/moto-$moto_version-$(sha256sum "$here/moto-requirements.txt" | cut -c1-8)"
    cached "$dest" build_moto
    ;;
*) usage ;;
esac
