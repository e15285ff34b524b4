#!/usr/bin/env bash
# Set up (virtualenv + package) and run the demo: a simulated Modbus device, the gateway, and an
# embedded MQTT broker. Nothing to install by hand. Extra arguments go to `gateway demo`.
# It installs protocol-brain[all] only: the demo needs neither torch nor the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
exec .venv/bin/gateway demo "$@"
