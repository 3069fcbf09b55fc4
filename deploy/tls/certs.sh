#!/usr/bin/env bash
# Demo certificates and bearer tokens for the TLS variants of deploy/compose and deploy/local,
# made with the openssl CLI, in cert-manager's Secret layout (what the services' [otlp.tls] and
# [admin.tls] read, and what the Helm chart mounts from a cert-manager Certificate).
#
#   deploy/tls/certs.sh DIR [SAN ...]     e.g. deploy/tls/certs.sh deploy/compose/tls DNS:ingester DNS:appender
#
# Writes into DIR (made if missing):
#   ca.crt, ca.key     a private CA (EC P-256): give ca.crt to clients (grpcurl -cacert, curl --cacert,
#                      the Collector's tls.ca_file); ca.key never leaves DIR
#   tls.crt, tls.key   the services' certificate, signed by the CA, for DNS:localhost, IP:127.0.0.1
#                      and each SAN given (DNS:name or IP:address)
#   otlp-tokens        one random bearer token: [otlp.auth] tokens_file
#   admin-tokens       one random bearer token: [admin.auth] tokens_file
# Files that exist are kept (run it again freely: tokens and the CA stay), except a certificate
# that expires within a day or lacks a SAN asked for, which is made again (and the CA with it
# when that expires). Nothing is printed but the directory.
#
# Settings (environment, optional):
#   CERTS_DAYS      365   validity of new certificates
#   CERTS_KEY_MODE  600   mode of tls.key and the token files; 644 when another user reads them,
#                         e.g. the containers' user (uid 10001) through a compose bind mount
set -euo pipefail

die() { echo "certs.sh: $*" >&2; exit 1; }
[[ $# -ge 1 ]] || die "usage: certs.sh DIR [SAN ...] (SAN: DNS:name or IP:address)"
dir="$1"
shift
days="${CERTS_DAYS:-365}"
key_mode="${CERTS_KEY_MODE:-600}"
[[ "$days" =~ ^[0-9]+$ ]] || die "CERTS_DAYS must be a number of days, not '$days'"
[[ "$key_mode" =~ ^[0-7]{3,4}$ ]] || die "CERTS_KEY_MODE must be an octal mode such as 600, not '$key_mode'"
command -v openssl >/dev/null || die "openssl not found"
sans="DNS:localhost,IP:127.0.0.1"
for san in "$@"; do
    [[ "$san" =~ ^(DNS|IP):[A-Za-z0-9.:*_-]+$ ]] || die "'$san' is not a SAN: write DNS:name or IP:address"
    sans="$sans,$san"
done

mkdir -p "$dir"
cd "$dir"
umask 077
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
valid() { [[ -f "$1" ]] && openssl x509 -in "$1" -noout -checkend 86400 >/dev/null 2>&1; }

if ! valid ca.crt || [[ ! -f ca.key ]]; then
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days "$days" -subj "/CN=telemetry-lake demo CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    rm -f tls.crt
fi

# Every SAN asked for must be in the certificate, or it is made again.
has_sans() {
    local listed
    listed="$(openssl x509 -in tls.crt -noout -ext subjectAltName 2>/dev/null | tr -d ' ' | sed 's/IPAddress:/IP:/g')"
    local san
    for san in ${sans//,/ }; do
        [[ ",${listed//$'\n'/,}," == *",$san,"* ]] || return 1
    done
}
if ! valid tls.crt || [[ ! -f tls.key ]] || ! has_sans ||
    ! openssl verify -CAfile ca.crt tls.crt >/dev/null 2>&1; then
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' "$sans" >tls.ext
    openssl req "${ec[@]}" -keyout tls.key -out tls.csr -subj "/CN=telemetry-lake" 2>/dev/null
    openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt -days "$days" \
        -extfile tls.ext 2>/dev/null
    rm -f tls.csr tls.ext ca.srl
fi

for tokens in otlp-tokens admin-tokens; do
    [[ -s "$tokens" ]] || openssl rand -hex 24 >"$tokens"
done
chmod 644 ca.crt tls.crt
chmod "$key_mode" tls.key otlp-tokens admin-tokens
pwd
