# The two commands of README: `make demo` and `make test` (Debian, as root).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: demo test deps build lint bench bench-quick

deps:
	bash scripts/install-deps.sh

build: deps
	cargo build --workspace --bins

demo: build
	bash scripts/demo.sh

# Unit tests run anywhere; the netns/veth/XDP/AF_XDP tests need root (they skip loudly
# without it, and fail under CI=true). The impaired-link transfers move IMPAIR_MB per transfer:
# 50 by default (the full run, about 2 minutes of it); `make test IMPAIR_MB=4` is quicker.
IMPAIR_MB ?= 50
export IMPAIR_MB
test: build
	cargo test --workspace --no-fail-fast

lint:
	cargo fmt --all --check
	cargo clippy --workspace --exclude smoltcp --all-targets -- -D warnings

# Benchmarks (not tests): the stack against the kernel on one veth pair, release build, as root.
# `make bench` runs the full suite (about 6 minutes) and rewrites BENCHMARKS.md and docs/benchmarks/*.svg;
# `make bench-quick` takes under a minute and writes target/bench-quick/BENCHMARKS.md.
bench: deps
	cargo build --release --workspace --bins
	target/release/bench

bench-quick: deps
	cargo build --release --workspace --bins
	target/release/bench --quick
