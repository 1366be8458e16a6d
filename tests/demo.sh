#!/usr/bin/env bash
# The README's "main job": a live failover. Installs what is missing, builds ctsyncd, then runs
# a firewall pair in network namespaces on this machine (client — fw1/fw2 with nftables
# masquerade and tcp_loose=0 — server, a sync link between the firewalls): a TCP stream and a UDP
# flow go through fw1, fw1 is killed, fw2 is promoted and takes the virtual addresses, and the
# stream carries on with the same NAT source port and no reset; then fw1 comes back and takes
# over again. Every step is printed; the namespaces and processes are removed at the end.
# Options are passed on to tests/system/failover.sh (e.g. --commit continuous,
# --driver keepalived). Needs root. The docker compose cluster comes with docker/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (it installs packages and creates network namespaces): sudo $0" >&2
  exit 1
fi
"$root/tests/install-deps.sh" test
echo "== building ctsyncd and ctsyncctl"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j "$(nproc)" --target ctsyncd ctsyncctl >/dev/null

echo "== live failover: client -> fw1 (active) / fw2 (backup) -> server"
exec "$root/tests/system/failover.sh" --ctsyncd "$root/build/syncd/ctsyncd" \
  --ctsyncctl "$root/build/syncd/ctsyncctl" "$@"
