#!/usr/bin/env bash
# Installs, only when missing, the system packages Presage's build needs:
#   clang + libclang-dev  (bindgen, used by librocksdb-sys)
#   protobuf-compiler     (protoc, used by raft-rs's prost codec)
#   make, g++, pkg-config (the C++ build of RocksDB)
#   redis-tools           (redis-cli, which the tests use against RESP over TLS)
# Packages named as arguments are installed too, when missing (`make bench-peers` adds
# etcd-server and redis-server, `make test` prometheus for its promtool). Nothing is installed when everything is present. Safe to run
# repeatedly.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in clang libclang-dev protobuf-compiler make g++ pkg-config redis-tools "$@"; do
  have_pkg "$pkg" || need+=("$pkg")
done
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is not on PATH; install a Rust toolchain (rustup) first" >&2; exit 1; }

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing missing system packages: ${need[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: apt-get not found; please install: ${need[*]}" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "setup: not root and no sudo; please install: ${need[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
