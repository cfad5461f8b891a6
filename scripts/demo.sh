#!/usr/bin/env bash
# The main demo: a testbed (netns + veth, peer steered to RX queue 3), the steering program
# attached on queue 3, traffic from the namespace, the counters moving, then everything removed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug
[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (netns, veth, XDP)" >&2; exit 1; }

out=$($BIN/testbed up --queues 4 --queue 3)
eval "$out"   # ns host_if host_ip peer_if peer_ip
cleanup() { $BIN/xdp-loader detach "$host_if" >/dev/null 2>&1 || true; $BIN/testbed down "$ns" >/dev/null; }
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "testbed: $out"
step "xdp-loader attach $host_if --queue 3 --tcp 8080 --udp 8080"
$BIN/xdp-loader attach "$host_if" --queue 3 --tcp 8080 --udp 8080
step "xdp-loader status $host_if"
$BIN/xdp-loader status "$host_if"

step "ping from the namespace (the kernel keeps ICMP/ARP)"
ip netns exec "$ns" ping -c 3 -i 0.2 "$host_ip" | tail -2

step "20 datagrams to udp:8080 with no service bound: matched, no socket, handed back to the kernel"
ip netns exec "$ns" bash -c "for i in \$(seq 20); do echo hello > /dev/udp/$host_ip/8080; done"
sleep 0.3
step "xdp-loader stats $host_if"
$BIN/xdp-loader stats "$host_if"

step "rates while traffic flows: xdp-loader stats $host_if --interval 1 --count 2"
ip netns exec "$ns" bash -c "for i in \$(seq 200); do echo load > /dev/udp/$host_ip/8080; sleep 0.01; done" &
$BIN/xdp-loader stats "$host_if" --interval 1 --count 2
wait

step "xdp-loader detach $host_if"
$BIN/xdp-loader detach "$host_if"
ip -br link show "$host_if"
