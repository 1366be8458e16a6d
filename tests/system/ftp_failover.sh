#!/usr/bin/env bash
# Failover of a firewall pair with FTP and TFTP sessions whose helper state matters, in network
# namespaces.
#
#   ftp_failover.sh --ctsyncd PATH --ctsyncctl PATH [--out DIR] [options]
#
#   --commit on-promote|continuous   [kernel] commit of both daemons (default on-promote)
#   --link unicast|multicast         the sync link's kind (default unicast)
#   --control                        the same with [kernel] expectations = false: the scenario
#                                    must FAIL (exit 0 when it broke as expected, 1 when it
#                                    worked, 77 while ctsyncd refuses the key)
#   --no-failover                    the test's own check: the same sessions and checks with fw1
#                                    left in place (the hold lifted all the same): must pass
#
# Topology as failover.sh (lib.sh's pair), with the client at 10.1.0.100: its PORT argument
# "10,1,0,100,p1,p2" is one byte longer than the VIP's "192,0,2,1,p1,p2", so the kernel's FTP
# NAT helper, rewriting it for masquerade, records a sequence adjustment on the control flow.
# The firewalls load docker/nftables.conf, then ftp_helpers.nft (ct helper objects for FTP on
# tcp/21 and TFTP on udp/69, counters of RELATED flows). The server runs vsftpd (anonymous,
# transfers rate-limited so that one runs across the failover) and tftpd-hpa's in.tftpd; the
# client is ftp_traffic.py (ftplib and a TFTP client, standard library).
#
# The run:
#   1. sanity through fw1, no failover: active and passive RETR, active LIST, a TFTP read; fw1
#      forwarded them as RELATED (counters), the server got "PORT 192,0,2,1,..." (vsftpd's
#      protocol log), NOOP was answered after the rewritten PORT.
#   2. ftp_traffic.py failover arms its sessions (see there): s1 control connection after a
#      rewritten PORT, s2a PORT answered, s2b PASV answered, s3a/s3b big transfers running, s4
#      a TFTP RRQ whose DATA the server side holds back (bridge output drop on srv); fw1 holds
#      their expectations (conntrack -L expect), fw2's replica their flows.
#   3. fw1 dies as in failover.sh (ctsyncd SIGKILLed, links down), `ctsyncctl promote` on fw2,
#      VIPs + gratuitous ARP; the hold is lifted.
#   4. Checks: s1 answers NOOP/PWD and a passive and an active LIST; s2a's data connection (from
#      the server) and s2b's (from the client) open through fw2 as RELATED and transfer; s3a and
#      s3b complete byte for byte with their 226; s4's DATA come in through fw2 as RELATED and
#      the file is complete.
# --control passes when the checks that need a replicated expectation (s2a, s2b as RELATED, s4)
# all failed.
#
# Exit: 0 pass, 1 fail, 77 skipped (not root, no namespaces, control without the key). Logs,
# configs and reports stay in --out (default: a temporary directory, removed on success).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

CTSYNCD=${CTSYNCD:-}
CTSYNCCTL=${CTSYNCCTL:-}
OUT=""
COMMIT=on-promote
LINK=unicast
CONTROL=0
FAILOVER=1

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case $1 in
    --ctsyncd) CTSYNCD=$2; shift 2 ;;
    --ctsyncctl) CTSYNCCTL=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --commit) COMMIT=$2; shift 2 ;;
    --link) LINK=$2; shift 2 ;;
    --control) CONTROL=1; shift ;;
    --no-failover) FAILOVER=0; shift ;;
    *) usage ;;
  esac
done
case $COMMIT in on-promote | continuous) ;; *) usage ;; esac
case $LINK in unicast | multicast) ;; *) usage ;; esac
[ $CONTROL -eq 0 ] || [ $FAILOVER -eq 1 ] || usage

require_env vsftpd=vsftpd in.tftpd=tftpd-hpa
[ -x "$CTSYNCD" ] || fail "ctsyncd not found: give --ctsyncd PATH (or CTSYNCD)"
[ -x "$CTSYNCCTL" ] || fail "ctsyncctl not found: give --ctsyncctl PATH (or CTSYNCCTL)"
getent passwd ftp >/dev/null || fail "no user 'ftp' (Debian's vsftpd package creates it)"
TRAFFIC="$SYSTEM_DIR/ftp_traffic.py"

# ctsyncd's keys for expectations, in [kernel]. The control run writes `expectations = false`;
# the normal runs write the keys only with CTSYS_EXPECT_KEYS=1 (`expectations = true` is the
# default; expect_helpers names the helpers to replicate, empty = all), so that they run against
# a daemon that predates the keys (its parser refuses unknown keys).
if [ $CONTROL -eq 1 ]; then
  KERNEL_EXTRA="# The control: expectations are not replicated.
expectations = false"
elif [ "${CTSYS_EXPECT_KEYS:-0}" = 1 ]; then
  KERNEL_EXTRA="expectations = true
expect_helpers = [\"ftp\", \"tftp\"]"
fi
FW_NFT_EXTRA=("$SYSTEM_DIR/ftp_helpers.nft")
# The client's fixed ports for the flows announced before the failover (ftp_helpers.nft counts
# them by these numbers).
PORT_BEFORE=47001
PASV_BEFORE=47002
PORT_BEFORE_LEN=47003
TFTP_BEFORE=47004
# A second client address whose PORT argument is as long as the VIP's ("10,1,0,10" and
# "192,0,2,1"): s2a's rewritten PORT needs no sequence adjustment.
SAME_LENGTH_CLIENT=10.1.0.10
FTP_RATE=131072 # bytes/s per transfer (vsftpd anon_max_rate): big.bin takes ~6 s

remove_stale_namespaces
make_work "$OUT"
pair_init 10.1.0.100
for v in PORT_BEFORE PORT_BEFORE_LEN PASV_BEFORE TFTP_BEFORE; do
  grep -Eq "^define $v = ${!v}\b" "${FW_NFT_EXTRA[0]}" ||
    fail "ftp_helpers.nft does not define $v = ${!v}"
done

mode="commit=$COMMIT link=$LINK"
[ $CONTROL -eq 0 ] || mode+=" expectations=false (control)"
[ $FAILOVER -eq 1 ] || mode+=" no failover"
# The firewall the sessions go through after the failover.
AFTER=fw2
[ $FAILOVER -eq 1 ] || AFTER=fw1

# ---- configs before anything runs -----------------------------------------------------------

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/sync.key"
chmod 600 "$WORK/sync.key"
write_config fw1 active
if ! out=$("$CTSYNCD" --config "$WORK/fw1.toml" --check 2>&1); then
  if [ $CONTROL -eq 1 ] && grep -q expectations <<<"$out"; then
    log "ctsyncd refuses the control's config: $out"
    skip "this ctsyncd has no [kernel] expectations key yet" \
      "(it does not replicate expectations at all)"
  fi
  fail "ctsyncd refuses the generated config: $out"
fi
log "config: [kernel] $(sed -n '/^\[kernel\]/,/^\[/{/^[a-z_]* =/p}' "$WORK/fw1.toml" | tr '\n' ' ')"

# ---- servers --------------------------------------------------------------------------------

FILES=$WORK/ftp
mkdir -p "$FILES" "$WORK/vsftpd-empty"
chmod 755 "$WORK" "$FILES" "$WORK/vsftpd-empty"
head -c 65536 /dev/urandom >"$FILES/small.bin"
head -c 786432 /dev/urandom >"$FILES/big.bin"
head -c 100000 /dev/urandom >"$FILES/tftp.bin"
chmod 644 "$FILES"/*.bin

cat >"$WORK/vsftpd.conf" <<EOF
# vsftpd of $(basename "$0"), generated: anonymous read-only, active and passive mode.
listen=YES
listen_ipv6=NO
listen_address=192.0.2.10
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=NO
no_anon_password=YES
anon_root=$FILES
ftp_username=ftp
nopriv_user=ftp
secure_chroot_dir=$WORK/vsftpd-empty
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
port_enable=YES
# PORT's address must be the control connection's peer (the VIP): it is only when the
# firewall's helper rewrote it.
port_promiscuous=NO
connect_from_port_20=NO
pasv_enable=YES
pasv_min_port=40000
pasv_max_port=40999
anon_max_rate=$FTP_RATE
dirmessage_enable=NO
hide_ids=YES
syslog_enable=NO
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file=$WORK/vsftpd-protocol.log
idle_session_timeout=120
data_connection_timeout=60
EOF

setup_topology
ip -n "$CLI" addr add "$SAME_LENGTH_CLIENT/24" dev br0
start_bg vsftpd "$SRV" vsftpd "$WORK/vsftpd.conf"
# in.tftpd resends a DATA after the timeout, doubling it, and gives up when it reaches 6 times
# the first: with 2 s, DATA 1 goes out 0, 2 and 6 s after the RRQ, so the held one gets through
# the new firewall if the failover is done within 6 s.
start_bg tftpd "$SRV" in.tftpd --foreground --address "$SERVER:69" --secure --user nobody \
  --retransmit 2000000 --verbose "$FILES"
listening() { ip netns exec "$SRV" ss -Hln "$@" | grep -q .; }
wait_for 5 listening -t 'sport = :21' || fail "vsftpd does not listen on port 21"
wait_for 5 listening -u 'sport = :69' || fail "in.tftpd does not listen on port 69"

start_ctsyncd fw1 active
start_ctsyncd fw2 backup
raise_vips fw1
reap_garps

# ---- helpers of the checks ------------------------------------------------------------------

counter() {  # NS NAME: packets of ftp_helpers.nft's counter NAME
  ip netns exec "$1" nft list counter ip ctsync_helpers "$2" | awk '$1 == "packets" { print $2 }'
}
counter_positive() { [ "$(counter "$1" "$2")" -gt 0 ]; }

show_firewall() {  # FW
  local ns=${NS[$1]}
  echo "----- $1: conntrack -L"
  ip netns exec "$ns" conntrack -L 2>&1 | grep -v "^conntrack v" | sed 's/^/    /' || true
  echo "----- $1: conntrack -L expect"
  ip netns exec "$ns" conntrack -L expect 2>&1 | sed 's/^/    /' || true
  echo "----- $1: counters (ftp_helpers.nft)"
  ip netns exec "$ns" nft list counters table ip ctsync_helpers 2>&1 |
    awk '$1 == "counter" { n = $2 } $1 == "packets" { printf "    %s %s\n", n, $2 }' || true
}

diagnostics() {
  show_firewall fw1
  show_firewall fw2
  if alive ctsyncd-fw2; then
    show_status fw2
    echo "----- fw2: ctsyncctl list --replica"
    ctl fw2 list --replica 2>&1 | sed 's/^/    /' || true
  fi
  echo "----- vsftpd protocol log (last 30 lines)"
  tail -n 30 "$WORK/vsftpd-protocol.log" 2>/dev/null | sed 's/^/    /' || true
}

# ---- 1. sanity through fw1 ------------------------------------------------------------------

t_sanity=$(now)
if ! ip netns exec "$CLI" timeout 30 "$PY" "$TRAFFIC" sanity --server "$SERVER" --files "$FILES" \
  --report "$WORK/sanity.json"; then
  "$PY" "$TRAFFIC" show --report "$WORK/sanity.json" || true
  diagnostics
  fail "FTP/TFTP do not work through fw1 without a failover"
fi
"$PY" "$TRAFFIC" show --report "$WORK/sanity.json"
check "sanity: fw1 forwarded an active-mode data connection as RELATED" \
  counter_positive "${NS[fw1]}" ftp_data_in
check "sanity: fw1 forwarded a passive-mode data connection as RELATED" \
  counter_positive "${NS[fw1]}" ftp_data_out
check "sanity: fw1 forwarded the TFTP DATA as RELATED" counter_positive "${NS[fw1]}" tftp_data
client_port=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["port_address"])' \
  "$WORK/sanity.json")
server_port=$(grep -o '"PORT [0-9,]*"' "$WORK/vsftpd-protocol.log" | head -n 1 | tr -d '"')
log "sanity: the client sent PORT $client_port,p1,p2 (${#client_port} characters before the" \
  "port), the server got $server_port"
port_rewritten() {
  local addr=${server_port#PORT }
  addr=$(cut -d, -f1-4 <<<"$addr")
  [ "$addr" = "${OUT_VIP//./,}" ] && [ ${#addr} -ne ${#client_port} ]
}
check "sanity: masquerade rewrote PORT to the VIP, to another length (a sequence adjustment)" \
  port_rewritten
[ $failures -eq 0 ] || { diagnostics; fail "the sanity checks through fw1 failed"; }
log "sanity through fw1 passed in $(elapsed "$t_sanity") s"

# ---- 2. sessions armed ----------------------------------------------------------------------

# The server's TFTP DATA (from its transfer port, not 69) is dropped on its way out of srv's
# bridge until the failover is done. On the bridge's output hook, so that in.tftpd's send does
# not fail (a drop in the ip output hook would return EPERM, and in.tftpd gives up).
ip netns exec "$SRV" nft -f - <<EOF
table bridge ctsys_hold {
  counter held {}
  chain output {
    type filter hook output priority filter; policy accept;
    ether type ip ip daddr $OUT_VIP udp sport != 69 counter name held drop
  }
}
EOF
held() {
  ip netns exec "$SRV" nft list counter bridge ctsys_hold held | awk '$1 == "packets" { print $2 }'
}
# The server's TCP segments queued out of order: the client's bytes arriving shifted, as they
# do when a firewall forwards a control flow without its sequence adjustment.
ofo() {
  ip netns exec "$SRV" nstat -asz TcpExtTCPOFOQueue | awk '$1 == "TcpExtTCPOFOQueue" { print $2 }'
}

start_bg client "$CLI" "$PY" "$TRAFFIC" failover --server "$SERVER" --files "$FILES" \
  --status "$WORK/client.status" --go "$WORK/go" --report "$WORK/client.json" \
  --port-before $PORT_BEFORE --port-before-len $PORT_BEFORE_LEN --pasv-before $PASV_BEFORE \
  --tftp-before $TFTP_BEFORE --same-length-address $SAME_LENGTH_CLIENT
phase() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["phase"])' \
  "$WORK/client.status" 2>/dev/null; }
armed_or_failed() { case $(phase) in armed | failed) return 0 ;; *) ! alive client ;; esac; }
wait_for 20 armed_or_failed || true
if [ "$(phase)" != armed ]; then
  cat "$WORK/client.status" 2>/dev/null || true
  if [ -s "$WORK/client.json" ]; then "$PY" "$TRAFFIC" show --report "$WORK/client.json" || true; fi
  diagnostics
  fail "the client's sessions did not get ready through fw1"
fi
log "sessions armed: $(cat "$WORK/client.status")"

expectations_on_fw1() {
  local list
  list=$(ip netns exec "${NS[fw1]}" conntrack -L expect 2>/dev/null)
  grep -q "dport=$PORT_BEFORE .*helper=ftp" <<<"$list" &&
    grep -q "dport=$PORT_BEFORE_LEN .*helper=ftp" <<<"$list" &&
    [ "$(grep -c 'helper=ftp' <<<"$list")" -ge 3 ] && grep -q 'helper=tftp' <<<"$list"
}
wait_for 3 expectations_on_fw1 || true
echo "fw1: conntrack -L expect (s2a's and s2c's PORT, s2b's PASV, s4's RRQ):"
ip netns exec "${NS[fw1]}" conntrack -L expect 2>&1 | sed 's/^/    /'
check "before: fw1 holds the expectations of s2a, s2c (PORT), s2b (PASV) and s4 (TFTP)" \
  expectations_on_fw1
held_positive() { [ "$(held)" -gt 0 ]; }
check "before: the server's first TFTP DATA was sent and held back" wait_for 3 held_positive

replica_has_sessions() {
  local list
  list=$(ctl fw2 list --replica 2>/dev/null) || return 1
  [ "$(grep -c 'dport=21 ' <<<"$list")" -ge 6 ] && grep -q 'dport=69 ' <<<"$list"
}
t0=$(now)
check "before: fw2's replica holds the 6 control flows and the TFTP request" \
  wait_for 5 replica_has_sessions
log "fw2's replica checked after $(elapsed "$t0") s"
if [ "$COMMIT" = continuous ]; then
  kernel_has_sessions() {
    [ "$(ip netns exec "${NS[fw2]}" conntrack -L -p tcp --dport 21 2>/dev/null | grep -c .)" -ge 6 ]
  }
  check "before: commit=continuous, fw2's kernel holds the control flows" \
    wait_for 5 kernel_has_sessions
fi
echo "fw2: expectations in ctsyncd's replica and in the kernel before the failover:"
if exp=$(ctl fw2 list --expect --replica 2>&1); then
  # shellcheck disable=SC2001  # every line prefixed
  sed 's/^/    ctsyncctl: /' <<<"$exp"
else
  echo "    ctsyncctl: (this ctsyncctl has no list --expect)"
fi
echo "fw2: the control flows' sequence adjustment in ctsyncd's replica:"
ctl fw2 list --replica --json 2>/dev/null | grep '"dport":21' | grep -o '"seq_adjust_orig":{[^}]*}' |
  sed 's/^/    /' || echo "    (none)"
ip netns exec "${NS[fw2]}" conntrack -L expect 2>&1 | sed 's/^/    kernel: /'

# ---- 3. the failover ------------------------------------------------------------------------

failures_before=$failures
ofo_before=$(ofo)

t_fail=$(now)
if [ $FAILOVER -eq 1 ]; then
  kill_pid ctsyncd-fw1
  link_state fw1 down
  t0=$(now)
  if out=$(ctl fw2 promote); then
    log "fw2: $out (ctsyncctl promote took $(elapsed "$t0") s)"
  else
    log "ctsyncctl promote on fw2 failed: $out"
    failures=$((failures + 1))
  fi
  promoted_cleanly() { grep -Eq '^promoted: [0-9]+ flows in .*failed 0[;)]' <<<"$out"; }
  check "failover: fw2 promoted, every flow created (failed 0)" promoted_cleanly
  raise_vips fw2
else
  sleep 0.3  # about as long as a failover takes
fi
n_held=$(held)
ip netns exec "$SRV" nft delete table bridge ctsys_hold
touch "$WORK/go"
if [ $FAILOVER -eq 1 ]; then
  log "failover: fw1 killed, fw2 holds the VIPs after $(elapsed "$t_fail") s (TFTP hold lifted:" \
    "$n_held DATA packets were held)"
else
  log "no failover: fw1 stays; TFTP hold lifted ($n_held DATA packets were held)"
fi

# ---- 4. the checks --------------------------------------------------------------------------

client_done() { ! alive client; }
wait_for 40 client_done || true
stop_pid client 2
reap_garps
[ -s "$WORK/client.json" ] || { diagnostics; fail "the client wrote no report"; }
"$PY" "$TRAFFIC" show --report "$WORK/client.json" || true
c_ok() { "$PY" "$TRAFFIC" ok --report "$WORK/client.json" --id "$1"; }
c_ran() { grep -q "\"id\": \"$1\"" "$WORK/client.json"; }
for id in s1-noop s1-pasv-list s1-port-list s2a s2b s2c s3a s3a-noop s3b s3b-noop s4; do
  c_ok "$id" && continue
  failures=$((failures + 1))
  c_ran "$id" || echo "FAIL [$id] not run: an earlier step of its session failed"
done
check "after: $AFTER forwarded s2a's data connection (server -> client:$PORT_BEFORE) as RELATED" \
  counter_positive "${NS[$AFTER]}" port_before
what="s2c's data connection (server -> client:$PORT_BEFORE_LEN)"
check "after: $AFTER forwarded $what as RELATED" \
  counter_positive "${NS[$AFTER]}" port_before_len
check "after: $AFTER forwarded s2b's data connection (client:$PASV_BEFORE -> server) as RELATED" \
  counter_positive "${NS[$AFTER]}" pasv_before
check "after: $AFTER forwarded s4's TFTP DATA (server -> client:$TFTP_BEFORE) as RELATED" \
  counter_positive "${NS[$AFTER]}" tftp_before
# What the failures point at.
n_to_fw=$(counter "${NS[$AFTER]}" to_firewall)
n_ofo=$(($(ofo) - ofo_before))
log "evidence: $AFTER received $n_to_fw new flows from outside addressed to itself (a data" \
  "connection or TFTP DATA that no expectation matched: its stack refuses them);" \
  "the server queued $n_ofo TCP segments out of order since the failover (client bytes" \
  "arriving shifted: a control flow forwarded without its sequence adjustment)"
"$PY" - "$WORK/client.json" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
s4 = r.get("s4", {})
first = s4.get("first_data_after_go")
print(f"timings: client steps after the go {r.get('after_seconds')} s; big transfers at",
      f"{r.get('progress_at_go')} bytes at the go;",
      "TFTP DATA 1 never arrived" if first is None else
      f"TFTP DATA 1 arrived {first} s after the go")
EOF

# A passing run ends with every daemon stopping cleanly (SIGTERM, exit 0).
stop_all() {
  local fw
  for fw in fw1 fw2; do
    if alive "ctsyncd-$fw"; then
      stop_pid "ctsyncd-$fw" 5
      [ "$STOP_RC" -eq 0 ] || fail "ctsyncd on $fw: exit status $STOP_RC after SIGTERM (expected 0)"
    fi
  done
  stop_pid vsftpd 2
  stop_pid tftpd 2
}

if [ $CONTROL -eq 1 ]; then
  [ "$failures_before" -eq 0 ] || { diagnostics; fail "the set-up before the failover failed"; }
  # Each check that needs a replicated expectation must have failed.
  worked=()
  c_ok s2a && worked+=("s2a's data connection (PORT before);")
  counter_positive "${NS[fw2]}" pasv_before && worked+=("s2b's data connection as RELATED;")
  c_ok s4 && worked+=("s4's TFTP transfer;")
  if [ ${#worked[@]} -gt 0 ]; then
    diagnostics
    fail "without replicated expectations these still worked: ${worked[*]} the test cannot tell"
  fi
  stop_all
  log "PASS (control): without replicated expectations s2a, s2b (RELATED) and s4 broke ($mode)"
  exit 0
fi

if [ $failures -ne 0 ]; then
  diagnostics
  fail "$failures checks failed ($mode)"
fi
stop_all
log "PASS: $mode"
