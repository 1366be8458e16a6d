#!/usr/bin/env bash
# conf/keepalived/ctsync-notify.sh against a stub ctsyncctl, in a network namespace of its own:
# the order of promote/demote and the address changes, exit statuses, error messages.
#
#   notify_test.sh [--out DIR]
#
# The stub records each call with whether the virtual addresses were up at that moment, so
# "promote before the addresses" and "addresses dropped before demote" are checked, not assumed.
# Exit: 0 pass, 1 fail, 77 skipped (not root, no namespaces).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

OUT=""
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
  esac
done
require_env logger=bsdutils timeout=coreutils
NOTIFY="$REPO_DIR/conf/keepalived/ctsync-notify.sh"
remove_stale_namespaces
make_work "$OUT"

add_ns node
NSN=$TAG-node
ip -n "$NSN" link add d0 type veth peer name d1
ip -n "$NSN" link set d0 up
ip -n "$NSN" link set d1 up
printf '%s\n' "# test addresses" "d0 10.50.0.1/24" "" "d1 10.50.1.1/24  # outside" >"$WORK/vips"

vips_up() {  # prints "up", "down" or "partial"
  local n=0
  ip -n "$NSN" -o addr show dev d0 | grep -q "inet 10.50.0.1/24" && n=$((n + 1))
  ip -n "$NSN" -o addr show dev d1 | grep -q "inet 10.50.1.1/24" && n=$((n + 1))
  case $n in 0) echo down ;; 2) echo up ;; *) echo partial ;; esac
}

# The stub: one line per call, "ctsyncctl ARGS... | vips=STATE"; exit status from $WORK/stub.rc.
cat >"$WORK/ctsyncctl" <<EOF
#!/usr/bin/env bash
n=0
ip -o addr show dev d0 | grep -q "inet 10.50.0.1/24" && n=\$((n + 1))
ip -o addr show dev d1 | grep -q "inet 10.50.1.1/24" && n=\$((n + 1))
case \$n in 0) s=down ;; 2) s=up ;; *) s=partial ;; esac
echo "ctsyncctl \$* | vips=\$s" >>"$WORK/calls"
rc=\$(cat "$WORK/stub.rc" 2>/dev/null || echo 0)
case "\$*" in *promote*) [ "\$rc" = 0 ] && echo "promoted: 3 flows in 0.001 s (created 3, updated 0, failed 0)" ;; esac
[ "\$rc" = 3 ] && echo "ctsyncctl: cannot connect to /run/x.sock: No such file or directory" >&2
exit \$rc
EOF
cat >"$WORK/garp" <<EOF
#!/usr/bin/env bash
echo "garp \$*" >>"$WORK/calls"
EOF
chmod +x "$WORK/ctsyncctl" "$WORK/garp"


# Runs the script as keepalived would (options, then TYPE NAME STATE PRIORITY); sets RC, ERR.
notify() {  # STATE [EXTRA OPTIONS...]
  local state=$1
  shift
  : >"$WORK/calls"
  RC=0
  ERR=$(ip netns exec "$NSN" "$NOTIFY" --vips "$WORK/vips" --ctsyncctl "$WORK/ctsyncctl" \
    --socket /run/x.sock --garp-command "$WORK/garp" --lock-file "$WORK/notify.lock" \
    --log-file "$WORK/notify.log" "$@" INSTANCE VI_1 "$state" 150 2>&1) || RC=$?
  sleep 0.2  # the gratuitous ARPs run in the background
}
calls() { cat "$WORK/calls"; }
first_call() { grep -m1 '^ctsyncctl' "$WORK/calls"; }

echo 0 >"$WORK/stub.rc"
notify MASTER
check "MASTER exits 0" [ $RC -eq 0 ]
check "MASTER promotes while the addresses are still down" \
  [ "$(first_call)" = "ctsyncctl --socket /run/x.sock promote | vips=down" ]
check "MASTER raises both addresses" [ "$(vips_up)" = up ]
check "MASTER announces both addresses" \
  [ "$(grep -c -e '^garp d0 10.50.0.1$' -e '^garp d1 10.50.1.1$' "$WORK/calls")" -eq 2 ]
check "promote's output is logged" grep -q "promoted: 3 flows" "$WORK/notify.log"

notify MASTER
check "MASTER again (addresses already up) exits 0" [ $RC -eq 0 ]

notify BACKUP
check "BACKUP exits 0" [ $RC -eq 0 ]
check "BACKUP demotes after the addresses are down" \
  [ "$(first_call)" = "ctsyncctl --socket /run/x.sock demote | vips=down" ]
check "BACKUP drops both addresses" [ "$(vips_up)" = down ]

notify BACKUP
check "BACKUP without addresses exits 0" [ $RC -eq 0 ]

notify MASTER
notify FAULT
check "FAULT exits 0" [ $RC -eq 0 ]
check "FAULT demotes with --fault after the addresses are down" \
  [ "$(first_call)" = "ctsyncctl --socket /run/x.sock demote --fault | vips=down" ]

notify STOP
check "STOP demotes" [ "$(first_call)" = "ctsyncctl --socket /run/x.sock demote | vips=down" ]

echo 3 >"$WORK/stub.rc"
notify MASTER
check "MASTER with ctsyncd unreachable exits 1" [ $RC -eq 1 ]
check "... and still raises the addresses" [ "$(vips_up)" = up ]
check "... and says why" grep -q "ctsyncd not reachable at /run/x.sock" <<<"$ERR"
check "... and what it means" grep -q "will be reset" <<<"$ERR"
notify BACKUP
backup_unreachable() { [ $RC -eq 1 ] && [ "$(vips_up)" = down ]; }
check "BACKUP with ctsyncd unreachable exits 1 and drops the addresses" backup_unreachable
echo 0 >"$WORK/stub.rc"

notify WEIRD
check "an unknown state exits 2" [ $RC -eq 2 ]
check "... naming it" grep -q "unknown state 'WEIRD'" <<<"$ERR"

printf '%s\n' "d0 10.50.0.1/24" "d1 10.50.1.1" >"$WORK/bad-vips"
notify MASTER --vips "$WORK/bad-vips"
check "a vips line without a prefix exits 2" [ $RC -eq 2 ]
check "... naming FILE:LINE" grep -q "bad-vips:2: expected 'DEV ADDR/PREFIX'" <<<"$ERR"
untouched() { [ ! -s "$WORK/calls" ] && [ "$(vips_up)" = down ]; }
check "... before touching anything" untouched

notify MASTER --vips "$WORK/missing"
missing_vips() { [ $RC -eq 2 ] && grep -q "cannot read" <<<"$ERR"; }
check "a missing vips file exits 2" missing_vips

RC=0
ERR=$(ip netns exec "$NSN" "$NOTIFY" INSTANCE VI_1 2>&1) || RC=$?
usage_error() { [ $RC -eq 2 ] && grep -q "^usage:" <<<"$ERR"; }
check "too few arguments: usage, exit 2" usage_error

# The environment instead of options (the socket and the addresses file).
: >"$WORK/calls"
RC=0
ip netns exec "$NSN" env CTSYNCCTL_SOCKET=/run/y.sock CTSYNC_VIPS="$WORK/vips" \
  CTSYNCCTL="$WORK/ctsyncctl" CTSYNC_GARP_CMD="$WORK/garp" CTSYNC_NOTIFY_LOCK="$WORK/notify.lock" \
  "$NOTIFY" INSTANCE VI_1 MASTER 150 >/dev/null 2>&1 || RC=$?
from_env() { [ $RC -eq 0 ] && [ "$(first_call)" = "ctsyncctl --socket /run/y.sock promote | vips=down" ]; }
check "settings from the environment" from_env

# Syslog: every line, tagged, facility daemon (a stub logger first in PATH records them).
mkdir -p "$WORK/bin"
printf '#!/bin/sh\necho "$*" >>"%s/syslog"\n' "$WORK" >"$WORK/bin/logger"
chmod +x "$WORK/bin/logger"
: >"$WORK/calls"
ip netns exec "$NSN" env PATH="$WORK/bin:$PATH" "$NOTIFY" --vips "$WORK/vips" \
  --ctsyncctl "$WORK/ctsyncctl" --garp-command "$WORK/garp" --lock-file "$WORK/notify.lock" \
  INSTANCE VI_1 BACKUP 100 >/dev/null 2>&1 || true
syslogged() {
  grep -q -- "-t ctsync-notify -p daemon.info -- INSTANCE VI_1 -> BACKUP (priority 100)" \
    "$WORK/syslog" && grep -q -- "-p daemon.info -- ctsyncctl demote" "$WORK/syslog"
}
check "log lines go to syslog (logger -t ctsync-notify -p daemon.LEVEL)" syslogged

# A second notification waits for the first (keepalived does not serialise them).
cat >"$WORK/slow-ctsyncctl" <<EOF
#!/usr/bin/env bash
echo "start \$*" >>"$WORK/calls"; sleep 0.5; echo "end \$*" >>"$WORK/calls"
EOF
chmod +x "$WORK/slow-ctsyncctl"
: >"$WORK/calls"
opts=(--vips "$WORK/vips" --ctsyncctl "$WORK/slow-ctsyncctl" --garp-command "$WORK/garp"
  --lock-file "$WORK/notify.lock")
ip netns exec "$NSN" "$NOTIFY" "${opts[@]}" INSTANCE VI_1 MASTER 150 >/dev/null 2>&1 &
PIDS[slow1]=$!
sleep 0.1
ip netns exec "$NSN" "$NOTIFY" "${opts[@]}" INSTANCE VI_1 BACKUP 150 >/dev/null 2>&1 || true
wait "${PIDS[slow1]}" || true
unset "PIDS[slow1]"
check "overlapping notifications run one after the other" \
  [ "$(grep -E '^(start|end)' "$WORK/calls" | tr '\n' ' ')" = \
  "start promote end promote start demote end demote " ]

shellcheck_ok() { ! command -v shellcheck >/dev/null || shellcheck "$NOTIFY"; }
check "shellcheck is clean (when installed)" shellcheck_ok

if [ $failures -ne 0 ]; then
  fail "$failures check(s) failed"
fi
log "PASS: ctsync-notify.sh"
