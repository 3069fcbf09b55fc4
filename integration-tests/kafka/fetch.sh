#!/usr/bin/env bash
# Fetches Apache Kafka (broker, KRaft controller and tools) as jars from Maven Central, once.
#
#   fetch.sh            prints the directory holding libs/ (the Kafka home for broker.sh)
#
# The jars of org.apache.kafka:kafka_2.13 and its runtime dependencies, plus a log4j2 binding,
# land in ${XDG_CACHE_HOME:-~/.cache}/telemetry-lake/kafka-<version>/libs. A marker written
# after the copy tells a complete fetch from an interrupted one, and a lock keeps two runs from
# fetching at once. Quiet on success: stdout is the directory, progress goes to stderr.
set -euo pipefail

version="${KAFKA_VERSION:-4.1.1}"
log4j_version="2.25.3"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/telemetry-lake"
home="$cache/kafka-$version"

complete() { [[ -f "$home/.complete" ]] && compgen -G "$home/libs/kafka_2.13-$version.jar" >/dev/null; }

if complete; then
    echo "$home"
    exit 0
fi

for tool in mvn java; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "fetch.sh: $tool not found (apt-get install maven openjdk-17-jre-headless)" >&2
        exit 1
    fi
done

mkdir -p "$cache"
exec 9>"$home.lock"
flock 9
if complete; then
    echo "$home"
    exit 0
fi

echo "fetch.sh: fetching kafka $version into $home" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>telemetry-lake</groupId>
  <artifactId>kafka-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$version</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$log4j_version</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$log4j_version</version>
    </dependency>
  </dependencies>
</project>
POM
rm -rf "$home"
mkdir -p "$home/libs"
mvn -B -q -f "$work/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$home/libs" >&2
# Kafka logs through slf4j 1.7; only log4j2's binding for it may be on the class path.
rm -f "$home/libs"/slf4j-reload4j-*.jar "$home/libs"/slf4j-log4j12-*.jar "$home/libs"/logback-classic-*.jar
touch "$home/.complete"
echo "$home"
