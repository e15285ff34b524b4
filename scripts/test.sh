#!/usr/bin/env bash
# Everything the test suite needs, then the suite: scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
bash scripts/install-peers.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
