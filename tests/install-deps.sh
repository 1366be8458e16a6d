#!/usr/bin/env bash
# Installs what building, testing and the container demo of ctsync need on Debian 12.
#
#   install-deps.sh [build] [test] [docker]     (no argument: all three)
#
#   build    compiling ctsyncd and ctsyncctl (the container image's build stage uses only this)
#   test     the test suite: GoogleTest, the fuzzer's clang, namespaces, nftables, conntrack,
#            keepalived, conntrackd (the benchmark's baseline), vsftpd and tftpd-hpa (servers
#            of the FTP/TFTP failover test)
#   docker   the compose cluster (docker/demo.sh): Debian's Docker engine, docker-compose,
#            debootstrap (the base image, where no registry is reachable)
#
# Idempotent: packages already present are not touched, and apt is only asked when something is
# missing.
set -euo pipefail

build_packages=(
  cmake ninja-build g++ pkg-config
  libboost-dev libboost-program-options-dev
  capnproto libcapnp-dev
  libnetfilter-conntrack-dev libmnl-dev
  libspdlog-dev
  libtomlplusplus-dev
  libpcap-dev
  libsodium-dev
)
test_packages=(
  libgtest-dev
  # the datagram decoder's fuzzer (libFuzzer with ASan/UBSan)
  clang-14 libclang-rt-14-dev
  # differential tests against the kernel: namespaces, replay, conntrack, packet crafting,
  # capturing what the kernel forwards (NAT scenarios)
  iproute2 nftables conntrack tcpreplay ethtool python3 python3-scapy tcpdump
  # system tests and benchmarks: VRRP, gratuitous ARP, the daemon we compare with
  keepalived iputils-arping conntrackd
  # the FTP/TFTP failover test's servers (ftp_failover.sh; its clients are Python's stdlib)
  vsftpd tftpd-hpa
)
# apparmor: Debian's dockerd 20.10 cannot start containers on an AppArmor kernel without its
# parser; ca-certificates: pulls from a registry, where there is one.
docker_packages=(docker-compose debootstrap python3 apparmor ca-certificates)
# An engine already installed (Docker's own docker-ce, say) is used as it is: docker.io would
# conflict with it.
command -v dockerd >/dev/null || docker_packages+=(docker.io)

packages=()
[ $# -gt 0 ] || set -- build test docker
for group in "$@"; do
  case $group in
    build) packages+=("${build_packages[@]}") ;;
    test) packages+=("${build_packages[@]}" "${test_packages[@]}") ;;
    docker) packages+=("${docker_packages[@]}") ;;
    *)
      echo "usage: $0 [build] [test] [docker]" >&2
      exit 2
      ;;
  esac
done

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
  echo "install-deps: all packages present ($*)"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# keepalived, conntrackd, vsftpd, tftpd-hpa and docker are test tools here, not services: keep apt from starting
# them on this host (Debian's policy-rc.d convention), unless the host already has its own policy.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
fi
trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
