#!/usr/bin/env bash
# cargo with RocksDB linked from the machine's prebuilt archive (scripts/rocksdb.sh), so that
# librocksdb-sys never compiles RocksDB's C++ inside the workspace. The Makefile runs every
# cargo command through this; plain `cargo` works too but builds RocksDB itself.
set -euo pipefail
lib_dir=$("$(dirname "$0")/rocksdb.sh")
export ROCKSDB_LIB_DIR="$lib_dir"
export ROCKSDB_STATIC=1
exec cargo "$@"
