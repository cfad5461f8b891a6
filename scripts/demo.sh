#!/usr/bin/env bash
# The main demo: a testbed (netns + veth, the peer steered to RX queue 3), the steering program
# attached on queue 3, http-hello serving over AF_XDP on queue 3 to curl and ab in the namespace,
# while ping and a kernel TCP service on another port keep working; then the counters, and
# everything removed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug
[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (netns, veth, XDP, AF_XDP)" >&2; exit 1; }

out=$($BIN/testbed up --queues 4 --queue 3)
eval "$out"   # ns host_if host_ip peer_if peer_ip
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    $BIN/xdp-loader detach "$host_if" >/dev/null 2>&1 || true
    $BIN/testbed down "$ns" >/dev/null
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "testbed: $out"
step "xdp-loader attach $host_if --queue 3"
$BIN/xdp-loader attach "$host_if" --queue 3

step "http-hello --iface $host_if --queue 3 --port 8080   (the stack adds its own steering rule)"
$BIN/http-hello --iface "$host_if" --queue 3 --port 8080 --duration 120 &
pids+=($!)
for _ in $(seq 50); do $BIN/xdp-loader status "$host_if" | grep -q "3:xsk" && break; sleep 0.1; done
$BIN/xdp-loader status "$host_if"

step "a kernel service on port 9090 of the same address (not steered)"
python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$host_ip', 9090)); s.listen(8)
for _ in range(2):
    c, _ = s.accept(); c.sendall(b'hello from the kernel on 9090\n'); c.close()
" &
pids+=($!)
sleep 0.3

step "curl http://$host_ip:8080/ from the namespace (served by the stack over AF_XDP)"
ip netns exec "$ns" curl -s -i "http://$host_ip:8080/"
step "ab -n 5000 -c 16 -k http://$host_ip:8080/"
ip netns exec "$ns" ab -q -n 5000 -c 16 -k "http://$host_ip:8080/" | grep -E "Complete requests|Failed requests|Requests per second|Time per request.*mean\)$"
step "meanwhile the kernel still answers ping and port 9090"
ip netns exec "$ns" ping -c 3 -i 0.2 "$host_ip" | tail -2
ip netns exec "$ns" nc -w 2 "$host_ip" 9090 </dev/null

step "xdp-loader stats $host_if   (queue 3: redirected to the stack; passed: ARP, ICMP, port 9090)"
$BIN/xdp-loader stats "$host_if"

step "stopping http-hello: its rule goes, the XSK closes, the kernel takes the flows back"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
pids=("${pids[@]:1}")
$BIN/xdp-loader status "$host_if" | grep -E "rules|sockets"
ip netns exec "$ns" curl -s -m 2 "http://$host_ip:8080/" || echo "curl: connection refused by the kernel (nothing listens there): fail-open"

step "xdp-loader detach $host_if"
$BIN/xdp-loader detach "$host_if"
