#!/usr/bin/env bash
# Install the real peers the tests run against: mosquitto (MQTT broker), mosquitto-clients
# (mosquitto_pub/_sub), mbpoll (a Modbus master we did not write) and libcoap3-bin
# (coap-client-openssl/coap-server-openssl, libcoap's CoAP peers with DTLS), curl (an HTTP
# client for the metrics endpoint), socat (pseudo-terminal pairs: serial lines for Modbus RTU)
# from Debian/Ubuntu
# packages, and node-opcua (an OPC UA stack we did not write) from npm into tests/interop/node.
# Idempotent: when every binary is already there it only checks and exits.
set -euo pipefail

# binary -> package; mosquitto lives in /usr/sbin, which is not on every user's PATH
have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

missing=()
have mosquitto || missing+=(mosquitto)
have mosquitto_pub || missing+=(mosquitto-clients)
have mbpoll || missing+=(mbpoll)
have coap-client-openssl || missing+=(libcoap3-bin)
have node || missing+=(nodejs)
have npm || missing+=(npm)
have curl || missing+=(curl)
have socat || missing+=(socat)

npm_peers() {
    # npm ci is exact (package-lock.json) and skipped while node_modules matches the lock.
    local dir=tests/interop/node
    if [ ! -f "$dir/node_modules/.package-lock.json" ] \
        || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        echo "install-peers: npm ci in $dir" >&2
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
            || { echo "install-peers: npm ci failed in $dir" >&2; exit 1; }
    fi
}

if [ ${#missing[@]} -eq 0 ]; then
    npm_peers
    exit 0
fi

# shellcheck source=scripts/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
apt_install install-peers "${missing[@]}"

fail() {
    apt_fail install-peers "$1" "${missing[@]}"
}

for bin in mosquitto mosquitto_pub mbpoll coap-client-openssl coap-server-openssl node npm curl socat; do
    have "$bin" || fail "$bin still missing after apt-get install"
done
npm_peers
echo "install-peers: done" >&2
