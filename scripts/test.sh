#!/usr/bin/env bash
# Set up (first run only) and run the whole suite: lint, types, unit, API, engine and real-Terraform tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
# Runs execute in a bubblewrap sandbox (docs/security.md): install it when missing and we may.
if ! command -v bwrap >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q bubblewrap >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; }
fi
scripts/install-etcd.sh >/dev/null  # a real etcd cluster: engine tests, and tests/api + real Terraform on etcd too
# Browser tests (tests/ui): Debian's chromium (never a Playwright browser download) and axe-core.
if [ ! -x /usr/bin/chromium ]; then
  apt=$( [ "$(id -u)" = 0 ] || echo sudo )
  $apt apt-get install -y -q chromium >/dev/null \
    || { $apt apt-get update -q >/dev/null && $apt apt-get install -y -q chromium >/dev/null; }
fi
if [ ! -f build/npm/node_modules/axe-core/axe.min.js ]; then
  npm install -q --prefix build/npm --no-audit --no-fund axe-core@4 >/dev/null
fi
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy src
.venv/bin/lint-imports  # architecture contracts in pyproject.toml (docs/architecture.md)
exec .venv/bin/pytest "$@"
