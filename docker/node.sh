#!/usr/bin/env bash
# Entry point of the ctsync image: what one service of docker/compose.yml runs.
#
#   node.sh fw NODE     a firewall: links named, nftables, ctsyncd, then keepalived (-i NODE)
#   node.sh client GW   default route via GW (the inside virtual address), then idle
#   node.sh server      no default route (replies go to the on-link NAT address), then idle
#   node.sh idle        nothing (the image's default)
#
# Links: docker names a container's interfaces eth0, eth1... in an order compose does not
# promise, so a firewall renames each by the subnet its address is in: CTSYNC_LINKS holds
# "NAME=SUBNET/PREFIX ..." (in0, out0 and sync0 in the demo: the names the configs use).
# CTSYNC_NO_ADDRESS names links whose docker-assigned address goes: outside, the virtual
# address must be the firewall's only address in the server's subnet, or masquerade would pick
# the node's own and every flow would change its NAT address at a failover.
#
# A firewall runs ctsyncd and keepalived side by side (ctsyncd first: keepalived's first MASTER
# notification calls ctsyncctl promote). SIGTERM stops keepalived (its STOP notification drops
# the addresses and demotes), then ctsyncd. If either dies, the other is stopped and the
# container exits non-zero. Run under an init (compose: init: true) that reaps and forwards
# signals.
set -euo pipefail

say() { echo "node.sh[${NODE:-$(hostname)}]: $*" >&2; }
die() { say "$*"; exit 1; }

ip4_to_int() {  # A.B.C.D
  local IFS=. a b c d
  read -r a b c d <<<"$1"
  echo $(((a << 24) | (b << 16) | (c << 8) | d))
}

in_subnet() {  # ADDR SUBNET/PREFIX
  local net=${2%/*} prefix=${2#*/} mask
  mask=$(((0xffffffff << (32 - prefix)) & 0xffffffff))
  [ $(($(ip4_to_int "$1") & mask)) -eq $(($(ip4_to_int "$net") & mask)) ]
}

name_links() {
  local spec name subnet dev addr found
  for spec in ${CTSYNC_LINKS:?CTSYNC_LINKS is not set}; do
    name=${spec%%=*} subnet=${spec#*=}
    found=""
    while read -r dev addr; do
      dev=${dev%@*}
      if in_subnet "${addr%/*}" "$subnet"; then found=$dev; break; fi
    done < <(ip -o -4 addr show | awk '$2 != "lo" { print $2, $4 }')
    [ -n "$found" ] || die "no interface has an address in $subnet (for $name)"
    if [ "$found" != "$name" ]; then
      ip link set dev "$found" down
      ip link set dev "$found" name "$name"
      # Docker's name stays as an alternative name: when the container dies, docker finds the
      # link by it and takes it down before the namespace goes. Without that the kernel tears
      # the namespace down with the links still up, and for a moment after the ruleset's hooks
      # are gone it forwards packets without NAT (seen: one un-NATed segment of the stream
      # reached the server at `docker kill`).
      ip link property add dev "$name" altname "$found" 2>/dev/null ||
        say "link $name: cannot add the alternative name $found (kernel < 5.5?)"
    fi
    ip link set dev "$name" up
    say "link $name: $(ip -o -4 addr show dev "$name" | awk '{ print $4 }') (was $found)"
  done
  for name in ${CTSYNC_NO_ADDRESS:-}; do
    ip -4 addr flush dev "$name"
    say "link $name: docker's address removed"
  done
}

# Both firewalls share one key, made by whichever starts first (the volume is shared).
sync_key() {  # PATH
  local key=$1
  mkdir -p "$(dirname "$key")"
  (
    flock -w 10 9 || die "cannot lock $key.lock"
    if [ ! -s "$key" ]; then
      umask 077
      head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$key.new"
      mv "$key.new" "$key"
      say "made a new sync key $key"
    fi
  ) 9>"$key.lock"
}

run_firewall() {
  NODE=${1:?usage: node.sh fw NODE}
  name_links
  # The firewall routes between its own links only.
  ip route del default 2>/dev/null || true
  nft -f /etc/ctsync/nftables.conf
  say "nftables ruleset loaded"
  sync_key /var/lib/ctsync/sync.key

  ctsyncd --config /etc/ctsync/ctsyncd.toml &
  local ctsyncd_pid=$! keepalived_pid="" i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$ctsyncd_pid" 2>/dev/null || die "ctsyncd exited at start"
    ctsyncctl status >/dev/null 2>&1 && break
    sleep 0.1
  done
  ctsyncctl status >/dev/null 2>&1 || die "ctsyncd does not answer ctsyncctl status after 10 s"
  say "ctsyncd up (pid $ctsyncd_pid)"

  stop() {
    trap '' TERM INT
    if [ -n "$keepalived_pid" ]; then
      kill -TERM "$keepalived_pid" 2>/dev/null || true
      wait "$keepalived_pid" 2>/dev/null || true
    fi
    kill -TERM "$ctsyncd_pid" 2>/dev/null || true
    wait "$ctsyncd_pid" 2>/dev/null || true
    say "stopped"
    exit "${1:-0}"
  }
  trap 'stop 0' TERM INT

  keepalived --dont-fork --log-console --log-detail --no-syslog --vrrp -i "$NODE" \
    --use-file /etc/ctsync/keepalived.conf &
  keepalived_pid=$!
  say "keepalived up (pid $keepalived_pid, config id $NODE)"

  local rc=0
  wait -n "$ctsyncd_pid" "$keepalived_pid" || rc=$?
  if ! kill -0 "$ctsyncd_pid" 2>/dev/null; then
    say "ctsyncd exited (status $rc): stopping keepalived"
  else
    say "keepalived exited (status $rc): stopping ctsyncd"
  fi
  stop 1
}

idle() {
  trap 'exit 0' TERM INT
  sleep infinity &
  wait $!
}

case ${1:-idle} in
  fw) shift; run_firewall "$@" ;;
  client)
    ip route replace default via "${2:?usage: node.sh client GATEWAY}"
    say "default route via $2"
    idle
    ;;
  server)
    ip route del default 2>/dev/null || true
    idle
    ;;
  idle) idle ;;
  *) exec "$@" ;;
esac
