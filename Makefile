# The two commands of README: `make demo` and `make test` (Debian, as root).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: demo test deps build lint

deps:
	bash scripts/install-deps.sh

build: deps
	cargo build --workspace --bins

demo: build
	bash scripts/demo.sh

# Unit tests run anywhere; the netns/veth/XDP/AF_XDP tests need root (they skip loudly
# without it, and fail under CI=true).
test: build
	cargo test --workspace --no-fail-fast

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
