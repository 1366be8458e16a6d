# Shared by the system test scripts (sourced, not run): namespaces, processes, waits, cleanup.
#
# Everything a test creates is named ctsys-<pid>-* (namespaces) or lives in $WORK, and every
# process it starts is remembered by PID; cleanup() on any exit stops those PIDs, deletes those
# namespaces and nothing else. Every wait has a timeout.
# shellcheck shell=bash disable=SC2034  # variables for the scripts that source this

SKIP=77
SYSTEM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SYSTEM_DIR/../.." && pwd)
PY=${CTSYS_PYTHON:-/usr/bin/python3}
STREAM="$SYSTEM_DIR/stream.py"
TAG="ctsys-$$"

declare -a NAMESPACES=()
declare -A PIDS=()  # name -> pid of what this test started
declare -a EXTRA_CLEANUP=()
WORK=""
KEEP_WORK=0

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
log() { echo "[$(date +%T.%3N)] $*"; }
LAST_ERR=""
FAIL_REPORTED=0
fail() {
  log "FAIL: $*"
  FAIL_REPORTED=1
  exit 1
}
skip() {
  echo "SKIPPED: $*"
  exit $SKIP
}

# Not root or no network namespaces here: skip (exit 77). A missing tool is a failure that
# names the Debian package: tests/install-deps.sh is supposed to have installed it.
require_env() {  # TOOL=PACKAGE ...
  [ "$(id -u)" -eq 0 ] || skip "system tests need root (network namespaces, nftables)"
  local spec tool pkg missing=()
  for spec in ip=iproute2 nft=nftables conntrack=conntrack flock=util-linux \
    "$PY"=python3 "$@"; do
    tool=${spec%%=*} pkg=${spec#*=}
    command -v "$tool" >/dev/null || missing+=("$tool (Debian package $pkg)")
  done
  [ ${#missing[@]} -eq 0 ] || fail "missing: ${missing[*]} — run tests/install-deps.sh"
  ip netns add "$TAG-probe" 2>/dev/null || skip "cannot create network namespaces here"
  ip netns del "$TAG-probe"
}

# One process that sends SIGTERM to this shell after SECONDS (its PID: DEADLINE_PID; kill it
# when done).
start_deadline() {  # SECONDS
  "$PY" -c 'import os, signal, sys, time
time.sleep(float(sys.argv[1]))
print(f"deadline: {sys.argv[1]} s passed, stopping", file=sys.stderr)
os.kill(int(sys.argv[2]), signal.SIGTERM)' "$1" $$ &
  DEADLINE_PID=$!
}

# $WORK holds configs, keys, logs and reports. Given a directory (ctest passes one under the
# build tree) it is emptied and kept for inspection; otherwise a temporary one is removed when
# the test passes.
make_work() {  # [DIR]
  if [ -n "${1:-}" ]; then
    WORK=$1
    rm -rf "$WORK"
    mkdir -p "$WORK"
    KEEP_WORK=1
  else
    WORK=$(mktemp -d /tmp/ctsys.XXXXXX)
  fi
  trap cleanup EXIT
  # Everything this test starts inherits a higher CPU priority: on a shared CI machine other
  # jobs would otherwise stretch the failover (a firewall does not share its CPUs with
  # compilers). CTSYS_NICE=0 measures without it.
  renice -n "${CTSYS_NICE:--10}" -p $$ >/dev/null 2>&1 || true
  # Our own deadline, below ctest's TIMEOUT (which kills without running this cleanup): a
  # SIGTERM to this shell after CTSYS_DEADLINE seconds ends the test through cleanup().
  start_deadline "${CTSYS_DEADLINE:-100}"
  PIDS[watchdog]=$DEADLINE_PID
  # A command that fails outside a condition ends the test (set -e): remember which, for
  # cleanup() to name it (the trap also fires for handled failures inside functions).
  set -E
  trap 'LAST_ERR="line $LINENO: \"$BASH_COMMAND\" exited with status $?"' ERR
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Namespaces of earlier runs whose process is gone and that hold no process any more.
remove_stale_namespaces() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^ctsys-[0-9]+-/ { print $1 }'); do
    pid=${ns#ctsys-}
    pid=${pid%%-*}
    if ! kill -0 "$pid" 2>/dev/null && [ -z "$(ip netns pids "$ns" 2>/dev/null)" ]; then
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}

add_ns() {  # SHORTNAME: creates namespace $TAG-SHORTNAME, IPv6 off, lo up
  local ns="$TAG-$1"
  NAMESPACES+=("$ns")
  ip netns add "$ns"
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
    net.ipv6.conf.default.disable_ipv6=1 >/dev/null
  ip -n "$ns" link set lo up
}

# Starts CMD... in namespace NS in the background, output to $WORK/NAME.log; PIDS[NAME]=pid.
# `ip netns exec` execs the command, so the PID is the command's own.
start_bg() {  # NAME NS CMD...
  local name=$1 ns=$2
  shift 2
  ip netns exec "$ns" "$@" >>"$WORK/$name.log" 2>&1 &
  PIDS[$name]=$!
}

alive() { [ -n "${PIDS[$1]:-}" ] && kill -0 "${PIDS[$1]}" 2>/dev/null; }

# SIGTERM, then SIGKILL after TIMEOUT seconds; the exit status goes to STOP_RC (137 = killed,
# 143 = died of the SIGTERM itself). Not in $(...): only this shell can wait for its children.
STOP_RC=0
stop_pid() {  # NAME [TIMEOUT]
  local name=$1 timeout=${2:-5} pid=${PIDS[$1]:-} i
  STOP_RC=0
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || STOP_RC=$?
  unset "PIDS[$name]"
}

kill_pid() {  # NAME: SIGKILL now (a node dying)
  local pid=${PIDS[$1]:-}
  [ -n "$pid" ] || return 0
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$1]"
}

# Polls CMD... every 50 ms until it succeeds; 1 after TIMEOUT seconds.
# Checks that do not stop the test: each prints "ok" or "FAIL"; the script fails at its end
# when $failures is not 0.
failures=0
check() {  # DESCRIPTION COMMAND... (one command: compound conditions go in a function)
  local what=$1
  shift
  if "$@"; then
    echo "ok   $what"
  else
    echo "FAIL $what"
    failures=$((failures + 1))
  fi
}

wait_for() {  # TIMEOUT CMD...
  local timeout=$1 i
  shift
  for ((i = 0; i < ${timeout%.*} * 20 + 1; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  return 1
}

show_logs() {
  local f
  for f in "$WORK"/*.log; do
    [ -s "$f" ] || continue
    echo "----- $(basename "$f") (last 40 lines)"
    tail -n 40 "$f"
  done
}

cleanup() {
  local rc=$? name pid ns i
  set +e
  trap - EXIT INT TERM
  for name in "${!PIDS[@]}"; do
    kill -TERM "${PIDS[$name]}" 2>/dev/null
  done
  for ((i = 0; i < 40; i++)); do
    local any=0
    for name in "${!PIDS[@]}"; do
      kill -0 "${PIDS[$name]}" 2>/dev/null && any=1
    done
    [ $any -eq 0 ] && break
    sleep 0.05
  done
  for name in "${!PIDS[@]}"; do
    kill -KILL "${PIDS[$name]}" 2>/dev/null
    wait "${PIDS[$name]}" 2>/dev/null
  done
  # Anything still inside our namespaces was started from here (children of our processes,
  # keepalived's VRRP child, notify scripts): stop it by PID before the namespace goes.
  for ns in "${NAMESPACES[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null
    done
  done
  for ns in "${NAMESPACES[@]}"; do
    ip netns del "$ns" 2>/dev/null
  done
  for i in "${EXTRA_CLEANUP[@]}"; do
    rm -f "$i"
  done
  if [ $rc -ne 0 ] && [ $rc -ne $SKIP ] && [ $FAIL_REPORTED -eq 0 ]; then
    if [ $rc -eq 143 ] || [ $rc -eq 130 ]; then
      echo "FAIL: interrupted (signal)"
    else
      echo "FAIL: unexpected error${LAST_ERR:+ at $LAST_ERR}"
    fi
  fi
  if [ $rc -ne 0 ] && [ $rc -ne $SKIP ] && [ -n "$WORK" ]; then
    show_logs
    echo "work directory: $WORK"
  elif [ -n "$WORK" ] && [ $KEEP_WORK -eq 0 ]; then
    rm -rf "$WORK"
  fi
  exit $rc
}

# ---- the firewall pair (failover.sh, ftp_failover.sh) ---------------------------------------
#
#   cli CLIENT ──br0──┬── in0 fw1 out0 ──┬──br0── srv 192.0.2.10
#   (default via VIP) └── in0 fw2 out0 ──┘        (no route to 10.1.0.0/24)
#                         sync0 ═══ sync0   10.9.0.1 / 10.9.0.2 (ctsync, VRRP)
#
# The functions below use the script's COMMIT (on-promote|continuous), LINK (unicast|multicast),
# CTSYNCD and CTSYNCCTL, and two optional additions: FW_NFT_EXTRA (nft files loaded on both
# firewalls after docker/nftables.conf) and KERNEL_EXTRA (lines appended to ctsyncd's [kernel]).
declare -a FW_NFT_EXTRA=()
KERNEL_EXTRA=""

# Names and addresses of the pair; creates the four namespaces.
pair_init() {  # [CLIENT_ADDRESS] (default 10.1.0.10)
  CLI=$TAG-cli
  SRV=$TAG-srv
  declare -gA NS=([fw1]=$TAG-fw1 [fw2]=$TAG-fw2)
  local n
  for n in cli srv fw1 fw2; do add_ns "$n"; done
  declare -gA SYNC_ADDR=([fw1]=10.9.0.1 [fw2]=10.9.0.2)
  declare -gA OWN_ADDR=([fw1]=10.1.0.2 [fw2]=10.1.0.3)
  # Outside, each firewall's own address is in another subnet than the server's, so masquerade
  # (the primary address of the route's subnet) picks the VIP.
  declare -gA OWN_OUT_ADDR=([fw1]=198.51.100.2 [fw2]=198.51.100.3)
  declare -gA SOCK=([fw1]=/run/$TAG-fw1.sock [fw2]=/run/$TAG-fw2.sock)
  # ctsyncd keeps the role ctsyncctl gave it beside the socket (/run/NAME.role), for a restart.
  EXTRA_CLEANUP+=("${SOCK[fw1]}" "${SOCK[fw2]}" "/run/$TAG-fw1.role" "/run/$TAG-fw2.role")
  VIPS=("in0 10.1.0.1/24" "out0 192.0.2.1/24")
  IN_VIP=10.1.0.1
  OUT_VIP=192.0.2.1
  CLIENT=${1:-10.1.0.10}
  SERVER=192.0.2.10
}

# ---- topology -------------------------------------------------------------------------------

setup_topology() {
  local ns fw
  for ns in "$CLI" "$SRV"; do
    ip -n "$ns" link add br0 type bridge forward_delay 0 stp_state 0
  done
  for fw in fw1 fw2; do
    ip link add in0 netns "${NS[$fw]}" type veth peer name "$fw" netns "$CLI"
    ip link add out0 netns "${NS[$fw]}" type veth peer name "$fw" netns "$SRV"
    ip -n "$CLI" link set "$fw" master br0 up
    ip -n "$SRV" link set "$fw" master br0 up
  done
  ip link add sync0 netns "${NS[fw1]}" type veth peer name sync0 netns "${NS[fw2]}"
  ip -n "$CLI" addr add "$CLIENT/24" dev br0
  ip -n "$CLI" link set br0 up
  ip -n "$CLI" route add default via "$IN_VIP"
  ip -n "$SRV" addr add "$SERVER/24" dev br0
  ip -n "$SRV" link set br0 up
  for fw in fw1 fw2; do
    local ns=${NS[$fw]}
    ip -n "$ns" addr add "${OWN_ADDR[$fw]}/24" dev in0
    ip -n "$ns" addr add "${OWN_OUT_ADDR[$fw]}/24" dev out0
    ip -n "$ns" addr add "${SYNC_ADDR[$fw]}/24" dev sync0
    ip -n "$ns" link set in0 up
    ip -n "$ns" link set out0 up
    ip -n "$ns" link set sync0 up
    # The demo cluster's ruleset (docker/nftables.conf, in0 inside, out0 outside).
    ip netns exec "$ns" nft -f "$REPO_DIR/docker/nftables.conf"
    local extra
    for extra in "${FW_NFT_EXTRA[@]}"; do
      ip netns exec "$ns" nft -f "$extra"
    done
    # After the ruleset: its conntrack expressions load nf_conntrack into the namespace.
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.netfilter.nf_conntrack_tcp_loose=0
  done
}

link_state() {  # FW up|down
  local dev
  for dev in in0 out0 sync0; do
    ip -n "${NS[$1]}" link set "$dev" "$2"
  done
}

has_vip() {  # FW
  ip -n "${NS[$1]}" -o addr show dev in0 | grep -q "inet $IN_VIP/" &&
    ip -n "${NS[$1]}" -o addr show dev out0 | grep -q "inet $OUT_VIP/"
}

garp() {  # FW DEV ADDR, in the background
  local fw=$1 dev=$2 addr=$3
  if command -v arping >/dev/null && arping -V 2>&1 | grep -q iputils; then
    ip netns exec "${NS[$fw]}" timeout 3 arping -q -U -c 2 -I "$dev" "$addr" &
  else
    ip netns exec "${NS[$fw]}" timeout 3 "$PY" "$SYSTEM_DIR/garp.py" --count 2 "$dev" "$addr" &
  fi
  GARP_PIDS+=($!)
}
declare -a GARP_PIDS=()
reap_garps() {
  local pid
  for pid in "${GARP_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  GARP_PIDS=()
}

raise_vips() {  # FW: addresses up, then gratuitous ARP on both sides
  local v
  for v in "${VIPS[@]}"; do
    ip -n "${NS[$1]}" addr replace "${v#* }" dev "${v%% *}"
  done
  for v in "${VIPS[@]}"; do
    local a=${v#* }
    garp "$1" "${v%% *}" "${a%/*}"
  done
}

drop_vips() {  # FW
  local v
  for v in "${VIPS[@]}"; do
    ip -n "${NS[$1]}" addr del "${v#* }" dev "${v%% *}" 2>/dev/null || true
  done
}

# ---- ctsyncd --------------------------------------------------------------------------------

ctl() {  # FW ARGS...
  local fw=$1
  shift
  ip netns exec "${NS[$fw]}" timeout 30 "$CTSYNCCTL" --socket "${SOCK[$fw]}" "$@"
}

# shellcheck disable=SC2153  # LINK and COMMIT are the script's
write_config() {  # FW ROLE
  local fw=$1 role=$2 id=${1#fw} link
  if [ "$LINK" = unicast ]; then
    link="kind = \"unicast\"
interface = \"sync0\"
local_address = \"${SYNC_ADDR[$fw]}\"
port = 3780
peers = [\"${SYNC_ADDR[fw1]}\", \"${SYNC_ADDR[fw2]}\"]"
  else
    link="kind = \"multicast\"
interface = \"sync0\"
group = \"239.255.42.7\"
port = 3780"
  fi
  cat >"$WORK/$fw.toml" <<EOF
# $fw of the failover test ($(basename "$0")), generated.
[node]
id = $id
cluster_id = 7
role = "$role"

[sync]
key_file = "$WORK/sync.key"

[[sync.link]]
$link

[kernel]
commit = "$COMMIT"
# The sync link (ctsync and VRRP datagrams) is not a flow to sync.
ignore_addresses = ["10.9.0.0/24"]${KERNEL_EXTRA:+
$KERNEL_EXTRA}

[control]
socket = "${SOCK[$1]}"

[log]
level = "debug"
EOF
}

start_ctsyncd() {  # FW ROLE
  local fw=$1 t0
  write_config "$fw" "$2"
  t0=$(now)
  start_bg "ctsyncd-$fw" "${NS[$fw]}" "$CTSYNCD" --config "$WORK/$fw.toml"
  local i
  for ((i = 0; i < 200; i++)); do
    alive "ctsyncd-$fw" || fail "ctsyncd on $fw exited at start (see ctsyncd-$fw.log)"
    ctl "$fw" status >/dev/null 2>&1 && break
    sleep 0.05
  done
  ctl "$fw" status >/dev/null 2>&1 || fail "ctsyncd on $fw does not answer ctsyncctl status in 10 s"
  log "$fw: ctsyncd up as $2 ($(elapsed "$t0") s to answer)"
}

# `ctsyncctl status` field as a number ("replica flows: 12" -> 12); empty if absent.
status_num() {  # FW FIELD
  ctl "$1" status 2>/dev/null | awk -F': *' -v k="$2" '$1 == k { print $2 + 0; exit }'
}

show_status() {  # FW
  log "$1 status:"
  ctl "$1" status 2>&1 | sed 's/^/    /' || true
}

