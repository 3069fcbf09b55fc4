#!/usr/bin/env bash
# Apache Iceberg's REST catalog test server on 127.0.0.1, for tests.
#
#   rest.sh start DIR PORT   start in the background, write DIR/rest.pid, log to DIR/rest.log
#   rest.sh wait  DIR PORT   wait (up to WAIT_SECONDS, default 60) until GET /v1/config answers
#   rest.sh stop  DIR PORT   SIGTERM (Jetty stops), wait for the exit
#   rest.sh kill  DIR PORT   SIGKILL
#
# The catalog is RESTCatalogServer's own JdbcCatalog, configured by CATALOG_* variables from the
# environment (RCKUtils: CATALOG_IO__IMPL -> io-impl, CATALOG_S3_PATH__STYLE__ACCESS ->
# s3.path-style-access). Unless given, CATALOG_URI is a SQLite file in DIR, so a restart on the
# same DIR keeps every namespace and table. For an S3 warehouse, for example:
#
#   CATALOG_WAREHOUSE=s3://lake/warehouse CATALOG_IO__IMPL=org.apache.iceberg.aws.s3.S3FileIO \
#   CATALOG_S3_ENDPOINT=http://127.0.0.1:9000 CATALOG_S3_PATH__STYLE__ACCESS=true \
#   CATALOG_S3_ACCESS__KEY__ID=... CATALOG_S3_SECRET__ACCESS__KEY=... CATALOG_CLIENT_REGION=us-east-1 \
#   rest.sh start /tmp/rest 8181
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/service.sh
source "$here/../lib/service.sh"
svc_init rest "rest.sh start|wait|stop|kill DIR PORT" 3 "$@"
log="$dir/rest.log"

case "$command" in
start)
    svc_refuse_if_running
    home="$(bash "$here/fetch.sh" rest)"
    export CATALOG_URI="${CATALOG_URI:-jdbc:sqlite:file:$dir/catalog.db}"
    # The AWS SDK would otherwise look for ~/.aws and instance metadata.
    export AWS_REGION="${AWS_REGION:-${CATALOG_CLIENT_REGION:-us-east-1}}"
    svc_launch "$log" nohup java -Xms64m -Xmx384m -XX:+UseSerialGC -Djava.awt.headless=true \
        -cp "$home/libs/*:$home/classes" org.apache.iceberg.rest.LoopbackRestCatalog 127.0.0.1 "$port"
    ;;
wait) svc_wait "the catalog" "$log" curl -sf --noproxy '*' -o /dev/null "http://127.0.0.1:$port/v1/config" ;;
stop) svc_stop TERM ;;
kill) svc_stop KILL ;;
*) svc_usage ;;
esac
