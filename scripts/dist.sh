#!/usr/bin/env bash
# Builds the release tarball dist/presage-VERSION-linux-ARCH.tar.gz (`make dist`): the
# binaries (stripped), install.sh, the example config, the systemd unit, the Grafana dashboard
# and Prometheus rules, README, ARCHITECTURE and LICENSE.
#   PRESAGE_BIN_DIR=dir  take presage, presage-ctl and presage-bench from dir (no build)
#   DIST_DIR=dir         where the tarball goes (default dist)
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
name="presage-$version-linux-$(uname -m)"
out="${DIST_DIR:-dist}"
bin="${PRESAGE_BIN_DIR:-}"
if [ -z "$bin" ]; then
  ./scripts/cargo.sh build --locked --release -p presage-tools --bin presage --bin presage-ctl --bin presage-bench
  bin="${CARGO_TARGET_DIR:-$HOME/.cache/presage/target}/release"
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
install -d "$root/bin" "$root/etc/presage" "$root/lib/systemd/system" "$root/share/presage/monitoring" \
  "$root/share/doc/presage"
for b in presage presage-ctl presage-bench; do
  install -m 0755 "$bin/$b" "$root/bin/"
  strip --strip-debug "$root/bin/$b"
done
install -m 0755 tools/dist/install.sh "$root/"
install -m 0644 tools/server/config/node.example.toml "$root/etc/presage/"
install -m 0644 tools/dist/presage@.service "$root/lib/systemd/system/"
install -m 0644 tools/monitoring/alerts.yml tools/monitoring/dashboard.json "$root/share/presage/monitoring/"
install -m 0644 README.md ARCHITECTURE.md LICENSE "$root/share/doc/presage/"
mkdir -p "$out"
tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
echo "$out/$name.tar.gz"
