#!/usr/bin/env bash
# Capture overhead: http-hello over AF_XDP, ab keep-alive load from the namespace, with and
# without a running pcap capture, alternating, 5 runs each; prints the medians and the ratio.
# Bounded: 10 runs of 5000 requests. A noisy 2-vCPU VM: read the ratio, not the absolute figures.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug
[[ $(id -u) -eq 0 ]] || { echo "run as root" >&2; exit 1; }
out=$($BIN/testbed up --queues 4 --queue 3); eval "$out"
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; $BIN/xdp-loader detach "$host_if" >/dev/null 2>&1 || true; $BIN/testbed down "$ns" >/dev/null; rm -f /tmp/overhead-$ns.pcap; }
trap cleanup EXIT
$BIN/xdp-loader attach "$host_if" --queue 3 >/dev/null
$BIN/http-hello --iface "$host_if" --queue 3 --port 8080 --duration 600 >/dev/null 2>&1 &
pid=$!
sleep 1
run() { ip netns exec "$ns" ab -q -n 5000 -c 8 -k "http://$host_ip:8080/" | awk '/Requests per second/ {print $4}'; }
off=(); on=()
for i in 1 2 3 4 5; do
    off+=("$(run)")
    $BIN/xdp-loader capture "$host_if" --queue 3 -w "/tmp/overhead-$ns.pcap" --count 1000000 --snaplen 128 >/dev/null
    on+=("$(run)")
    $BIN/xdp-loader capture "$host_if" --queue 3 --stop >/dev/null
done
median() { printf '%s\n' "$@" | sort -g | sed -n 3p; }
m_off=$(median "${off[@]}"); m_on=$(median "${on[@]}")
echo "without capture: ${off[*]} req/s (median $m_off)"
echo "with capture:    ${on[*]} req/s (median $m_on)"
awk -v a="$m_on" -v b="$m_off" 'BEGIN { printf "ratio with/without: %.2f\n", a / b }'
