#!/usr/bin/env bash
# Set up (first run only) and start Blixard on its embedded SQLite store: 127.0.0.1:8080, data in ./data
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/blixard serve "$@"
