#!/usr/bin/env bash
# make bench-peers: Presage beside its peers on this machine, in one table (presage-bench peers).
#
# Installs Debian's etcd-server and redis-server when missing, starts on loopback a 3-member
# etcd (fsync on, as shipped) and a redis-server with appendonly and appendfsync always, then
# measures with the same client threads and settings, one target after another:
#   etcd (the first: every other throughput is divided by it), redis-server over RESP,
#   three-engines (three raw RocksDB engines doing each synced write at once: the bound of a
#   3-replica cluster on one machine), a 3-node Presage playground over RESP, and the same
#   through the Rust client library.
# Then the same Presage playground over RESP with 8 connections shared by all client threads
# (what multiplexing clients do), to set beside the one-connection-per-client row.
#
# Settings (environment): RECORDS (50000), THREADS (32), SECS (30 per run phase), WARMUP (5),
# OUT (folder for peers.json/peers.svg and peers-mux.json; default the current folder).
# etcd and redis-server run without TLS or logins, so Presage runs as playground-insecure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RECORDS=${RECORDS:-50000}
THREADS=${THREADS:-32}
SECS=${SECS:-30}
WARMUP=${WARMUP:-5}
OUT=${OUT:-.}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/presage/target}

"$ROOT/scripts/setup.sh" etcd-server redis-server
"$ROOT/scripts/cargo.sh" build --locked --release -p presage-tools --bins
BENCH="$CARGO_TARGET_DIR/release/presage-bench"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/presage-peers.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ETCD=$(command -v etcd || echo /usr/bin/etcd)
cluster=""
for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:2380$i"; done
for i in 1 2 3; do
  "$ETCD" --name "m$i" --data-dir "$WORK/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token presage-peers \
    >"$WORK/etcd-$i.log" 2>&1 &
  pids+=($!)
done
REDIS_PORT=6390
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK" --appendonly yes --appendfsync always \
  --save '' --daemonize no >"$WORK/redis.log" 2>&1 &
pids+=($!)

ready() {
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  return 1
}
for i in 1 2 3; do
  ready bash -c "exec 3<>/dev/tcp/127.0.0.1/2379$i" || { cat "$WORK/etcd-$i.log" >&2; echo "etcd member $i did not start" >&2; exit 1; }
done
ready bash -c "redis-cli -p $REDIS_PORT ping | grep -q PONG" || { cat "$WORK/redis.log" >&2; echo "redis-server did not start" >&2; exit 1; }

common=(--records "$RECORDS" --ops 1000000000 --threads "$THREADS" --duration "$SECS" --warmup "$WARMUP"
  --work-dir "$WORK")
mkdir -p "$OUT"
"$BENCH" peers "${common[@]}" \
  --target "etcd:127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793" \
  --target "resp:127.0.0.1:$REDIS_PORT" \
  --target three-engines \
  --target resp:playground-insecure \
  --target playground-insecure \
  --json "$OUT/peers.json" --plot "$OUT/peers.svg"
echo
echo "Presage over RESP, $THREADS clients multiplexed over 8 connections:"
"$BENCH" peers "${common[@]}" --connections 8 --target resp:playground-insecure --json "$OUT/peers-mux.json"
