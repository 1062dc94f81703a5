#!/usr/bin/env bash
# Re-pin every dependency (with hashes) from pyproject.toml into requirements/*.txt.
# Run after changing dependencies in pyproject.toml, then commit pyproject.toml and
# requirements/ together. Usage: scripts/lock.sh [--upgrade]   (--upgrade: newest allowed versions)
#   requirements/base.txt  what `scripts/bootstrap.sh` installs (the server)
#   requirements/test.txt  what `scripts/bootstrap.sh test` installs (+ the test extra)
# Both are resolved for every platform (--universal) and list the hashes of every file on
# PyPI for each pinned version; base.txt is constrained to test.txt, so the versions agree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tools=${BLIXARD_LOCK_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/blixard-lock-tools}
uv_version=0.13.9   # the resolver itself is pinned, so the same inputs give the same lock
if [ ! -x "$tools/bin/uv" ] || [ "$("$tools/bin/uv" --version | cut -d' ' -f2)" != "$uv_version" ]; then
  "$PY" -m venv "$tools"
  "$tools/bin/python" -m pip install -q "uv==$uv_version"
fi
upgrade=()
if [ "${1:-}" = "--upgrade" ]; then upgrade=(--upgrade); fi
digest=$("$PY" scripts/lockdigest.py pyproject.toml)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The build backend too: bootstrap installs the project with --no-build-isolation.
"$PY" - > "$work/build.in" <<'PYEOF'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))
PYEOF
compile() {  # compile OUTPUT [uv options...]
  local out=$1; shift
  # Start from the current lock so a plain re-lock only moves what pyproject.toml forces.
  rm -f "$work/out.txt"; if [ -f "$out" ]; then cp "$out" "$work/out.txt"; fi
  "$tools/bin/uv" pip compile -q --universal --python-version 3.11 --generate-hashes \
    --no-header --index-url https://pypi.org/simple --no-config \
    ${upgrade[@]+"${upgrade[@]}"} "$@" -o "$work/out.txt"
  {
    echo "# Pinned, hashed dependencies: made by scripts/lock.sh from pyproject.toml; do not edit."
    echo "# input-digest: $digest"
    sed "s|$work/||g" "$work/out.txt"   # no temporary paths in the annotations
  } > "$out"
}
mkdir -p requirements
compile requirements/test.txt pyproject.toml --extra test "$work/build.in"
grep -v '^#' requirements/test.txt | sed -e 's/ *\\$//' -e '/^ *--hash/d' -e '/^ *$/d' > "$work/constraints.txt"
compile requirements/base.txt pyproject.toml "$work/build.in" -c "$work/constraints.txt"
echo "locked: requirements/base.txt requirements/test.txt (input-digest ${digest:0:12})"
