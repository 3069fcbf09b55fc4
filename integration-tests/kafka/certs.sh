#!/usr/bin/env bash
# Certificates for a TLS Kafka broker and its clients, made with the openssl CLI, for tests.
#
#   certs.sh DIR [KEY_PASSWORD]
#
# Writes into DIR (created; files already there are made again):
#   ca.crt, ca.key                 a throwaway CA (EC P-256, 2 days)
#   broker.pem                     the broker's unencrypted PKCS#8 key, then its certificate
#                                  (SAN IP:127.0.0.1 and DNS:localhost), signed by the CA: Kafka's
#                                  PEM keystore (ssl.keystore.type=PEM)
#   client.crt, client.key         a client certificate (CN=telemetry-lake) signed by the CA, and
#                                  its key: encrypted (PKCS#8, AES-256) with KEY_PASSWORD when one
#                                  is given, else unencrypted
#   rogue-ca.crt, rogue.crt, rogue.key   a client certificate signed by another CA, which the
#                                  broker must refuse
# Prints nothing on success; openssl's messages go to stderr on failure.
set -euo pipefail

[[ $# -ge 1 && $# -le 2 ]] || {
    echo "usage: certs.sh DIR [KEY_PASSWORD]" >&2
    exit 2
}
dir="$(mkdir -p "$1" && cd "$1" && pwd)"
key_password="${2:-}"
cd "$dir"

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# A self-signed CA: NAME.key, NAME.crt.
make_ca() {
    ec_key "$1.key"
    openssl req -x509 -new -key "$1.key" -days 2 -subj "/CN=$2" -out "$1.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}

# A leaf NAME.key + NAME.crt signed by CA (ca or rogue-ca), with the given extensions.
make_leaf() {
    local name="$1" ca="$2" cn="$3" ext="$4"
    ec_key "$name.key"
    openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
    printf '%s\n' "$ext" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -days 2 \
        -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

make_ca ca "telemetry-lake test CA"
make_ca rogue-ca "someone else's CA"

make_leaf broker ca localhost "$(printf '%s\n' \
    "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost")"
# Kafka's PEM keystore: the key (PKCS#8, unencrypted), then the certificate chain.
openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker.pk8
cat broker.pk8 broker.crt >broker.pem
rm -f broker.pk8

client_ext="$(printf '%s\n' "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth")"
make_leaf client ca telemetry-lake "$client_ext"
if [[ -n "$key_password" ]]; then
    openssl pkcs8 -topk8 -v2 aes-256-cbc -in client.key -out client.key.enc \
        -passout "fd:3" 3<<<"$key_password"
    mv client.key.enc client.key
fi
make_leaf rogue rogue-ca telemetry-lake "$client_ext"
chmod 600 ./*.key broker.pem
