#!/usr/bin/env bash
# Side-by-side benchmark of ctsyncd and conntrackd (the distribution's conntrack-tools) on the
# same machine, the same kernel and the same flows.
#
# For each daemon, two network namespaces A (active) and B (backup) joined by one veth
# (10.77.0.1/24 and 10.77.0.2/24), one daemon in each, synchronising over UDP unicast on the veth.
# Fresh namespaces for every scenario, so every kernel starts empty:
#
#   commit N   N NAT'd TCP ESTABLISHED [ASSURED] flows are created in A's kernel (conntrack -R,
#              LOADERS processes in parallel); A's daemon mirrors the kernel events to B. Once B
#              holds all N (asked for a resync once if it did not), B's copy is written into B's
#              kernel: `conntrackd -c` (commit the external cache) against `ctsyncctl promote`.
#              Timed from the command until `conntrack -C` in B counts all N: a commit that did
#              not land does not count.
#              Also reported: how long the command itself took (`ctsyncctl promote` returns
#              only once the new active node mirrors its kernel), what the daemon logs as its
#              commit time, how many committed flows carry the source NAT, and how many of them
#              B's daemon then counts as its own kernel's (it must sync them once active).
#   events M   M flows created in A as fast as the kernel takes them, then all deleted at once
#              (conntrack -F): events produced per second, how many B ended up holding (and
#              how many deletes it missed), and how fast B took them.
#
# Both daemons run as users get them: conntrackd with its default SCHED_RR priority 99 (which
# slows the flow creators down on a small machine), its caches and buffers sized for 500 000
# flows (vs_conntrackd/conntrackd.conf.in); ctsyncd with its defaults (vs_conntrackd/
# ctsyncd.toml.in). The machine is shared by creators, kernel and both daemons: other load on it
# shows in the figures, so run it on a quiet machine and more than once (--rounds).
#
# Usage: tests/bench/vs_conntrackd.sh [--quick] [options]      (root; conntrackd, conntrack, nft)
#   --quick              10 000 flows, 5 000 events: a smoke run (< 60 s) that fails (exit 1)
#                        when a daemon does not sync or commit, never on performance
#   --sizes "N ..."      commit sizes (default "100000 500000")
#   --events M           flows in the event burst (default 200000; 0 = skip)
#   --loaders P          conntrack -R processes creating flows in parallel (default 2)
#   --only NAME          conntrackd or ctsyncd
#   --rounds R           repeat everything R times; the summary gives each round's figure
#   --work DIR           keep configs, logs and results in DIR (default: a temporary directory,
#                        removed after a successful run)
#   --expectations X     FTP control flows with one expectation each in the expectation
#                        scenario (default 4000, within the kernel's nf_conntrack_expect_max of
#                        4096; 0 = skip): B's commit of the flows and then the expectations
#   --ctsyncd PATH, --ctsyncctl PATH   (or $CTSYNCD, $CTSYNCCTL; default build/syncd/ in the repo)
#   --expect-loader PATH (or $EXPECT_LOADER; default build/tests/bench/expect_loader)
# Exit status: 0 done, 1 a daemon did not sync or commit (or the set-up failed), 2 usage,
# 77 not root.
#
# Only what this script starts is stopped (by PID) and only its own namespaces (ctb-<pid>-*) are
# deleted. net.netfilter.nf_conntrack_max is global and cannot be set inside a namespace: it is
# raised on the host when the largest size needs it and put back on exit.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TPL="$HERE/vs_conntrackd"
CTSYNCD=${CTSYNCD:-$REPO/build/syncd/ctsyncd}
CTSYNCCTL=${CTSYNCCTL:-$REPO/build/syncd/ctsyncctl}
CONNTRACKD=${CONNTRACKD:-conntrackd}
EXPECT_LOADER=${EXPECT_LOADER:-$REPO/build/tests/bench/expect_loader}
EXPECTS=""

QUICK=0
SIZES=""
EVENTS=""
LOADERS=2
DAEMONS="conntrackd ctsyncd"
ROUNDS=1
WORK=""
KEEP_WORK=0

usage() { sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
  --quick) QUICK=1 ;;
  --sizes) SIZES=$2; shift ;;
  --events) EVENTS=$2; shift ;;
  --loaders) LOADERS=$2; shift ;;
  --only) DAEMONS=$2; shift ;;
  --rounds) ROUNDS=$2; shift ;;
  --work) WORK=$2; KEEP_WORK=1; shift ;;
  --ctsyncd) CTSYNCD=$2; shift ;;
  --ctsyncctl) CTSYNCCTL=$2; shift ;;
  --expectations) EXPECTS=$2; shift ;;
  --expect-loader) EXPECT_LOADER=$2; shift ;;
  -h | --help) usage; exit 0 ;;
  *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $QUICK -eq 1 ]; then
  SIZES=${SIZES:-10000} EVENTS=${EVENTS:-5000} EXPECTS=${EXPECTS:-1000}
else
  SIZES=${SIZES:-100000 500000} EVENTS=${EVENTS:-200000} EXPECTS=${EXPECTS:-4000}
fi
case $DAEMONS in
conntrackd | ctsyncd | "conntrackd ctsyncd") ;;
*) echo "--only takes conntrackd or ctsyncd" >&2; exit 2 ;;
esac
for v in $SIZES $EVENTS $LOADERS $ROUNDS $EXPECTS; do
  [[ $v =~ ^[0-9]+$ ]] || { echo "not a number: $v" >&2; exit 2; }
done
[ "$LOADERS" -ge 1 ] || { echo "--loaders must be at least 1" >&2; exit 2; }

# Bounds on every wait, in seconds. A daemon that has stopped making progress for SETTLE seconds
# is done; SYNC_TIMEOUT leaves room for conntrackd's own recovery from a netlink overrun (a full
# resync with its kernel after 30 s).
if [ $QUICK -eq 1 ]; then
  SETTLE=3 SYNC_TIMEOUT=15 START_TIMEOUT=10 COMMIT_TIMEOUT=20
else
  SETTLE=5 SYNC_TIMEOUT=45 START_TIMEOUT=20 COMMIT_TIMEOUT=180
fi

CTL_TIMEOUT=10  # seconds for one daemon client command (a commit gets COMMIT_TIMEOUT)
TAG="ctb-$$"
declare -A PIDS=()    # name -> pid of a process this script started
declare -a NAMESPACES=()
CT_MAX_OLD=""         # nf_conntrack_max before we raised it
CT_MAX_SET=""
FAILED=0

log() { echo "[$(date +%T.%3N)] $*"; }
die() {
  log "FAIL: $*"
  exit 1
}

# ---- cleanup --------------------------------------------------------------------------------

stop_pid() {  # NAME: SIGTERM, SIGKILL after 5 s
  local name=$1 pid=${PIDS[$1]:-} i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  unset "PIDS[$name]"
}

delete_namespaces() {
  local ns pid
  for ns in "${NAMESPACES[@]}"; do
    # Anything still inside is ours (a daemon's child, a loader).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null
    done
    ip netns del "$ns" 2>/dev/null
  done
  NAMESPACES=()
}

show_logs() {
  local f
  [ -n "$WORK" ] || return 0
  for f in "$WORK"/*.log; do
    [ -s "$f" ] || continue
    echo "----- $(basename "$f") (last 30 lines)"
    tail -n 30 "$f"
  done
}

cleanup() {
  local rc=$? name
  set +e
  trap - EXIT INT TERM
  for name in "${!PIDS[@]}"; do stop_pid "$name"; done
  delete_namespaces
  # Put the limit back unless someone else changed it in the meantime.
  if [ -n "$CT_MAX_OLD" ] &&
    [ "$(sysctl -n net.netfilter.nf_conntrack_max 2>/dev/null)" = "$CT_MAX_SET" ]; then
    sysctl -qw net.netfilter.nf_conntrack_max="$CT_MAX_OLD"
  fi
  if [ $rc -ne 0 ]; then
    show_logs
    [ -n "$WORK" ] && echo "work directory kept: $WORK"
  elif [ $KEEP_WORK -eq 0 ] && [ -n "$WORK" ]; then
    rm -rf "$WORK"
  fi
  exit $rc
}

# ---- environment ----------------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces, nftables, sysctl)"; exit 77; }
for spec in ip=iproute2 nft=nftables conntrack=conntrack "$CONNTRACKD"=conntrackd \
  timeout=coreutils split=coreutils awk=mawk; do
  command -v "${spec%%=*}" >/dev/null ||
    { echo "missing: ${spec%%=*} (Debian package ${spec#*=}; tests/install-deps.sh installs it)"; exit 1; }
done
case " $DAEMONS " in
*" ctsyncd "*)
  for b in "$CTSYNCD" "$CTSYNCCTL"; do
    [ -x "$b" ] || { echo "missing: $b (build it, or set CTSYNCD/CTSYNCCTL)"; exit 1; }
  done
  ;;
esac

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "$WORK" ]; then
  rm -rf "$WORK"
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d /tmp/ctb.XXXXXX)
fi
WORK=$(cd "$WORK" && pwd)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# Namespaces of earlier runs that were killed before their cleanup: their process is gone and
# nothing runs inside them any more.
for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^ctb-[0-9]+-/ { print $1 }'); do
  pid=${ns#ctb-}
  pid=${pid%%-*}
  if ! kill -0 "$pid" 2>/dev/null && [ -z "$(ip netns pids "$ns" 2>/dev/null)" ]; then
    ip netns del "$ns" 2>/dev/null
  fi
done

# Each namespace counts its own flows against the global limit.
max_size=$EVENTS
for n in $SIZES; do [ "$n" -gt "$max_size" ] && max_size=$n; done
need=$((max_size + 65536))
cur=$(sysctl -n net.netfilter.nf_conntrack_max)
if [ "$cur" -lt "$need" ]; then
  CT_MAX_OLD=$cur
  CT_MAX_SET=$need
  sysctl -qw net.netfilter.nf_conntrack_max="$need" ||
    die "cannot raise net.netfilter.nf_conntrack_max to $need"
  log "net.netfilter.nf_conntrack_max $cur -> $need (restored on exit)"
fi

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/sync.key"
chmod 600 "$WORK/sync.key"

# ---- small helpers --------------------------------------------------------------------------

# Seconds between two $EPOCHREALTIME stamps (no fork while polling; awk only to print).
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "-" }'; }

record() {  # ROUND DAEMON METRIC VALUE
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
}

alive() { [ -n "${PIDS[$1]:-}" ] && kill -0 "${PIDS[$1]}" 2>/dev/null; }

kernel_count() { timeout 10 ip netns exec "$1" conntrack -C 2>/dev/null || echo -1; }

# The flows: TCP ESTABLISHED, [ASSURED], source-NAT'd (the reply tuple goes to 203.0.113.x:port,
# so both tuples are unique), one hour timeout. Lines for `conntrack -R` (--load-file), split
# round-robin into LOADERS files. Generated once per size.
flow_files() {  # N -> prints the file prefix
  local n=$1 prefix="$WORK/flows-$1"
  if [ ! -e "$prefix.done" ]; then
    awk -v n="$n" 'BEGIN {
      for (i = 0; i < n; i++)
        printf "-I -p tcp -s 172.%d.%d.%d -d 198.51.100.%d --sport %d --dport 443 " \
               "--src-nat 203.0.113.%d:%d --state ESTABLISHED -u ASSURED,SEEN_REPLY -t 3600\n",
               16 + int(i / 65536), int(i / 256) % 256, i % 256, i % 200 + 1,
               1024 + int(i / 7) % 60000, 1 + int(i / 32768), 1024 + i % 32768
    }' >"$prefix.all"
    split -n "r/$LOADERS" -d -a 3 "$prefix.all" "$prefix.part."
    rm -f "$prefix.all"
    touch "$prefix.done"
  fi
  echo "$prefix"
}

# ---- namespaces -----------------------------------------------------------------------------

NS_A="" NS_B=""
SCENARIO=0

make_namespaces() {
  SCENARIO=$((SCENARIO + 1))
  NS_A="$TAG-$SCENARIO-a"
  NS_B="$TAG-$SCENARIO-b"
  local ns
  for ns in "$NS_A" "$NS_B"; do
    ip netns add "$ns" || die "cannot create namespace $ns"
    NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
      net.ipv6.conf.default.disable_ipv6=1
  done
  ip -n "$NS_A" link add veth0 type veth peer name veth0 netns "$NS_B" || die "veth"
  ip -n "$NS_A" addr add 10.77.0.1/24 dev veth0
  ip -n "$NS_B" addr add 10.77.0.2/24 dev veth0
  ip -n "$NS_A" link set veth0 up
  ip -n "$NS_B" link set veth0 up
  # The sync traffic is not tracked, so `conntrack -C` counts the benchmark's flows only. The
  # empty NAT chain registers the NAT hooks, which NAT'd flows created over netlink need when
  # nothing else on the machine has loaded NAT.
  for ns in "$NS_A" "$NS_B"; do
    ip netns exec "$ns" nft -f - <<'EOF' || die "nft in $ns"
table ip ctb {
	chain raw_pre { type filter hook prerouting priority raw; policy accept; ip saddr 10.77.0.0/24 notrack; }
	chain raw_out { type filter hook output priority raw; policy accept; ip daddr 10.77.0.0/24 notrack; }
	chain nat_post { type nat hook postrouting priority srcnat; policy accept; }
}
EOF
  done
}

# ---- the two daemons, behind one interface ----------------------------------------------------
# start_pair DAEMON; b_count DAEMON (flows B holds for A); resync DAEMON; commit DAEMON.

conf_name() { echo "$WORK/$1-s$SCENARIO-$2"; }  # DAEMON NODE

start_conntrackd() {
  local node ns local_ip peer_ip conf
  for node in a b; do
    if [ $node = a ]; then ns=$NS_A local_ip=10.77.0.1 peer_ip=10.77.0.2; else
      ns=$NS_B local_ip=10.77.0.2 peer_ip=10.77.0.1; fi
    conf="$(conf_name conntrackd $node).conf"
    sed -e "s|@LOCAL@|$local_ip|; s|@PEER@|$peer_ip|; s|@IFACE@|veth0|" \
      -e "s|@WORK@|$WORK|g; s|@NAME@|conntrackd-s$SCENARIO-$node|g" \
      "$TPL/conntrackd.conf.in" >"$conf"
    ip netns exec "$ns" "$CONNTRACKD" -C "$conf" >"$WORK/conntrackd-s$SCENARIO-$node.log" 2>&1 &
    PIDS[conntrackd-$node]=$!
  done
  local i
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    if conntrackd_ctl a -s cache >/dev/null 2>&1 && conntrackd_ctl b -s cache >/dev/null 2>&1; then
      return 0
    fi
    if ! alive conntrackd-a || ! alive conntrackd-b; then break; fi
    sleep 0.1
  done
  die "conntrackd did not start (see its logs)"
}

conntrackd_ctl() {  # NODE ARGS...: the conntrackd client, in the node's namespace
  local node=$1 ns
  shift
  if [ "$node" = a ]; then ns=$NS_A; else ns=$NS_B; fi
  timeout "$CTL_TIMEOUT" ip netns exec "$ns" "$CONNTRACKD" -C "$(conf_name conntrackd "$node").conf" "$@"
}

start_ctsyncd() {
  local node ns local_ip id role conf
  for node in a b; do
    if [ $node = a ]; then ns=$NS_A local_ip=10.77.0.1 id=1 role=active; else
      ns=$NS_B local_ip=10.77.0.2 id=2 role=backup; fi
    conf="$(conf_name ctsyncd $node).toml"
    sed -e "s|@ID@|$id|; s|@ROLE@|$role|; s|@LOCAL@|$local_ip|; s|@IFACE@|veth0|" \
      -e "s|@WORK@|$WORK|g; s|@NAME@|ctsyncd-s$SCENARIO-$node|g" \
      "$TPL/ctsyncd.toml.in" >"$conf"
    ip netns exec "$ns" "$CTSYNCD" --config "$conf" >"$WORK/ctsyncd-s$SCENARIO-$node.log" 2>&1 &
    PIDS[ctsyncd-$node]=$!
  done
  # Ready when each sees the other up.
  local i sa sb
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    sa=$(ctsyncctl a status --json 2>/dev/null)
    sb=$(ctsyncctl b status --json 2>/dev/null)
    if [[ $sa == *'"up":true'* && $sb == *'"up":true'* ]]; then
      return 0
    fi
    if ! alive ctsyncd-a || ! alive ctsyncd-b; then break; fi
    sleep 0.1
  done
  log "status A: ${sa:-none}"
  log "status B: ${sb:-none}"
  die "ctsyncd pair did not start or did not see each other (see its logs)"
}

ctsyncctl() {  # NODE ARGS...
  local node=$1
  shift
  timeout "$CTL_TIMEOUT" "$CTSYNCCTL" --socket "$WORK/ctsyncd-s$SCENARIO-$node.sock" "$@"
}

start_pair() {  # DAEMON
  make_namespaces
  "start_$1"
}

stop_pair() {  # DAEMON
  stop_pid "$1-a"
  stop_pid "$1-b"
  delete_namespaces
}

check_alive() {  # DAEMON
  alive "$1-a" || die "$1 on A exited (see its log)"
  alive "$1-b" || die "$1 on B exited (see its log)"
}

# The flows B's daemon holds in its peer cache (external) or counts as its own kernel's
# (internal, after a commit); -1 if it does not answer.
b_cache() {  # DAEMON external|internal
  local out field
  case $1 in
  conntrackd)
    out=$(conntrackd_ctl b -s cache 2>/dev/null |
      awk -v c="cache:$2" 'index($0, c) == 1 { print $NF; exit }')
    ;;
  ctsyncd)
    [ "$2" = external ] && field=replica_flows || field=local_flows
    out=$(ctsyncctl b status --json 2>/dev/null)
    out=${out#*\"$field\":}
    out=${out%%[!0-9]*}
    ;;
  esac
  echo "${out:--1}"
}
b_count() { b_cache "$1" external; }  # DAEMON: the flows of A that B holds
b_own() { b_cache "$1" internal; }    # DAEMON: the flows B counts as its own kernel's

wait_b_count() {  # DAEMON TARGET START TIMEOUT
  local daemon=$1 target=$2 start=$3 c now last=-2 last_at=$3
  local settle_us=$((SETTLE * 1000000)) timeout_us=$(($4 * 1000000))
  local start_us=${start/./}
  while :; do
    c=$(b_count "$daemon")
    now=$EPOCHREALTIME
    if [ "$c" != "$last" ]; then
      last=$c
      last_at=$now
    fi
    [ "$c" = "$target" ] && break
    local now_us=${now/./} last_us=${last_at/./}
    ((now_us - start_us > timeout_us)) && break
    ((now_us - last_us > settle_us)) && break
    check_alive "$daemon"
    sleep 0.1
  done
  W_COUNT=$last
  W_AT=$last_at
}

# Appends "STAMP COUNT" for NS's kernel every 50 ms to OUT until the count reaches TARGET or
# the deadline (microseconds since the epoch) has passed.
poll_kernel() {  # NS TARGET DEADLINE_US OUT
  local c now
  while :; do
    c=$(kernel_count "$1")
    now=$EPOCHREALTIME
    echo "$now $c" >>"$4"
    [ "$c" -ge "$2" ] && return 0
    ((${now/./} > $3)) && return 1
    sleep 0.05
  done
}

# Creates the flows of FILES in A's kernel, one `conntrack -R` per file in parallel. Sets
# L_START, L_END.
L_START="" L_END=""
load_flows() {  # PREFIX
  local f i=0 rc=0
  local -a pids=()
  L_START=$EPOCHREALTIME
  for f in "$1".part.*; do
    timeout 600 ip netns exec "$NS_A" conntrack -R "$f" >/dev/null 2>"$WORK/loader-$i.err" &
    pids+=($!)
    PIDS[loader-$i]=$!
    i=$((i + 1))
  done
  for ((i = 0; i < ${#pids[@]}; i++)); do
    wait "${pids[$i]}" || rc=1
    unset "PIDS[loader-$i]"
  done
  L_END=$EPOCHREALTIME
  [ $rc -eq 0 ] || { cat "$WORK"/loader-*.err; die "conntrack -R failed in A"; }
}

# The commit scenario (see the top of the file).
# As in a failover, the active node is gone when B commits: A's daemon is killed and A's
# kernel flushed. Namespaces share one conntrack hash table, so A's N entries would otherwise
# slow B's inserts (on two machines they would not meet).
kill_a() {  # DAEMON
  kill -KILL "${PIDS[$1-a]}" 2>/dev/null
  wait "${PIDS[$1-a]}" 2>/dev/null
  unset "PIDS[$1-a]"
  timeout 120 ip netns exec "$NS_A" conntrack -F >/dev/null 2>&1 || die "conntrack -F in A"
}

# B writes what it holds into its kernel: `conntrackd -c`, `ctsyncctl promote`. Prints what the
# command said; its exit status is the command's.
commit_b() {  # DAEMON
  case $1 in
  conntrackd) CTL_TIMEOUT=$COMMIT_TIMEOUT conntrackd_ctl b -c 2>&1 ;;
  ctsyncd) CTL_TIMEOUT=$COMMIT_TIMEOUT ctsyncctl b promote 2>&1 ;;
  esac
}

bench_commit() {  # ROUND DAEMON N
  local round=$1 d=$2 n=$3 prefix c held t0 t1 out cmd_s
  prefix=$(flow_files "$n")
  log "$d: commit $n — starting the pair"
  start_pair "$d"
  load_flows "$prefix"
  c=$(kernel_count "$NS_A")
  [ "$c" -eq "$n" ] || die "$d: A's kernel holds $c flows, not $n"
  wait_b_count "$d" "$n" "$L_START" "$SYNC_TIMEOUT"
  held=$W_COUNT
  local produced_s fill_s
  produced_s=$(secs "$L_START" "$L_END")
  fill_s=$(secs "$L_START" "$W_AT")
  log "$d: created $n flows in A in $produced_s s ($(rate "$n" "$produced_s")/s);" \
    "B holds $held after $fill_s s"
  record "$round" "$d" "fill_$n.produced_per_s" "$(rate "$n" "$produced_s")"
  record "$round" "$d" "fill_$n.lost" "$((n - held))"
  [ "$held" -eq "$n" ] && record "$round" "$d" "fill_$n.all_in_b_s" "$fill_s"
  if [ "$held" -ne "$n" ]; then
    log "$d: B is short by $((n - held)); asking for a resync"
    request_resync "$d" >>"$WORK/$d-s$SCENARIO-ctl.out" 2>&1
    t0=$EPOCHREALTIME
    wait_b_count "$d" "$n" "$t0" "$SYNC_TIMEOUT"
    held=$W_COUNT
    log "$d: after the resync B holds $held"
    record "$round" "$d" "fill_$n.after_resync" "$held"
    if [ "$held" -ne "$n" ]; then
      FAILED=1
      log "$d: FAIL: B holds $held of $n flows, even after a resync; commit not measured"
      stop_pair "$d"
      return
    fi
  fi

  kill_a "$d"
  c=$(kernel_count "$NS_B")
  [ "$c" -eq 0 ] || log "$d: note: B's kernel held $c flows before the commit"
  # B's kernel is watched from before the command until it holds the flows, so the time counts
  # until they are really there, whether the command returns before or after that.
  local before=$c target=$((c + n)) cmd_rc poll="$WORK/$d-s$SCENARIO-commit-poll.txt"
  t0=$EPOCHREALTIME
  poll_kernel "$NS_B" "$target" $((${t0/./} + COMMIT_TIMEOUT * 1000000)) "$poll" &
  PIDS[poller]=$!
  out=$(commit_b "$d")
  cmd_rc=$?
  t1=$EPOCHREALTIME
  # One more look right after the command: the poller samples every 50 ms.
  c=$(kernel_count "$NS_B")
  local t2=$EPOCHREALTIME first all
  wait "${PIDS[poller]}"
  unset "PIDS[poller]"
  cmd_s=$(secs "$t0" "$t1")
  [ -n "$out" ] && log "$d: commit command said: $out"
  [ $cmd_rc -eq 0 ] || log "$d: commit command exited with $cmd_rc"
  first=$(awk -v b="$before" '$2 > b { print $1; exit }' "$poll")
  all=$(awk -v t="$target" '$2 >= t { print $1; exit }' "$poll")
  if [ "$c" -ge "$target" ] && { [ -z "$all" ] || ((${t2/./} < ${all/./})); }; then all=$t2; fi
  [ -n "$first" ] || first=$all
  c=$(kernel_count "$NS_B")
  local nat
  nat=$(timeout 60 ip netns exec "$NS_B" conntrack -L --src-nat 2>/dev/null | wc -l)
  if [ -n "$all" ]; then
    local in_kernel_s first_s
    in_kernel_s=$(secs "$t0" "$all")
    first_s=$(secs "$t0" "$first")
    log "$d: commit: B's kernel holds all $n after $in_kernel_s s (the first after $first_s s);" \
      "the command took $cmd_s s; $c flows in B's kernel, $nat source-NAT'd"
    record "$round" "$d" "commit_$n.per_s" "$(rate "$n" "$in_kernel_s")"
    record "$round" "$d" "commit_$n.seconds" "$in_kernel_s"
    record "$round" "$d" "commit_$n.command_s" "$cmd_s"
    record "$round" "$d" "commit_$n.nat_in_b" "$nat"
    [ "$nat" -ge "$n" ] ||
      log "$d: WARNING: only $nat of the committed flows carry the source NAT"
  else
    FAILED=1
    log "$d: FAIL: B's kernel holds $((c - before)) of $n flows $COMMIT_TIMEOUT s after the commit"
    record "$round" "$d" "commit_$n.landed" "$((c - before))"
  fi
  # Does B's daemon know the flows now in its kernel (it has to sync them once it is the active
  # node)? Counted once the number stops moving.
  local own_flows=-2 prev i
  for ((i = 0; i < 75; i++)); do
    prev=$own_flows
    own_flows=$(b_own "$d")
    [ "$own_flows" = "$prev" ] && [ "$own_flows" -ge "$n" ] && break
    [ "$own_flows" = "$prev" ] && [ $i -ge 10 ] && break
    sleep 0.2
  done
  log "$d: after the commit B's daemon counts $own_flows flows of its own kernel"
  record "$round" "$d" "commit_$n.b_own" "$own_flows"
  # What the daemon itself says the commit took.
  local own=""
  case $d in
  conntrackd)
    own=$(awk '/commit has taken/ { printf "%.3f\n", $(NF - 1) }' \
      "$WORK/conntrackd-s$SCENARIO-b.conntrackd.log" | tail -n 1)
    ;;
  ctsyncd) own=$(echo "$out" | sed -n 's/^promoted: [0-9]* flows in \([0-9.]*\) s.*/\1/p') ;;
  esac
  [ -n "$own" ] && record "$round" "$d" "commit_$n.daemon_s" "$own"
  stop_pair "$d"
}

# Expectations B's daemon holds for A; -1 if it does not answer.
b_expects() {  # DAEMON
  local out
  case $1 in
  conntrackd) out=$(conntrackd_ctl b -e expect 2>/dev/null | grep -c 'proto=') ;;
  ctsyncd) out=$(ctsyncctl b list --expect --replica 2>/dev/null | grep -c 'proto=') ;;
  esac
  echo "${out:--1}"
}
kernel_expects() { timeout 10 ip netns exec "$1" conntrack -L expect 2>/dev/null | grep -c 'proto='; }

# The expectation scenario: X FTP control flows (the ftp helper attached) and one expectation
# each in A's kernel (expect_loader); once B holds them, A dies and B commits, as in a failover.
# Timed until B's kernel holds every expectation (their masters go first).
bench_expect() {  # ROUND DAEMON X
  local round=$1 d=$2 x=$3 out c i t0 t1 all=""
  log "$d: expectations $x — starting the pair"
  start_pair "$d"
  out=$(timeout 120 ip netns exec "$NS_A" "$EXPECT_LOADER" "$x" 2>&1) ||
    die "expect_loader in A: $out"
  log "$d: A's kernel: $out"
  for ((i = 0; i < SYNC_TIMEOUT * 10; i++)); do
    c=$(b_expects "$d")
    [ "$c" -ge "$x" ] && break
    check_alive "$d"
    sleep 0.1
  done
  log "$d: B's daemon holds $c of $x expectations"
  record "$round" "$d" "expect_$x.held_by_b" "$c"
  if [ "$c" -lt "$x" ]; then
    FAILED=1
    log "$d: FAIL: B holds $c of $x expectations; commit not measured"
    stop_pair "$d"
    return
  fi
  kill_a "$d"
  t0=$EPOCHREALTIME
  # conntrackd commits its flows, then its expectations (ExpectationSync on).
  out=$(commit_b "$d")
  t1=$EPOCHREALTIME
  for ((i = 0; i < COMMIT_TIMEOUT * 20; i++)); do
    c=$(kernel_expects "$NS_B")
    if [ "$c" -ge "$x" ]; then
      all=$EPOCHREALTIME
      break
    fi
    sleep 0.05
  done
  [ -n "$out" ] && log "$d: commit command said: $(echo "$out" | tr '\n' ' ')"
  if [ -n "$all" ]; then
    local s
    # The command returns once the kernel holds them; a check right after can only add time.
    if ((${t1/./} < ${all/./})); then s=$(secs "$t0" "$all"); else s=$(secs "$t0" "$t1"); fi
    log "$d: B's kernel holds all $x expectations (and their masters) $s s after the commit began"
    record "$round" "$d" "expect_$x.per_s" "$(rate "$x" "$s")"
    record "$round" "$d" "expect_$x.seconds" "$s"
  else
    FAILED=1
    log "$d: FAIL: B's kernel holds $c of $x expectations $COMMIT_TIMEOUT s after the commit"
    record "$round" "$d" "expect_$x.landed" "$c"
  fi
  stop_pair "$d"
}

# The event scenario (see the top of the file).
bench_events() {  # ROUND DAEMON M
  local round=$1 d=$2 m=$3 prefix c held left t0 t1 s
  prefix=$(flow_files "$m")
  log "$d: events $m — starting the pair"
  start_pair "$d"
  load_flows "$prefix"
  c=$(kernel_count "$NS_A")
  [ "$c" -eq "$m" ] || die "$d: A's kernel holds $c flows, not $m"
  wait_b_count "$d" "$m" "$L_START" "$SYNC_TIMEOUT"
  held=$W_COUNT
  s=$(secs "$L_START" "$L_END")
  local took
  took=$(secs "$L_START" "$W_AT")
  log "$d: $m creates in $s s ($(rate "$m" "$s")/s); B holds $held after $took s"
  record "$round" "$d" "create.produced_per_s" "$(rate "$m" "$s")"
  record "$round" "$d" "create.lost" "$((m - held))"
  record "$round" "$d" "create.replicated_per_s" "$(rate "$held" "$took")"

  t0=$EPOCHREALTIME
  timeout 120 ip netns exec "$NS_A" conntrack -F >/dev/null 2>&1 || die "conntrack -F in A"
  t1=$EPOCHREALTIME
  c=$(kernel_count "$NS_A")
  [ "$c" -eq 0 ] || log "$d: note: A's kernel still holds $c flows after the flush"
  wait_b_count "$d" 0 "$t0" "$SYNC_TIMEOUT"
  left=$W_COUNT
  s=$(secs "$t0" "$t1")
  took=$(secs "$t0" "$W_AT")
  log "$d: $m deletes in $s s ($(rate "$m" "$s")/s); B still holds $left after $took s"
  record "$round" "$d" "delete.produced_per_s" "$(rate "$m" "$s")"
  record "$round" "$d" "delete.lost" "$left"
  record "$round" "$d" "delete.replicated_per_s" "$(rate "$((held - left))" "$took")"
  if [ "$held" -le 0 ] || [ "$left" -ge "$held" ]; then
    FAILED=1
    log "$d: FAIL: events were not replicated (B held $held after creates, $left after deletes)"
  elif [ $QUICK -eq 1 ] && { [ "$held" -ne "$m" ] || [ "$left" -ne 0 ]; }; then
    FAILED=1
    log "$d: FAIL: $((m - held)) creates and $left deletes lost at only $m events"
  fi
  stop_pair "$d"
}

# ---- the report -----------------------------------------------------------------------------

# One row per metric: conntrackd, ctsyncd, ratio. With several rounds, each round's figure.
print_table() {
  local sizes="$SIZES"
  awk -F '\t' -v sizes="$sizes" -v events="$EVENTS" -v rounds="$ROUNDS" -v expects="$EXPECTS" '
    { v[$2, $3] = cnt[$2, $3] ? v[$2, $3] " / " $4 : $4
      sum[$2, $3] += $4; cnt[$2, $3]++ }
    function cell(d, k) { return ((d, k) in v) ? v[d, k] : "—" }
    function mean(d, k) { return cnt[d, k] ? sum[d, k] / cnt[d, k] : "" }
    # ratio of means, oriented so that > 1 means ctsyncd is better
    function ratio(k, higher_better,   a, b) {
      if (!cnt["conntrackd", k] || !cnt["ctsyncd", k]) return "—"
      a = mean("conntrackd", k); b = mean("ctsyncd", k)
      if (higher_better) return (a > 0) ? sprintf("%.2fx", b / a) : "—"
      return (b > 0) ? sprintf("%.2fx", a / b) : "—"
    }
    function row(label, k, kind) {
      if (!((("conntrackd", k) in v) || (("ctsyncd", k) in v))) return
      printf "%-52s %-24s %-24s %s\n", label, cell("conntrackd", k), cell("ctsyncd", k),
             kind == "count" ? "" : ratio(k, kind == "rate")
    }
    END {
      printf "%-52s %-24s %-24s %s\n", "metric", "conntrackd", "ctsyncd", "ctsyncd vs conntrackd"
      n = split(sizes, s, " ")
      for (i = 1; i <= n; i++) {
        N = s[i]
        row("commit " N " flows into B: flows/s", "commit_" N ".per_s", "rate")
        row("commit " N " flows: s until B kernel holds all", "commit_" N ".seconds", "time")
        row("commit " N " flows: s the command took", "commit_" N ".command_s", "time")
        row("commit " N " flows: s as the daemon logs it", "commit_" N ".daemon_s", "time")
        row("commit " N " flows: SNAT flows in B kernel", "commit_" N ".nat_in_b", "count")
        row("commit " N " flows: B daemon then knows as its own", "commit_" N ".b_own", "count")
        row("commit " N " flows: landed (FAILED commit)", "commit_" N ".landed", "count")
        row("fill " N ": creates/s produced in A", "fill_" N ".produced_per_s", "count")
        row("fill " N ": s until B holds all", "fill_" N ".all_in_b_s", "time")
        row("fill " N ": lost (N - held by B)", "fill_" N ".lost", "count")
        row("fill " N ": held after a resync", "fill_" N ".after_resync", "count")
      }
      if (events > 0) {
        row("events " events ": creates/s produced in A", "create.produced_per_s", "count")
        row("events " events ": creates/s replicated to B", "create.replicated_per_s", "rate")
        row("events " events ": creates lost (M - held)", "create.lost", "count")
        row("events " events ": deletes/s produced (conntrack -F)", "delete.produced_per_s", "count")
        row("events " events ": deletes/s replicated to B", "delete.replicated_per_s", "rate")
        row("events " events ": deletes lost (still held)", "delete.lost", "count")
      }
      if (expects > 0) {
        row("expectations " expects ": held by B before the commit", "expect_" expects ".held_by_b", "count")
        row("expectations " expects " (+ masters) committed: expectations/s", "expect_" expects ".per_s", "rate")
        row("expectations " expects ": s until B kernel holds all", "expect_" expects ".seconds", "time")
        row("expectations " expects ": landed (FAILED commit)", "expect_" expects ".landed", "count")
      }
      if (rounds > 1) print "(a / b / ...: one figure per round; the ratio compares the means)"
    }' "$RESULTS"
}

# ---- main -----------------------------------------------------------------------------------

log "work directory: $WORK; $(nproc) CPUs; kernel $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg)"
log "conntrackd: $("$CONNTRACKD" -v 2>&1 | head -n 1)"
case " $DAEMONS " in *" ctsyncd "*) log "ctsyncd: $CTSYNCD" ;; esac
log "sizes: $SIZES; event burst: $EVENTS; expectations: $EXPECTS; loaders: $LOADERS; rounds: $ROUNDS"
if [ "$EXPECTS" -gt 0 ] && [ ! -x "$EXPECT_LOADER" ]; then
  die "no expect_loader at $EXPECT_LOADER (build it: cmake --build build --target expect_loader)"
fi

for ((round = 1; round <= ROUNDS; round++)); do
  for d in $DAEMONS; do
    for n in $SIZES; do bench_commit "$round" "$d" "$n"; done
    [ "$EVENTS" -gt 0 ] && bench_events "$round" "$d" "$EVENTS"
    [ "$EXPECTS" -gt 0 ] && bench_expect "$round" "$d" "$EXPECTS"
  done
done

echo
echo "== conntrackd $("$CONNTRACKD" -v 2>&1 | grep -o 'v[0-9.]*[0-9]' | head -n 1) vs ctsyncd," \
  "$(nproc) CPUs, kernel $(uname -r), $LOADERS loader(s), FTFW/UDP vs unicast, one veth"
print_table
echo
if [ $FAILED -ne 0 ]; then
  log "FAIL: a daemon did not sync or commit (see above)"
  exit 1
fi
