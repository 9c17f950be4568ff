# Presage - the two commands a person needs on a fresh machine:
#   make demo   run the main job: a 5-node local cluster under a zipfian workload
#   make test   run the whole test suite
# Both first install any missing system packages (scripts/setup.sh).

SHELL := /bin/bash
# One target folder shared by every clone and CI run on this machine, and RocksDB's C++ built
# once per machine into ~/.cache/presage (scripts/rocksdb.sh, about 13 minutes on 2 cores) and
# linked from there by every profile: no checkout, profile or dependency change rebuilds it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/presage/target
CARGO ?= ./scripts/cargo.sh
CARGO_FLAGS ?= --locked

.PHONY: setup build test demo bench bench-peers dist fmt lint doc fuzz soak

setup:
	@./scripts/setup.sh

build: setup
	$(CARGO) build $(CARGO_FLAGS) --workspace

# The monitoring test checks tools/monitoring/ with promtool (Debian's prometheus package); the
# differential RESP test runs its script against Debian's redis-server too, and an application on
# redis-py (python3-redis) runs against a playground.
test: setup
	@./scripts/setup.sh prometheus redis-server python3-redis
	$(CARGO) test $(CARGO_FLAGS) --workspace --features presage-tests/failpoints,presage-tools/failpoints
	$(MAKE) fuzz FUZZ_SECONDS=$(TEST_FUZZ_SECONDS)

# The cluster demo (README "Quick start"); DEMO_ARGS passes flags, e.g. DEMO_ARGS="--seconds 60".
DEMO_ARGS ?=
demo: setup
	$(CARGO) build $(CARGO_FLAGS) --release -p presage-tools --bin presage --bin presage-ctl
	"$(CARGO_TARGET_DIR)/release/presage" demo $(DEMO_ARGS)

# Engine, replication, idle-shard and YCSB figures with side-by-side baselines (README "Benchmarks").
bench: setup
	$(CARGO) build $(CARGO_FLAGS) --release -p presage-tools --bin presage-bench --bin presage
	"$(CARGO_TARGET_DIR)/release/presage-bench" engine --json target-bench-engine.json
	"$(CARGO_TARGET_DIR)/release/presage-bench" replication --json target-bench-replication.json
	"$(CARGO_TARGET_DIR)/release/presage-bench" idle --json target-bench-idle.json
	for w in a c; do "$(CARGO_TARGET_DIR)/release/presage-bench" run --workload $$w --records 100000 --ops 100000000 --duration 30 \
		--threads 8 --target raw-engine --target playground --json target-bench-ycsb-$$w.json --plot target-bench-ycsb-$$w.svg; done

# The release tarball dist/presage-VERSION-linux-ARCH.tar.gz (README "Installing from the tarball").
dist: setup
	./scripts/dist.sh

# Presage beside a 3-member etcd, redis-server (appendfsync always) and the three-engines bound,
# in one table (scripts/bench-peers.sh; installs etcd-server and redis-server when missing).
bench-peers: setup
	./scripts/bench-peers.sh

# Both nemeses (partitions, drops, delays, kills, power losses, disk faults, leader moves,
# splits, merges, evacuations) and the crash tests at every failpoint, SEEDS seeds each.
SEEDS ?= 500
soak: setup
	PRESAGE_NEMESIS_SEEDS=$(SEEDS) PRESAGE_SHARDED_NEMESIS_SEEDS=$(SEEDS) PRESAGE_FAILPOINT_SEEDS=$(SEEDS) \
		$(CARGO) test $(CARGO_FLAGS) -p presage-tests --features failpoints --test replication --test failpoints \
		-- nemesis a_crash --nocapture

# Fuzz the Raft frame decoder, the RESP parser, the config loader, the native frame decoder and the
# peer handshake for FUZZ_SECONDS each (cargo-fuzz on stable via RUSTC_BOOTSTRAP; its
# own target folder, since fuzzing flags differ from every other build).
FUZZ_SECONDS ?= 60
# `make test` fuzzes each target this long.
TEST_FUZZ_SECONDS ?= 10
fuzz: setup
	command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cd replication/fuzz && RUSTC_BOOTSTRAP=1 ../../scripts/cargo.sh fuzz run --sanitizer none \
		--target-dir $(HOME)/.cache/presage/fuzz-target frame_decoder -- -max_total_time=$(FUZZ_SECONDS)
	cd tools/fuzz && for t in resp_parser config_loader native_frame peer_handshake; do RUSTC_BOOTSTRAP=1 ../../scripts/cargo.sh fuzz run \
		--sanitizer none --target-dir $(HOME)/.cache/presage/fuzz-target $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

fmt:
	$(CARGO) fmt --all

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets --features presage-tests/failpoints,presage-tools/failpoints -- -D warnings

# Fails on any rustdoc warning (a broken or private intra-doc link, say).
doc: setup
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc $(CARGO_FLAGS) --workspace --no-deps
