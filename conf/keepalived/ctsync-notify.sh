#!/usr/bin/env bash
# keepalived notify script for ctsyncd: moves the conntrack role and the virtual addresses
# together, in the order that keeps established flows alive.
#
#   ctsync-notify.sh [OPTIONS] TYPE NAME STATE [PRIORITY]
#
# keepalived appends TYPE ("INSTANCE" or "GROUP"), NAME, STATE and PRIORITY to the command of a
# `notify` line, so options go first:
#
#   notify "/usr/local/lib/ctsync/ctsync-notify.sh --vips /etc/ctsync/vips"
#
#   MASTER         ctsyncctl promote, THEN raise the addresses (+ gratuitous ARP).
#                  promote returns only once the kernel holds the replica's flows, so the first
#                  packet that reaches this node through the new address finds its conntrack
#                  entry. keepalived's own virtual_ipaddress comes up at the state change,
#                  before any notify script has run: a mid-stream packet that beats the commit
#                  is INVALID (dropped) or, addressed to the NAT address, answered with a reset by
#                  the local TCP stack. That is the reset race conntrackd setups hit, and why
#                  this script, not keepalived, owns the addresses.
#   BACKUP, STOP,  drop the addresses, THEN ctsyncctl demote.
#   DELETED
#   FAULT          drop the addresses, THEN ctsyncctl demote --fault.
#
# If promote fails (daemon down, commit failed) the addresses are raised anyway: VRRP elected
# this node and nobody else will forward, so new connections at least work. The failure is
# logged at err and the exit status is 1.
#
# Options (each also settable from the environment):
#   --vips FILE          virtual addresses, one "DEV ADDR/PREFIX" per line, # comments
#                        [CTSYNC_VIPS, default /etc/ctsync/vips]
#   --socket PATH        ctsyncd's control socket [CTSYNCCTL_SOCKET, default: ctsyncctl's own]
#   --ctsyncctl PATH     the CLI [CTSYNCCTL, default: ctsyncctl from PATH, /usr/local/sbin,
#                        /usr/sbin, /usr/local/bin, /usr/bin]
#   --garp-command CMD   run as `CMD DEV ADDR` (ADDR without prefix) for each raised address, in
#                        the background [CTSYNC_GARP_CMD, default: iputils `arping -U`]
#   --timeout SECONDS    limit for each ctsyncctl call [CTSYNC_NOTIFY_TIMEOUT, default 60]
#   --lock-file PATH     serialises overlapping notifications [CTSYNC_NOTIFY_LOCK, default
#                        /run/ctsync-notify-<socket name>.lock]
#   --log-file PATH      also append each log line here [CTSYNC_NOTIFY_LOG]
#
# Logs through logger(1) as ctsync-notify (facility daemon, sent when the script ends) and on
# stderr.
# Exit: 0 done, 1 a step failed (all steps are still tried), 2 usage or a bad vips file.
#
# IPv6 addresses are added with `nodad` (a tentative address would drop traffic for a second);
# the kernel sends no unsolicited neighbour advertisement for them, so give a --garp-command
# that does if IPv6 neighbours must move at once.
set -uo pipefail

prog=ctsync-notify
vips_file=${CTSYNC_VIPS:-/etc/ctsync/vips}
socket=${CTSYNCCTL_SOCKET:-}
ctsyncctl=${CTSYNCCTL:-}
garp_cmd=${CTSYNC_GARP_CMD:-}
timeout_s=${CTSYNC_NOTIFY_TIMEOUT:-60}
lock_file=${CTSYNC_NOTIFY_LOCK:-}
log_file=${CTSYNC_NOTIFY_LOG:-}

# Log lines go to stderr and --log-file at once (shell builtins only), and to syslog when the
# script ends: a failover should not wait for logger processes.
syslog_queue=()
log() {  # LEVEL MESSAGE...
  local level=$1
  shift
  syslog_queue+=("$level" "$*")
  echo "$prog: $level: $*" >&2
  if [ -n "$log_file" ]; then
    printf '%(%F %T)T.%s %s[%d]: %s: %s\n' -1 "${EPOCHREALTIME#*.}" "$prog" $$ "$level" "$*" \
      >>"$log_file" 2>/dev/null || true
  fi
}
# shellcheck disable=SC2317  # run by the EXIT trap
flush_syslog() {
  local i
  for ((i = 0; i < ${#syslog_queue[@]}; i += 2)); do
    logger -t "$prog" -p "daemon.${syslog_queue[i]}" -- "${syslog_queue[i + 1]}" 2>/dev/null ||
      true
  done
}
trap flush_syslog EXIT

usage() {
  echo "usage: $prog [--vips FILE] [--socket PATH] [--ctsyncctl PATH] [--garp-command CMD]" \
    "[--timeout S] [--lock-file PATH] [--log-file PATH] TYPE NAME STATE [PRIORITY]" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
    --vips) vips_file=${2:?}; shift 2 ;;
    --socket) socket=${2:?}; shift 2 ;;
    --ctsyncctl) ctsyncctl=${2:?}; shift 2 ;;
    --garp-command) garp_cmd=${2:?}; shift 2 ;;
    --timeout) timeout_s=${2:?}; shift 2 ;;
    --lock-file) lock_file=${2:?}; shift 2 ;;
    --log-file) log_file=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) log err "unknown option $1"; usage ;;
    *) break ;;
  esac
done
if [ $# -lt 3 ] || [ $# -gt 4 ]; then usage; fi
type=$1 name=$2 state=$3 priority=${4:-}

if [ -z "$ctsyncctl" ]; then
  ctsyncctl=$(PATH=$PATH:/usr/local/sbin:/usr/sbin:/usr/local/bin:/usr/bin command -v ctsyncctl) || {
    log err "ctsyncctl not found (set --ctsyncctl or CTSYNCCTL)"
    ctsyncctl=ctsyncctl
  }
fi
if [ -z "$lock_file" ]; then
  lock_file=/run/ctsync-notify-$(basename "${socket:-ctsyncd.sock}").lock
fi

# ---- the virtual addresses ------------------------------------------------------------------

vip_devs=() vip_addrs=()
read_vips() {
  if [ ! -r "$vips_file" ]; then
    log err "cannot read the virtual address file $vips_file"
    return 2
  fi
  local n=0 line dev addr extra
  while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    line=${line%%#*}
    read -r dev addr extra <<<"$line" || true
    [ -z "${dev:-}" ] && continue
    if [ -z "${addr:-}" ] || [ -n "${extra:-}" ] || [[ $addr != */* ]]; then
      log err "$vips_file:$n: expected 'DEV ADDR/PREFIX', got '$line'"
      return 2
    fi
    vip_devs+=("$dev")
    vip_addrs+=("$addr")
  done <"$vips_file"
  if [ ${#vip_addrs[@]} -eq 0 ]; then
    log warning "$vips_file lists no addresses"
  fi
}

garp_method=""  # decided once, on the first address: "cmd", "arping" or "none"
announce() {  # DEV ADDR (no prefix); in the background, never holding the lock
  local dev=$1 addr=$2
  if [ -z "$garp_method" ]; then
    if [ -n "$garp_cmd" ]; then
      garp_method=cmd
    elif command -v arping >/dev/null && arping -V 2>&1 | grep -q iputils; then
      garp_method=arping
    else
      garp_method=none
    fi
  fi
  case $garp_method in
    cmd)
      # shellcheck disable=SC2086  # the command may carry its own arguments
      $garp_cmd "$dev" "$addr" 9>&- >/dev/null 2>&1 &
      ;;
    arping)
      # iputils arping only does IPv4; see the header for IPv6.
      [[ $addr == *:* ]] || arping -q -U -c 3 -I "$dev" "$addr" 9>&- >/dev/null 2>&1 &
      ;;
    none)
      log warning "no gratuitous ARP for $addr on $dev: install iputils-arping or give" \
        "--garp-command; neighbours follow only when their ARP entries expire"
      ;;
  esac
}

raise_vips() {
  local i rc=0 dev addr out
  for i in "${!vip_addrs[@]}"; do
    dev=${vip_devs[$i]} addr=${vip_addrs[$i]}
    local extra=()
    [[ $addr == *:* ]] && extra=(nodad)
    if out=$(ip addr replace "$addr" dev "$dev" "${extra[@]}" 2>&1); then
      announce "$dev" "${addr%/*}"
      log info "raised $addr on $dev"
    else
      log err "cannot raise $addr on $dev: $out"
      rc=1
    fi
  done
  return $rc
}

drop_vips() {
  local i rc=0 dev addr out
  for i in "${!vip_addrs[@]}"; do
    dev=${vip_devs[$i]} addr=${vip_addrs[$i]}
    if out=$(ip addr del "$addr" dev "$dev" 2>&1); then
      log info "dropped $addr from $dev"
    elif [[ $out == *"Cannot assign requested address"* || $out == *"Address not found"* ||
      $out == *"Cannot find device"* ]]; then
      :  # not there: nothing to drop
    else
      log err "cannot drop $addr from $dev: $out"
      rc=1
    fi
  done
  return $rc
}

# ---- the daemon -----------------------------------------------------------------------------

ctl() {  # COMMAND ARGS...: runs ctsyncctl, logs its output and a clear reason on failure
  local args=() out rc
  [ -n "$socket" ] && args+=(--socket "$socket")
  out=$(timeout "$timeout_s" "$ctsyncctl" "${args[@]}" "$@" 2>&1)
  rc=$?
  if [ $rc -eq 0 ]; then
    log info "ctsyncctl $*: ${out:-ok}"
    return 0
  fi
  local why
  case $rc in
    1) why="command failed" ;;
    2) why="usage error (ctsyncctl too old for this script?)" ;;
    3) why="ctsyncd not reachable${socket:+ at $socket}" ;;
    124) why="no answer within ${timeout_s}s" ;;
    126 | 127) why="cannot run $ctsyncctl" ;;
    *) why="exit status $rc" ;;
  esac
  log err "ctsyncctl $* failed: $why${out:+: $out}"
  return 1
}

# ---- main -----------------------------------------------------------------------------------

exec 9>>"$lock_file" || { log err "cannot open the lock file $lock_file"; exit 1; }
if ! flock -w "$timeout_s" 9; then
  log err "another notification still holds $lock_file after ${timeout_s}s"
  exit 1
fi

read_vips || exit 2
log info "$type $name -> $state${priority:+ (priority $priority)}"

status=0
case $state in
  MASTER)
    if ! ctl promote; then
      log err "raising the addresses without the replica's flows in the kernel:" \
        "established connections through $name will be reset"
      status=1
    fi
    raise_vips || status=1
    ;;
  BACKUP | STOP | DELETED)
    drop_vips || status=1
    ctl demote || status=1
    ;;
  FAULT)
    drop_vips || status=1
    ctl demote --fault || status=1
    ;;
  *)
    log err "unknown state '$state' (expected MASTER, BACKUP, FAULT or STOP)"
    exit 2
    ;;
esac
exit $status
