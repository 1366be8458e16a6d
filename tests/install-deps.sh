#!/usr/bin/env bash
# Installs what building and testing ctsync needs on Debian 12. Idempotent: packages already
# present are not touched, and apt is only asked when something is missing.
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config
  libboost-dev libboost-program-options-dev
  capnproto libcapnp-dev
  libnetfilter-conntrack-dev libmnl-dev
  libspdlog-dev
  libtomlplusplus-dev
  libgtest-dev
  libpcap-dev
  libsodium-dev
  # the datagram decoder's fuzzer (libFuzzer with ASan/UBSan)
  clang-14 libclang-rt-14-dev
  # differential tests against the kernel: namespaces, replay, conntrack, packet crafting
  iproute2 nftables conntrack tcpreplay ethtool python3 python3-scapy
  # system tests and benchmarks: VRRP, gratuitous ARP, the daemon we compare with
  keepalived iputils-arping conntrackd
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (it installs Debian packages): sudo $0" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "install-deps: this script needs Debian 12 (apt-get not found)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# keepalived and conntrackd are test tools here, not services: keep apt from starting them on
# this host (Debian's policy-rc.d convention), unless the host already has its own policy.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
fi
trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
