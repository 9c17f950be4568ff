# Presage - the two commands a person needs on a fresh machine:
#   make demo   run the main job (today: the storage-engine walkthrough)
#   make test   run the whole test suite
# Both first install any missing system packages (scripts/setup.sh).

SHELL := /bin/bash
# One target folder shared by every clone and CI run on this machine, and RocksDB's C++ built
# once per machine into ~/.cache/presage (scripts/rocksdb.sh, about 13 minutes on 2 cores) and
# linked from there by every profile: no checkout, profile or dependency change rebuilds it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/presage/target
CARGO ?= ./scripts/cargo.sh
CARGO_FLAGS ?= --locked

.PHONY: setup build test demo bench fmt lint doc

setup:
	@./scripts/setup.sh

build: setup
	$(CARGO) build $(CARGO_FLAGS) --workspace

test: setup
	$(CARGO) test $(CARGO_FLAGS) --workspace

demo: setup
	$(CARGO) build $(CARGO_FLAGS) --release -p presage-tools --bin presage
	"$(CARGO_TARGET_DIR)/release/presage" demo

# Storage-engine figures with side-by-side baselines (see README "Benchmarks").
bench: setup
	$(CARGO) build $(CARGO_FLAGS) --release -p presage-tools --bin presage-bench
	"$(CARGO_TARGET_DIR)/release/presage-bench" engine --json target-bench-engine.json

fmt:
	$(CARGO) fmt --all

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

doc: setup
	$(CARGO) doc $(CARGO_FLAGS) --workspace --no-deps
