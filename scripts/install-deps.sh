#!/usr/bin/env bash
# Installs the system packages the build, the demo and the tests need (Debian, as root).
# Idempotent and quick when everything is already there.
set -euo pipefail
PKGS=(clang llvm make gcc m4 pkg-config libelf-dev zlib1g-dev libbpf-dev libpcap-dev
      linux-libc-dev iproute2 ethtool iputils-ping netcat-openbsd curl apache2-utils
      tcpdump bpftool sockperf util-linux)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: missing packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
