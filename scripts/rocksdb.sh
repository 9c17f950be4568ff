#!/usr/bin/env bash
# Prints the folder holding a prebuilt static librocksdb.a, building it first if missing.
# The build (about 13 minutes on 2 cores) happens once per machine and RocksDB version; every
# clone, profile and CI run on the machine then links the same archive.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^librocksdb-sys = { version = "=\([^"]*\)".*/\1/p' "$here/rocksdb-prebuilt/Cargo.toml")
cache="${PRESAGE_CACHE_DIR:-$HOME/.cache/presage}"
lib_dir="$cache/rocksdb-$version-zstd-lz4"
if [ -f "$lib_dir/librocksdb.a" ]; then
  echo "$lib_dir"
  exit 0
fi
echo "rocksdb: building RocksDB $version once for this machine (about 13 minutes on 2 cores)..." >&2
build_dir="$cache/rocksdb-build"
cargo build --release --locked --manifest-path "$here/rocksdb-prebuilt/Cargo.toml" --target-dir "$build_dir" >&2
archive=$(ls -t "$build_dir"/release/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -n 1)
if [ -z "$archive" ]; then
  echo "rocksdb: build finished but librocksdb.a was not found under $build_dir" >&2
  exit 1
fi
mkdir -p "$lib_dir.tmp"
cp "$archive" "$lib_dir.tmp/librocksdb.a"
rm -rf "$lib_dir" && mv "$lib_dir.tmp" "$lib_dir"
echo "$lib_dir"
