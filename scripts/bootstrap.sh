#!/usr/bin/env bash
# Create .venv (if missing) and install Blixard into it from the lock file: exactly the pinned,
# hash-checked versions in requirements/, then the project itself without dependencies.
# Usage: scripts/bootstrap.sh [test]   (test: also the test tools; requirements/test.txt)
# After changing dependencies in pyproject.toml run scripts/lock.sh (docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=${1:-}
case "$extra" in
  "") lock=requirements/base.txt ;;
  test) lock=requirements/test.txt ;;
  *) echo "bootstrap: unknown extra '$extra' (use: scripts/bootstrap.sh [test])" >&2; exit 2 ;;
esac
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11, 5))' 2>/dev/null; then
  echo "bootstrap: Blixard needs Python 3.11.5 or newer (requires-python in pyproject.toml);" \
    "$PY is $("$PY" -V 2>&1). Set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
# A lock made from other dependencies than pyproject.toml's would install the wrong set: stop.
want=$("$PY" scripts/lockdigest.py pyproject.toml)
have=$(sed -n 's/^# input-digest: //p' "$lock" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "bootstrap: $lock is stale: the dependencies in pyproject.toml changed since it was" \
    "locked. Run scripts/lock.sh, then commit pyproject.toml and requirements/ together." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.installed${extra:+-$extra}"
lock_sum=$(sha256sum "$lock" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  # --no-build-isolation: the build backend (setuptools, wheel) comes pinned from the lock too.
  .venv/bin/python -m pip install -q --require-hashes --no-deps -r "$lock"
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$lock_sum" > "$stamp"
fi
