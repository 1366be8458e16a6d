#!/usr/bin/env bash
# The README's "main job": installs what is missing, builds ctsyncd and replays a sample capture
# (a web request, DNS, a UDP stream, ping, a port probe answered by ICMP, an IPv6 SSH session, a
# fragmented datagram and a corrupt segment) through the tracker, showing every event as
# `conntrack -E` would and the table as `conntrack -L` would. The live failover demo replaces
# this once the daemon and the docker cluster exist.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

"$root/tests/install-deps.sh"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j "$(nproc)" --target ctsyncd >/dev/null

echo
echo "== ctsyncd replay --events --stats tests/data/sample.pcap"
echo "   (events as they happen, then the table at the last packet's time)"
echo
"$root/build/syncd/ctsyncd" replay --events --stats "$root/tests/data/sample.pcap" 2>&1
