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
