#!/usr/bin/env bash
# An S3-compatible server (moto, from PyPI) on 127.0.0.1, for tests.
#
#   s3.sh start  DIR PORT        start in the background, write DIR/s3.pid, log to DIR/s3.log
#   s3.sh wait   DIR PORT        wait (up to WAIT_SECONDS, default 60) until it answers
#   s3.sh bucket DIR PORT NAME   create bucket NAME (path-style PUT; fine if it exists)
#   s3.sh stop   DIR PORT        SIGTERM, wait for the exit
#   s3.sh kill   DIR PORT        SIGKILL
#
# moto keeps objects in memory: a stopped server has lost them. To take the store away and
# bring it back with its objects, put gate.py in front of it. moto accepts any credentials and
# checks SigV4 signatures' shape, not their keys.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/service.sh
source "$here/../lib/service.sh"
svc_init s3 "s3.sh start|wait|stop|kill DIR PORT | s3.sh bucket DIR PORT NAME" 4 "$@"
log="$dir/s3.log"

case "$command" in
start)
    svc_expect_args 3
    svc_refuse_if_running
    venv="$(bash "$here/fetch.sh" moto)"
    svc_launch "$log" nohup "$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$port"
    ;;
wait)
    svc_expect_args 3
    svc_wait "the S3 server" "$log" curl -sf --noproxy '*' -o /dev/null "http://127.0.0.1:$port/"
    ;;
bucket)
    svc_expect_args 4
    code="$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$port/$4")"
    if [[ "$code" != 200 && "$code" != 409 ]]; then
        echo "s3.sh: creating bucket $4 answered HTTP $code; see $log" >&2
        exit 1
    fi
    ;;
stop | kill)
    svc_expect_args 3
    if [[ "$command" == kill ]]; then svc_stop KILL 10; else svc_stop TERM 10; fi
    ;;
*) svc_usage ;;
esac
