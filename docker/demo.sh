#!/usr/bin/env bash
# The README's first command: a live failover of the docker compose cluster (docker/compose.yml).
#
#   docker/demo.sh [--keep] [--max-gap SECONDS] [--out DIR] [--deadline SECONDS] [--skip-not-root]
#
# On a fresh Debian 12 machine, as root: installs Debian's Docker engine, docker-compose and
# debootstrap when missing, starts the engine when it is not running, makes the Debian base
# images when no registry has them (docker/base-image.sh), builds the ctsync image and brings up
# client, fw1, fw2 and server. Then:
#   1. keepalived makes fw1 master: it holds the virtual addresses, ctsyncd there is active;
#   2. the client runs a TCP echo stream (256 B every 2 ms, every byte checked) and a UDP echo
#      flow (every 10 ms) to the server through fw1, which masquerades them to a random port;
#   3. fw2's ctsyncd holds both flows in its replica;
#   4. `docker kill` fw1: keepalived on fw2 takes over, its notify script writes the replica into
#      fw2's kernel (ctsyncctl promote) and raises the addresses;
#   5. the stream and the UDP flow carry on through fw2 with the same NAT address and port and no
#      reset (fw2 drops mid-stream segments it has no conntrack entry for, and would have picked
#      another random port); new connections work;
#   6. fw1 starts again as a rebooted node, resyncs from fw2 and takes the addresses back
#      (keepalived preemption, after preempt_delay); the stream still carries on;
#   7. the server's and client's reports are checked: no byte lost, duplicated or reordered, no
#      reset, one NAT source for each flow, each stall below --max-gap (default 3 s).
# Every step is printed with its time. The cluster is taken down at the end (--keep leaves it
# running), and so is a Docker engine this script started. --out keeps the logs and reports in
# DIR; after --deadline seconds (default 1800) the script gives up and tears down.
# --skip-not-root: exit 77 (skipped, for ctest) instead of 1 when not run as root.
# Exit 0 when the flows survived both moves, 1 on any failure (the nodes' logs are printed), 2
# for a usage error.
set -euo pipefail
DOCKER_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../tests/system/lib.sh
. "$DOCKER_DIR/../tests/system/lib.sh"

KEEP=0
MAX_GAP=3.0
OUT=""
DEADLINE=1800
NOT_ROOT_STATUS=1
usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  [ -z "${1:-}" ] || echo "demo: $1" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case $1 in
    --keep) KEEP=1; shift ;;
    --max-gap | --out | --deadline)
      [ $# -ge 2 ] || usage "$1 needs a value"
      case $1 in
        --max-gap) MAX_GAP=$2 ;;
        --out) OUT=$2 ;;
        --deadline) DEADLINE=$2 ;;
      esac
      shift 2
      ;;
    --skip-not-root) NOT_ROOT_STATUS=$SKIP; shift ;;
    *) usage "unknown argument $1" ;;
  esac
done
[[ $MAX_GAP =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage "--max-gap wants seconds, got '$MAX_GAP'"
[[ $DEADLINE =~ ^[0-9]+$ ]] && [ "$DEADLINE" -ge 60 ] ||
  usage "--deadline wants whole seconds (at least 60), got '$DEADLINE'"

PROJECT=ctsync-demo
IMAGE=ctsync-demo:latest
CLIENT=10.89.1.10
SERVER=10.89.2.10
IN_VIP=10.89.1.254
OUT_VIP=10.89.2.254
STREAM_PY=/usr/local/lib/ctsync/stream.py
TCP_PORT=5001
UDP_PORT=5003
step() { echo; log "== $*"; }

# ---- prerequisites ---------------------------------------------------------------------------

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (it installs packages and runs the Docker engine): sudo $0" >&2
  exit "$NOT_ROOT_STATUS"
fi
# Installs only what is missing (an engine from Docker's own packages is kept as it is).
if command -v apt-get >/dev/null; then
  "$REPO_DIR/tests/install-deps.sh" docker ||
    fail "could not install the Docker engine, docker-compose, debootstrap or python3 with" \
      "apt-get: check that 'apt-get update' works on this machine, then run $0 again"
fi
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=$(command -v docker) ||
  fail "no docker command: install Docker Engine (Debian: apt-get install docker.io), then run $0 again"
COMPOSE=$(command -v docker-compose) ||
  fail "no docker-compose: install it (Debian: apt-get install docker-compose), then run $0 again"
export DOCKER
[ -x "$PY" ] || fail "no $PY: apt-get install python3"
[ -e /proc/sys/net/netfilter/nf_conntrack_tcp_loose ] || modprobe nf_conntrack 2>/dev/null ||
  [ -e /proc/sys/net/netfilter/nf_conntrack_tcp_loose ] ||
  fail "this kernel has no connection tracking (nf_conntrack): load it with 'modprobe nf_conntrack'"

WORK=${OUT:-$(mktemp -d /tmp/ctsync-demo.XXXXXX)}
mkdir -p "$WORK"
ENGINE_PID=""        # a dockerd this script started
ENGINE_UNIT=0        # 1: this script ran systemctl start docker
UP=0
WATCHDOG_PID=""
CHILD_PID=""         # the long step running now (see bounded)

# Runs a long step (build, debootstrap, compose) as a child and waits for it: unlike a
# foreground command, `wait` returns at once when the deadline's SIGTERM arrives, and teardown
# stops the child.
bounded() {  # SECONDS CMD...
  local rc=0
  timeout "$@" &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return $rc
}
dc() { "$COMPOSE" -p "$PROJECT" -f "$DOCKER_DIR/compose.yml" "$@"; }
dx() { "$DOCKER" exec "$PROJECT-$1" "${@:2}"; }  # NODE CMD...

# On failure: what each node holds, for the reader to see where the flow stopped.
diagnose() {
  local n
  for n in fw1 fw2; do
    echo "----- docker logs $PROJECT-$n (last 60 lines)"
    timeout 20 "$DOCKER" logs --tail 60 "$PROJECT-$n" 2>&1
  done
  for n in fw1 fw2; do
    timeout 10 "$DOCKER" exec "$PROJECT-$n" true 2>/dev/null ||
      { echo "----- $n: not running"; continue; }
    echo "----- $n: addresses, conntrack entries of the demo's flows, ctsyncd status"
    timeout 10 "$DOCKER" exec "$PROJECT-$n" sh -c "ip -br -4 addr; conntrack -L 2>/dev/null |
      grep -E 'dport=($TCP_PORT|$UDP_PORT) '; ctsyncctl status" 2>&1
  done
  echo "----- client: neighbours, traffic status"
  timeout 10 "$DOCKER" exec "$PROJECT-client" sh -c 'ip neigh; cat /tmp/client.status' 2>&1
  echo
}

teardown() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  # The deadline may strike inside a step whose output goes to a log file: speak to the
  # terminal again.
  exec 1>&3 2>&4
  [ -n "$WATCHDOG_PID" ] && kill "$WATCHDOG_PID" 2>/dev/null
  if [ -n "$CHILD_PID" ]; then
    kill -TERM "$CHILD_PID" 2>/dev/null
    wait "$CHILD_PID" 2>/dev/null
  fi
  if [ $rc -ne 0 ] && [ $FAIL_REPORTED -eq 0 ]; then
    if [ $rc -eq 143 ] || [ $rc -eq 130 ]; then
      echo "FAIL: interrupted (signal; the deadline is $DEADLINE s)"
    else
      echo "FAIL: unexpected error${LAST_ERR:+ at $LAST_ERR}"
    fi
  fi
  if [ $rc -ne 0 ] && [ $UP -eq 1 ]; then
    diagnose
  fi
  if [ $UP -eq 1 ] && [ $KEEP -eq 0 ]; then
    step "teardown: docker-compose down"
    timeout 120 "$COMPOSE" -p "$PROJECT" -f "$DOCKER_DIR/compose.yml" down -v --timeout 15 \
      >"$WORK/down.log" 2>&1 || cat "$WORK/down.log"
  elif [ $UP -eq 1 ]; then
    echo "the cluster keeps running (--keep): $COMPOSE -p $PROJECT -f $DOCKER_DIR/compose.yml down -v"
  fi
  if [ -n "$ENGINE_PID" ] && [ $KEEP -eq 0 ]; then
    log "stopping the Docker engine this script started (pid $ENGINE_PID)"
    kill -TERM "$ENGINE_PID" 2>/dev/null
    for ((i = 0; i < 300; i++)); do kill -0 "$ENGINE_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$ENGINE_PID" 2>/dev/null; then
      echo "dockerd (pid $ENGINE_PID) did not stop within 30 s of SIGTERM: killing it"
      kill -KILL "$ENGINE_PID" 2>/dev/null
    fi
  elif [ -n "$ENGINE_PID" ]; then
    echo "the Docker engine this script started keeps running (--keep): kill $ENGINE_PID"
  fi
  if [ $ENGINE_UNIT -eq 1 ] && [ $KEEP -eq 0 ]; then
    log "stopping the Docker engine this script started: systemctl stop docker.service docker.socket"
    timeout 60 systemctl stop docker.service docker.socket
  fi
  if [ $rc -eq 0 ] && [ -z "$OUT" ]; then
    rm -rf "$WORK"
  else
    echo "logs and reports: $WORK"
  fi
  exit $rc
}
exec 3>&1 4>&2
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set -E
trap 'LAST_ERR="line $LINENO: \"$BASH_COMMAND\" exited with status $?"' ERR
# Bounded: SIGTERM to this script after DEADLINE seconds ends it through teardown.
start_deadline "$DEADLINE"
WATCHDOG_PID=$DEADLINE_PID

# ---- the engine, the images, the cluster ------------------------------------------------------

step "Docker engine"
if "$DOCKER" info >/dev/null 2>&1; then
  log "running: $("$DOCKER" version -f 'server {{.Server.Version}}' 2>/dev/null)"
else
  if [ -d /run/systemd/system ] && timeout 90 systemctl start docker >/dev/null 2>&1; then
    ENGINE_UNIT=1
    log "started with systemctl start docker"
  else
    command -v dockerd >/dev/null ||
      fail "the Docker engine is not running and there is no dockerd to start: apt-get install docker.io"
    # No systemd here (a container or CI sandbox): run the engine for the length of the demo,
    # in a session of its own (a Ctrl-C here must not stop it before the teardown). It neither
    # changes this host's firewall rules nor turns on forwarding: the image is built with the
    # host's network and nothing in the cluster routes through the host.
    setsid dockerd --iptables=false --ip-forward=false >>"$WORK/dockerd.log" 2>&1 </dev/null &
    ENGINE_PID=$!
    log "started dockerd (pid $ENGINE_PID, log $WORK/dockerd.log)"
  fi
  wait_for 60 "$DOCKER" info ||
    { tail -n 20 "$WORK/dockerd.log" 2>/dev/null; fail "the Docker engine did not come up within 60 s (its log is above)"; }
  log "engine up: $("$DOCKER" version -f 'server {{.Server.Version}}' 2>/dev/null)"
fi

step "base images"
bounded 1200 "$DOCKER_DIR/base-image.sh" --docker "$DOCKER" ||
  fail "no Debian base image: see above (a registry or debootstrap with Debian's mirror is needed)"

step "building the image $IMAGE (multi-stage: build ctsyncd, then a slim runtime; several minutes the first time)"
t0=$(now)
if ! bounded 1500 "$DOCKER" build --network host -f "$DOCKER_DIR/Dockerfile" -t "$IMAGE" \
  "$REPO_DIR" >"$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log"
  fail "docker build failed (the end of its log is above; all of it in $WORK/build.log)"
fi
log "built in $(elapsed "$t0") s: $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"

step "bringing up client, fw1, fw2, server"
# Whatever an earlier, interrupted run left of this project goes first.
bounded 120 "$COMPOSE" -p "$PROJECT" -f "$DOCKER_DIR/compose.yml" down -v --timeout 5 \
  >/dev/null 2>&1 || true
UP=1
if ! bounded 300 "$COMPOSE" -p "$PROJECT" -f "$DOCKER_DIR/compose.yml" up -d --no-build \
  >"$WORK/up.log" 2>&1; then
  cat "$WORK/up.log"
  if grep -q "overlap" "$WORK/up.log"; then
    fail "a docker network already uses 10.89.1-3.0/24: remove it ('docker network ls'," \
      "'docker network rm NAME'); the subnets are also in docker/*.toml, keepalived.conf, vips" \
      "and this script"
  fi
  fail "docker-compose up failed (its output is above)"
fi
dc ps

has_vips() {  # NODE
  dx "$1" ip -o -4 addr show 2>/dev/null | grep -q "inet $IN_VIP/" &&
    dx "$1" ip -o -4 addr show 2>/dev/null | grep -q "inet $OUT_VIP/"
}
no_vips() { ! dx "$1" ip -o -4 addr show 2>/dev/null | grep -qE "inet ($IN_VIP|$OUT_VIP)/"; }
role_is() { dx "$1" ctsyncctl status 2>/dev/null | grep -q "^role: $2"; }
fw1_elected() { has_vips fw1 && role_is fw1 active && role_is fw2 backup && no_vips fw2; }
status() {  # NODE
  log "$1: ctsyncctl status"
  dx "$1" ctsyncctl status 2>&1 | grep -E '^(role|peers?|replica flows|local flows|kernel)' |
    sed 's/^/    /' || true
}

t0=$(now)
wait_for 60 fw1_elected ||
  fail "fw1 did not become the active node with the virtual addresses within 60 s"
log "keepalived made fw1 master after $(elapsed "$t0") s: it holds $IN_VIP and $OUT_VIP, ctsyncd there is active, fw2 is backup"

# ---- traffic ----------------------------------------------------------------------------------

step "traffic: a TCP echo stream and a UDP echo flow from the client ($CLIENT) to the server ($SERVER)"
"$DOCKER" exec -d "$PROJECT-server" sh -c "echo \$\$ >/tmp/server.pid; exec python3 $STREAM_PY \
  server --sniff eth0 --report /tmp/server.json --ready /tmp/server.ready --max-seconds 600 \
  2>/tmp/server.log"
wait_for 10 dx server test -s /tmp/server.ready || fail "the stream server did not start"
"$DOCKER" exec -d "$PROJECT-client" sh -c "echo \$\$ >/tmp/client.pid; exec python3 $STREAM_PY \
  client --server $SERVER --status /tmp/client.status --report /tmp/client.json \
  --max-seconds 580 2>/tmp/client.log"
progress() {  # tcp|udp AMOUNT TIMEOUT: AMOUNT more bytes / datagrams echoed within TIMEOUT
  dx client python3 "$STREAM_PY" wait --status /tmp/client.status --what "$1" --amount "$2" \
    --timeout "$3"
}
probe() { dx client python3 "$STREAM_PY" probe --server "$SERVER" >/dev/null; }
progress tcp 16384 10 || fail "the TCP stream does not start through fw1"
progress udp 10 10 || fail "the UDP flow does not start through fw1"
log "both flow through fw1"

# The NAT mapping of the stream: "tcp ... src=CLIENT dst=SERVER sport=C dport=5001 ... src=SERVER
# dst=VIP sport=5001 dport=N": the reply tuple's dport N is the masqueraded source port.
nat_of() {  # NODE PROTO PORT: prints "VIP:N" of the flow in NODE's kernel table, if any
  dx "$1" conntrack -L -p "$2" --orig-dst "$SERVER" --dport "$3" 2>/dev/null |
    awk -v s="$SERVER" '!found { for (i = 1; i <= NF; i++) if ($i == "src=" s) {
      split($(i + 1), d, "="); split($(i + 3), p, "="); print d[2] ":" p[2]; found = 1; break } }'
}
show_flows() {  # NODE
  dx "$1" conntrack -L -o extended 2>/dev/null | grep -E "dport=($TCP_PORT|$UDP_PORT) " |
    sed 's/^/    /' || true
}
TCP_NAT=$(nat_of fw1 tcp $TCP_PORT)
UDP_NAT=$(nat_of fw1 udp $UDP_PORT)
[ -n "$TCP_NAT" ] && [ -n "$UDP_NAT" ] || fail "fw1's conntrack table lacks the stream's flows"
log "fw1 masquerades the TCP stream as $TCP_NAT and the UDP flow as $UDP_NAT:"
show_flows fw1

replica_has_stream() {
  local list
  list=$(dx fw2 ctsyncctl list --replica 2>/dev/null) || return 1
  grep -q "dport=$TCP_PORT " <<<"$list" && grep -q "dport=$UDP_PORT " <<<"$list"
}
t0=$(now)
wait_for 10 replica_has_stream || fail "fw2's ctsyncd replica lacks the flows after 10 s"
log "fw2's ctsyncd holds both flows in its replica ($(elapsed "$t0") s); its kernel holds" \
  "$(dx fw2 conntrack -L -p tcp --dport $TCP_PORT 2>/dev/null | grep -c . || true) of them (commit = on-promote)"
status fw1
status fw2
sleep 2

# ---- failover ---------------------------------------------------------------------------------

step "failover: docker kill $PROJECT-fw1"
t_fail=$(now)
"$DOCKER" kill "$PROJECT-fw1" >/dev/null
log "fw1 is gone"
wait_for 15 has_vips fw2 || fail "fw2 did not take the virtual addresses within 15 s"
log "fw2 holds the virtual addresses $(elapsed "$t_fail") s after the kill"
progress tcp 16384 10 || fail "the TCP stream does not flow through fw2 (10 s after the failover)"
progress udp 10 10 || fail "the UDP flow does not get through fw2 (10 s after the failover)"
probe || fail "a new connection through fw2 failed"
log "the stream and the UDP flow carry on through fw2; a new connection works"
tcp_nat=$(nat_of fw2 tcp $TCP_PORT)
udp_nat=$(nat_of fw2 udp $UDP_PORT)
log "fw2 masquerades the TCP stream as ${tcp_nat:-?} and the UDP flow as ${udp_nat:-?}:"
show_flows fw2
[ "$tcp_nat" = "$TCP_NAT" ] || fail "fw2 uses ${tcp_nat:-no mapping} for the stream, fw1 used $TCP_NAT"
[ "$udp_nat" = "$UDP_NAT" ] || fail "fw2 uses ${udp_nat:-no mapping} for the UDP flow, fw1 used $UDP_NAT"
log "same NAT mappings as on fw1"
status fw2
sleep 2

# ---- failback ---------------------------------------------------------------------------------

step "failback: docker start $PROJECT-fw1 (a rebooted node: empty conntrack table, empty /run)"
t0=$(now)
"$DOCKER" start "$PROJECT-fw1" >/dev/null
fw1_resynced() { role_is fw1 backup && dx fw1 ctsyncctl list --replica 2>/dev/null | grep -q "dport=$TCP_PORT "; }
wait_for 30 fw1_resynced || fail "fw1's ctsyncd did not resync the stream's flow within 30 s"
log "fw1's ctsyncd is back as backup and holds the flows again ($(elapsed "$t0") s)"
wait_for 40 has_vips fw1 || fail "fw1 did not take the virtual addresses back within 40 s"
t_back=$(now)
log "fw1 took the virtual addresses back $(elapsed "$t0") s after its start (keepalived preempt_delay 5 s)"
wait_for 10 no_vips fw2 || fail "fw2 still holds the virtual addresses 10 s after fw1 took them"
progress tcp 16384 10 || fail "the TCP stream does not flow through fw1 after the failback"
progress udp 10 10 || fail "the UDP flow does not get through fw1 after the failback"
probe || fail "a new connection through fw1 failed after the failback"
tcp_nat=$(nat_of fw1 tcp $TCP_PORT)
udp_nat=$(nat_of fw1 udp $UDP_PORT)
log "the stream and the UDP flow carry on through fw1, masqueraded as ${tcp_nat:-?} and" \
  "${udp_nat:-?}; a new connection works"
[ "$tcp_nat" = "$TCP_NAT" ] || fail "fw1 uses ${tcp_nat:-no mapping} for the stream after the failback, first $TCP_NAT"
[ "$udp_nat" = "$UDP_NAT" ] || fail "fw1 uses ${udp_nat:-no mapping} for the UDP flow after the failback, first $UDP_NAT"
status fw1
sleep 1

# ---- verdict ----------------------------------------------------------------------------------

step "stopping the traffic and checking every byte"
dx client sh -c 'kill -TERM "$(cat /tmp/client.pid)"'
client_done() { dx client python3 -c 'import json,sys; sys.exit(0 if json.load(open("/tmp/client.json")).get("done") else 1)'; }
wait_for 15 client_done || fail "the stream client wrote no final report"
dx server sh -c 'kill -TERM "$(cat /tmp/server.pid)"'
wait_for 10 dx server sh -c '! kill -0 "$(cat /tmp/server.pid)" 2>/dev/null' ||
  fail "the stream server did not stop"
"$DOCKER" cp "$PROJECT-client:/tmp/client.json" "$WORK/client.json"
"$DOCKER" cp "$PROJECT-server:/tmp/server.json" "$WORK/server.json"
"$PY" "$REPO_DIR/tests/system/stream.py" check --client-report "$WORK/client.json" \
  --server-report "$WORK/server.json" --vip "$OUT_VIP" --event "failover=$t_fail" \
  --event "failback=$t_back" --max-gap "$MAX_GAP" || fail "the flows did not survive"
echo
log "PASS: the TCP stream and the UDP flow survived fw1's death and its return, with the same NAT" \
  "mapping ($TCP_NAT) and no reset"
