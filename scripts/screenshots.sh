#!/usr/bin/env bash
# Refresh the README's screenshots: run the browser tests (they save every page to
# build/screenshots/), then copy the main pages into docs/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
.venv/bin/pytest -q tests/ui/test_pages.py
for page in workspaces workspace diff resources run-applying search audit cluster workspace-360px; do
  cp "build/screenshots/$page.png" "docs/screenshots/$page.png"
done
echo "docs/screenshots/ refreshed: review and commit them"
