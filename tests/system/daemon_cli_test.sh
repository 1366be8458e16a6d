#!/usr/bin/env bash
# ctsyncd and ctsyncctl as operators and scripts see them: config errors, exit statuses, every
# control command against a daemon on a real kernel table (one node, its own namespace).
#
#   daemon_cli_test.sh --ctsyncd PATH --ctsyncctl PATH [--out DIR]
#
# The contract checked: a bad config exits non-zero naming FILE:LINE:COLUMN; ctsyncctl exits
# 0 ok, 1 command failed, 2 usage, 3 daemon not reachable; SIGTERM stops the daemon with exit 0.
# Exit: 0 pass, 1 fail, 77 skipped (not root, no namespaces).
# shellcheck disable=SC2016  # eval '...' conditions expand when checked, not before
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

CTSYNCD=${CTSYNCD:-}
CTSYNCCTL=${CTSYNCCTL:-}
OUT=""
while [ $# -gt 0 ]; do
  case $1 in
    --ctsyncd) CTSYNCD=$2; shift 2 ;;
    --ctsyncctl) CTSYNCCTL=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 --ctsyncd PATH --ctsyncctl PATH [--out DIR]" >&2; exit 2 ;;
  esac
done
# shellcheck disable=SC2119  # no extra tools needed
require_env
[ -x "$CTSYNCD" ] || fail "ctsyncd not found: give --ctsyncd PATH (or CTSYNCD)"
[ -x "$CTSYNCCTL" ] || fail "ctsyncctl not found: give --ctsyncctl PATH (or CTSYNCCTL)"
remove_stale_namespaces
make_work "$OUT"

run() {  # CMD...: sets RC, OUT_TEXT (stdout), ERR_TEXT (stderr)
  RC=0
  OUT_TEXT=$("$@" 2>"$WORK/stderr") || RC=$?
  ERR_TEXT=$(cat "$WORK/stderr")
}
rc_is() { [ "$RC" -eq "$1" ]; }
err_has() { grep -Eq -- "$1" <<<"$ERR_TEXT"; }
out_has() { grep -Eq -- "$1" <<<"$OUT_TEXT"; }

# ---- configuration errors (no daemon runs) ---------------------------------------------------

printf '%s\n' '[node]' 'id = 1' 'colour = "blue"' >"$WORK/bad.toml"
run timeout 10 "$CTSYNCD" --config "$WORK/bad.toml"
check "unknown key: ctsyncd exits non-zero" [ "$RC" -ne 0 ]
check "... naming FILE:LINE:COLUMN of the key" err_has "bad\.toml:3:1"
printf '%s\n' '[node]' 'id = "one"' >"$WORK/bad-type.toml"
run timeout 10 "$CTSYNCD" --config "$WORK/bad-type.toml"
check "wrong type: non-zero exit naming FILE:LINE:COLUMN" \
  eval '[ "$RC" -ne 0 ] && err_has "bad-type\.toml:2:[0-9]+"'
run timeout 10 "$CTSYNCD" --config "$WORK/missing.toml"
check "missing config file: non-zero exit naming it" \
  eval '[ "$RC" -ne 0 ] && err_has "missing\.toml"'

# ---- ctsyncctl without a daemon --------------------------------------------------------------

run timeout 10 "$CTSYNCCTL" --socket "$WORK/nobody.sock" status
check "no daemon at the socket: exit 3" rc_is 3
check "... saying so" err_has "nobody\.sock"
run timeout 10 "$CTSYNCCTL"
check "no command: exit 2 (usage)" rc_is 2
# A daemon that dies in the middle of an answer: announced 100 bytes, sent 4.
"$PY" - "$WORK/cut.sock" <<'PYEOF' &
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(1)
s.settimeout(10)
c, _ = s.accept()
c.recv(4096)
c.sendall(b"ok 100\nabc\n")
c.close()
PYEOF
cut_pid=$!
wait_for 5 test -S "$WORK/cut.sock"
run timeout 10 "$CTSYNCCTL" --socket "$WORK/cut.sock" list
wait "$cut_pid" 2>/dev/null
check "an answer cut short: exit 3" rc_is 3
check "... saying so" err_has "cut short \(4 of 100 bytes\)"

# ---- one daemon on a real kernel table -------------------------------------------------------

add_ns node
NSN=$TAG-node
SOCK=/run/$TAG-node.sock
EXTRA_CLEANUP+=("$SOCK" "/run/$TAG-node.role")
ip -n "$NSN" link add sync0 type veth peer name peer0
ip -n "$NSN" addr add 10.9.9.1/24 dev sync0
ip -n "$NSN" link set sync0 up
ip -n "$NSN" link set peer0 up
# conntrack in the namespace (an nft rule that uses it loads and enables it).
ip netns exec "$NSN" nft -f - <<'EOF'
table ip ctsys {
  chain forward {
    type filter hook forward priority filter;
    ct state invalid drop
  }
}
EOF
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/sync.key"
chmod 600 "$WORK/sync.key"
cat >"$WORK/node.toml" <<EOF
[node]
id = 1
cluster_id = 7
role = "active"
[sync]
key_file = "$WORK/sync.key"
[[sync.link]]
kind = "unicast"
interface = "sync0"
local_address = "10.9.9.1"
peers = ["10.9.9.2"]
[kernel]
ignore_addresses = ["10.9.9.0/24"]
[control]
socket = "$SOCK"
EOF
ctl() { ip netns exec "$NSN" timeout 10 "$CTSYNCCTL" --socket "$SOCK" "$@"; }
insert_flow() {  # SPORT: an established TCP flow 10.3.0.1:SPORT -> 10.3.0.2:2000
  ip netns exec "$NSN" conntrack -I -p tcp -s 10.3.0.1 -d 10.3.0.2 --sport "$1" --dport 2000 \
    --state ESTABLISHED -u SEEN_REPLY,ASSURED -t 300 >/dev/null 2>&1
}

start_bg ctsyncd "$NSN" "$CTSYNCD" --config "$WORK/node.toml"
wait_for 10 ctl status || fail "ctsyncd does not answer within 10 s (see ctsyncd.log)"

run ctl status
check "status: exit 0" rc_is 0
check "status: 'role: active'" out_has "^role: active$"
check "status: 'local flows: N'" out_has "^local flows: [0-9]+"
check "status: 'replica flows: N'" out_has "^replica flows: [0-9]+"
run ctl status --json
check "status --json: one JSON object" eval '[ "$RC" -eq 0 ] && "$PY" -c "import json,sys; json.loads(sys.stdin.read())" <<<"$OUT_TEXT"'

start_bg events "$NSN" timeout 5 "$CTSYNCCTL" --socket "$SOCK" events
sleep 0.3
insert_flow 1001 || fail "conntrack -I failed in the test namespace"
has_flow() { ctl list | grep -q "sport=$1 dport=2000"; }
check "a kernel flow appears in list (conntrack -L format)" wait_for 3 has_flow 1001
run ctl list --json
json_lines() {
  "$PY" -c '
import json, sys
lines = [l for l in sys.stdin.read().splitlines() if l.strip()]
objs = [json.loads(l) for l in lines]
sys.exit(0 if objs and any("1001" in l for l in lines) else 1)' <<<"$OUT_TEXT"
}
check "list --json: one JSON object per line, the flow among them" json_lines
check "list --replica holds the node's own flow" eval 'ctl list --replica | grep -q "sport=1001 dport=2000"'
events_seen() { grep -q "NEW.*sport=1001" "$WORK/events.log"; }
check "events: the new flow, conntrack -E style" wait_for 3 events_seen
stop_pid events 1

run ctl stats
check "stats: exit 0, counters" eval '[ "$RC" -eq 0 ] && [ -n "$OUT_TEXT" ]'
run ctl resync
check "resync: exit 0" rc_is 0
run ctl flush
check "flush on the active node: refused (exit 1)" rc_is 1

# A request over the 4 KiB limit (no newline in it) gets an error line, not a silent close.
long_request() {
  "$PY" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"status " + b"x" * 6000 + b"\n")
answer = b""
while True:
    try:
        data = s.recv(4096)
    except ConnectionResetError:  # closed with our unread bytes in its buffer
        break
    if not data:
        break
    answer += data
print(answer.decode(errors="replace").strip())
sys.exit(0 if answer.startswith(b"error request too long") else 1)' "$SOCK"
}
check "a request over 4 KiB: an error line" long_request
run ctl status
check "... and the daemon still answers" rc_is 0

run ctl bogus
check "unknown command: exit 2 (usage)" rc_is 2
run ctl status --bogus
check "unknown option: exit 2 (usage)" rc_is 2

run ctl demote --fault
check "demote --fault: exit 0" rc_is 0
check "... status says fault" eval 'ctl status | grep -q "^role: fault$"'
# conntrackd -t: a demoted node's mirrored entries get a short timeout (on-promote mode).
flow_timeout() {
  ip netns exec "$NSN" conntrack -L -p tcp --sport 1001 2>/dev/null |
    awk '/dport=2000/ { print $3; exit }'
}
short_timeout() { t=$(flow_timeout); [ -n "$t" ] && [ "$t" -le 30 ]; }
check "demote: the mirrored flow's kernel timeout drops to 30 s or less" wait_for 5 short_timeout
run ctl demote
check "demote: exit 0, role backup" eval '[ "$RC" -eq 0 ] && ctl status | grep -q "^role: backup$"'
run ctl commit
check "commit on the backup: exit 0" rc_is 0
run ctl promote
check "promote: exit 0" rc_is 0
check "promote: 'promoted: N flows in S s (created C, updated U, failed F...'" \
  out_has '^promoted: [0-9]+ flows in [0-9.]+ s \(created [0-9]+, updated [0-9]+, failed [0-9]+'
check "... status says active" eval 'ctl status | grep -q "^role: active$"'
check "the flow is still in the kernel" \
  eval 'ip netns exec "$NSN" conntrack -L -p tcp --sport 1001 2>/dev/null | grep -q dport=2000'

stop_pid ctsyncd 5
check "SIGTERM: exit 0 within 5 s" [ "$STOP_RC" -eq 0 ]
run timeout 10 "$CTSYNCCTL" --socket "$SOCK" status
check "after the stop: ctsyncctl exits 3" rc_is 3

# A daemon restarted during the same boot resumes the role ctsyncctl gave it, whatever the
# config says: here it was demoted to backup and the config says active.
ctl_demote_then_restart() {
  start_bg ctsyncd "$NSN" "$CTSYNCD" --config "$WORK/node.toml"
  wait_for 10 ctl status || return 1
  ctl demote >/dev/null || return 1
  stop_pid ctsyncd 5
  start_bg ctsyncd "$NSN" "$CTSYNCD" --config "$WORK/node.toml"
  wait_for 10 ctl status
}
check "restart: the daemon answers again" ctl_demote_then_restart
check "restart: it resumed role backup (config: active)" eval 'ctl status | grep -q "^role: backup$"'
check "... from the role file beside the socket" eval 'grep -qx backup "/run/$TAG-node.role"'
rm -f "/run/$TAG-node.role"
stop_pid ctsyncd 5
start_bg ctsyncd "$NSN" "$CTSYNCD" --config "$WORK/node.toml"
check "without the role file (a reboot) the configured role applies" \
  eval 'wait_for 10 ctl status && ctl status | grep -q "^role: active$"'
stop_pid ctsyncd 5

if [ $failures -ne 0 ]; then
  fail "$failures check(s) failed"
fi
log "PASS: ctsyncd / ctsyncctl command line"
