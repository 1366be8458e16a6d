#!/usr/bin/python3
"""Traffic for the failover tests: a long-lived TCP echo stream and a UDP echo flow.

  stream.py server --report FILE --ready FILE [--sniff IFACE] [ports]
  stream.py client --server ADDR --status FILE --report FILE [ports] [--interval-ms 2]
  stream.py probe  --server ADDR [--port 5002]          # one short connection: exit 0 if echoed
  stream.py flows  --server ADDR --count N [--port 5004] # N UDP flows, one echoed datagram each
  stream.py wait   --status FILE --what tcp|udp --amount N --timeout S   # 0 once N more arrived
  stream.py check  --client-report C --server-report S --vip ADDR [--event NAME=EPOCH ...]

The TCP stream carries 8-byte big-endian word numbers (word k at byte 8k), so any loss,
duplication or reordering of bytes shows as a mismatch at a known offset. The server echoes every
byte; the client checks what comes back and times the gaps between arrivals. The UDP flow is one
numbered datagram every 10 ms, echoed by the server. The server also watches its interface with a
packet socket and records every source address:port that sends to the stream and UDP ports, so a
NAT mapping that changed mid-stream is seen even when the kernel would just reset it.

Every run is bounded (--max-seconds); SIGTERM ends client and server cleanly with a JSON report.
Times in reports are wall-clock epoch seconds, so the shell can correlate them with `date +%s.%N`.
Needs nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

TCP_PORT = 5001
PROBE_PORT = 5002
UDP_PORT = 5003
EXTRA_UDP_PORT = 5004  # short UDP flows (`flows`): echoed, not recorded
GAP_RECORD_S = 0.05  # gaps longer than this are listed in the report
UDP_SIZE = 64


def pattern(offset: int, length: int) -> bytes:
    """Bytes [offset, offset+length) of the stream: word k (8 bytes, big-endian) is k."""
    first = offset // 8
    last = (offset + length + 7) // 8
    blob = b"".join(struct.pack(">Q", k) for k in range(first, last))
    start = offset - first * 8
    return blob[start:start + length]


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


class GapMeter:
    """Largest interval between arrivals, and every interval above GAP_RECORD_S."""

    def __init__(self):
        self.last_mono: float | None = None
        self.last_wall: float | None = None
        self.max_gap = 0.0
        self.max_gap_start = 0.0
        self.gaps: list[list[float]] = []  # [start wall time, length]

    def arrived(self):
        mono, wall = time.monotonic(), time.time()
        if self.last_mono is not None:
            gap = mono - self.last_mono
            if gap > self.max_gap:
                self.max_gap, self.max_gap_start = gap, self.last_wall
            if gap > GAP_RECORD_S and len(self.gaps) < 1000:
                self.gaps.append([round(self.last_wall, 4), round(gap, 4)])
        self.last_mono, self.last_wall = mono, wall

    def report(self) -> dict:
        return {"max_gap": round(self.max_gap, 4), "max_gap_start": round(self.max_gap_start, 4),
                "gaps": self.gaps, "last_rx": self.last_wall}


# ---------------------------------------------------------------- server

class Server:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.stream_conns: list[dict] = []
        self.probe_conns: list[str] = []
        self.udp_sources: dict[str, dict] = {}
        self.tcp_sources: dict[str, dict] = {}  # seen on the wire (packet socket)
        self.sniffed = 0

    @staticmethod
    def _note(table: dict, key: str):
        now = time.time()
        e = table.get(key)
        if e is None:
            table[key] = {"first": now, "last": now, "count": 1}
        else:
            e["last"] = now
            e["count"] += 1

    def _listener(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        return s

    def _accept_loop(self, lsock: socket.socket, handler):
        lsock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, peer = lsock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=handler, args=(conn, peer), daemon=True).start()

    def _stream(self, conn: socket.socket, peer):
        rec = {"peer": f"{peer[0]}:{peer[1]}", "accepted": time.time(), "bytes": 0,
               "reset": False, "eof": False}
        gap = GapMeter()
        with self.lock:
            self.stream_conns.append(rec)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not self.stop.is_set():
                r, _, _ = select.select([conn], [], [], 0.2)
                if not r:
                    continue
                data = conn.recv(65536)
                if not data:
                    rec["eof"] = True
                    break
                gap.arrived()
                rec["bytes"] += len(data)
                rec.update(gap.report())
                conn.sendall(data)
        except OSError as e:
            rec["reset"] = e.errno in (errno.ECONNRESET, errno.EPIPE)
            rec["error"] = str(e)
        finally:
            rec.update(gap.report())
            conn.close()

    def _probe(self, conn: socket.socket, peer):
        with self.lock:
            self.probe_conns.append(f"{peer[0]}:{peer[1]}")
        conn.settimeout(5)
        try:
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def _udp(self, port: int, record: bool):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        s.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data, peer = s.recvfrom(2048)
            except socket.timeout:
                continue
            if record:
                with self.lock:
                    self._note(self.udp_sources, f"{peer[0]}:{peer[1]}")
            s.sendto(data, peer)

    def _sniff(self):
        # Every TCP segment to the stream port as it arrives on the wire, before the kernel
        # decides anything: a NAT mapping that changed shows up as a second source.
        eth_p_ip = 0x0800
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(eth_p_ip))
        s.bind((self.args.sniff, eth_p_ip))
        s.settimeout(0.2)
        while not self.stop.is_set():
            try:
                pkt, addr = s.recvfrom(2048)
            except socket.timeout:
                continue
            if addr[2] == socket.PACKET_OUTGOING or len(pkt) < 20 or pkt[9] != 6:
                continue
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) < ihl + 4:
                continue
            sport, dport = struct.unpack(">HH", pkt[ihl:ihl + 4])
            if dport != self.args.tcp_port:
                continue
            src = socket.inet_ntoa(pkt[12:16])
            with self.lock:
                self.sniffed += 1
                self._note(self.tcp_sources, f"{src}:{sport}")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        threads = [
            threading.Thread(target=self._accept_loop,
                             args=(self._listener(self.args.tcp_port), self._stream), daemon=True),
            threading.Thread(target=self._accept_loop,
                             args=(self._listener(self.args.probe_port), self._probe),
                             daemon=True),
            threading.Thread(target=self._udp, args=(self.args.udp_port, True), daemon=True),
            threading.Thread(target=self._udp, args=(self.args.extra_udp_port, False),
                             daemon=True),
        ]
        if self.args.sniff:
            threads.append(threading.Thread(target=self._sniff, daemon=True))
        for t in threads:
            t.start()
        time.sleep(0.3)  # the sniffer and UDP socket are bound by now
        with open(self.args.ready, "w") as f:
            f.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + self.args.max_seconds
        while not self.stop.wait(0.2):
            if time.monotonic() > deadline:
                print("stream server: --max-seconds reached", file=sys.stderr)
                break
        self.stop.set()
        time.sleep(0.3)
        with self.lock:
            report = {"stream_conns": self.stream_conns, "probe_conns": self.probe_conns,
                      "udp_sources": self.udp_sources, "tcp_sources": self.tcp_sources,
                      "sniffed": self.sniffed}
            write_json(self.args.report, report)
        return 0


# ---------------------------------------------------------------- client

class Client:
    def __init__(self, args):
        self.args = args
        self.stopping = False
        self.tcp_tx = 0          # bytes handed to the socket
        self.tcp_rx = 0          # echoed bytes received and checked
        self.pending = b""
        self.reset = False
        self.eof = False
        self.error: str | None = None
        self.tcp_gap = GapMeter()
        self.udp_tx = 0
        self.udp_rx = 0
        self.udp_dups = 0
        self.udp_seen: set[int] = set()
        self.udp_gap = GapMeter()
        self.local = ""
        self.started = time.time()
        self.stopped: float | None = None  # when the main loop ended (drained or gave up)

    def status(self, final: bool = False) -> dict:
        return {"t": time.time(), "started": self.started, "stopped": self.stopped,
                "local": self.local,
                "tcp_tx": self.tcp_tx, "tcp_rx": self.tcp_rx, "reset": self.reset,
                "eof": self.eof, "error": self.error, "udp_tx": self.udp_tx,
                "udp_rx": self.udp_rx, "udp_dups": self.udp_dups, "done": final,
                "tcp": self.tcp_gap.report(), "udp": self.udp_gap.report()}

    def _tcp_failed(self, what: str, e: OSError | None = None):
        if e is not None and e.errno in (errno.ECONNRESET, errno.EPIPE):
            self.reset = True
        if self.error is None:
            self.error = f"{what}: {e}" if e else what

    def run(self) -> int:
        a = self.args
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        tcp = socket.create_connection((a.server, a.tcp_port), timeout=5)
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tcp.setblocking(False)
        self.local = "%s:%d" % tcp.getsockname()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect((a.server, a.udp_port))
        udp.setblocking(False)

        tick = a.interval_ms / 1000.0
        next_tcp = next_udp = next_status = time.monotonic()
        deadline = time.monotonic() + a.max_seconds
        drain_deadline: float | None = None
        tcp_open = True
        while True:
            now = time.monotonic()
            if now > deadline and not self.stopping:
                print("stream client: --max-seconds reached", file=sys.stderr)
                self.stopping = True
            if self.stopping and drain_deadline is None:
                drain_deadline = now + a.drain_seconds
            if drain_deadline is not None and (
                    now > drain_deadline or not tcp_open or
                    (not self.pending and self.tcp_rx == self.tcp_tx)):
                break
            if tcp_open and not self.stopping and now >= next_tcp and not self.pending:
                # Generate only when the last chunk is out: a stalled path stops the producer
                # instead of queueing without bound.
                self.pending = pattern(self.tcp_tx, a.chunk)
                next_tcp = now + tick
            if not self.stopping and now >= next_udp:
                try:
                    udp.send(struct.pack(">Q", self.udp_tx).ljust(UDP_SIZE, b"u"))
                    self.udp_tx += 1
                except OSError:
                    pass  # no route or unreachable while the addresses move
                next_udp = now + 0.010
            rlist = [udp] + ([tcp] if tcp_open else [])
            wlist = [tcp] if tcp_open and self.pending else []
            timeout = max(0.0, min(next_tcp, next_udp) - time.monotonic())
            r, w, _ = select.select(rlist, wlist, [], min(timeout, 0.05))
            if tcp in w:
                try:
                    n = tcp.send(self.pending)
                    self.tcp_tx += n
                    self.pending = self.pending[n:]
                except BlockingIOError:
                    pass
                except OSError as e:
                    self._tcp_failed("send", e)
                    tcp_open = False
            if tcp_open and tcp in r:
                try:
                    data = tcp.recv(65536)
                    if not data:
                        self.eof = True
                        self._tcp_failed("server closed the stream")
                        tcp_open = False
                    else:
                        self.tcp_gap.arrived()
                        if data != pattern(self.tcp_rx, len(data)) and self.error is None:
                            self.error = f"mismatch in the echo at byte {self.tcp_rx}"
                            tcp_open = False
                        self.tcp_rx += len(data)
                except BlockingIOError:
                    pass
                except OSError as e:
                    self._tcp_failed("recv", e)
                    tcp_open = False
            if udp in r:
                while True:
                    try:
                        data = udp.recv(2048)
                    except OSError:
                        break
                    if len(data) >= 8:
                        seq = struct.unpack(">Q", data[:8])[0]
                        if seq in self.udp_seen:
                            self.udp_dups += 1
                        self.udp_seen.add(seq)
                        self.udp_rx += 1
                        self.udp_gap.arrived()
            if time.monotonic() >= next_status:
                write_json(a.status, self.status())
                next_status = time.monotonic() + 0.1
        self.stopped = time.time()
        if tcp_open:
            # Orderly close: the server sees EOF and must not have seen a reset.
            try:
                tcp.setblocking(True)
                tcp.shutdown(socket.SHUT_WR)
                tcp.settimeout(1.0)
                while tcp.recv(65536):
                    pass
            except OSError:
                pass
        tcp.close()
        udp.close()
        final = self.status(final=True)
        write_json(a.status, final)
        write_json(a.report, final)
        return 0


# ---------------------------------------------------------------- probe, wait, check

def probe(args) -> int:
    payload = pattern(0, 64)
    try:
        with socket.create_connection((args.server, args.port), timeout=args.timeout) as s:
            s.settimeout(args.timeout)
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                data = s.recv(4096)
                if not data:
                    break
                got += data
    except OSError as e:
        print(f"probe: new connection to {args.server}:{args.port} failed: {e}", file=sys.stderr)
        return 1
    if got != payload:
        print(f"probe: echo of {len(got)} bytes differs", file=sys.stderr)
        return 1
    return 0


def flows(args) -> int:
    """`count` UDP flows from distinct ports, one datagram each; 0 if every one was echoed."""
    socks = []
    try:
        for i in range(args.count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect((args.server, args.port))
            s.send(struct.pack(">Q", i))
            socks.append(s)
        pending = set(socks)
        deadline = time.monotonic() + args.timeout
        while pending and time.monotonic() < deadline:
            r, _, _ = select.select(list(pending), [], [], 0.1)
            for s in r:
                try:
                    s.recv(64)
                except OSError:
                    continue
                pending.discard(s)
    finally:
        for s in socks:
            s.close()
    if pending:
        print(f"flows: {len(pending)} of {args.count} UDP flows got no echo", file=sys.stderr)
        return 1
    return 0


def wait(args) -> int:
    """Exit 0 once `amount` more TCP bytes / UDP replies arrived than when called, 1 after
    `timeout` seconds without (the stream stalls or is broken), 2 if the status is missing."""
    key = {"tcp": "tcp_rx", "udp": "udp_rx"}[args.what]
    deadline = time.monotonic() + args.timeout
    start = None
    while time.monotonic() < deadline:
        try:
            st = read_json(args.status)
        except (OSError, ValueError):
            time.sleep(0.02)
            continue
        if start is None:
            start = st[key]
        if st[key] - start >= args.amount:
            return 0
        if st.get("done"):
            break
        time.sleep(0.02)
    if start is None:
        print(f"wait: no status in {args.status}", file=sys.stderr)
        return 2
    return 1


def check(args) -> int:
    """The verdict on a run: prints one line per finding, exit 0 if the stream survived every
    event intact (or, with --expect-broken, if it did not)."""
    c = read_json(args.client_report)
    s = read_json(args.server_report)
    problems: list[str] = []
    tcp_broken: list[str] = []  # the stream itself did not survive (what --expect-broken wants)
    print(f"client {c['local']}: tcp sent {c['tcp_tx']} echoed {c['tcp_rx']} "
          f"reset={c['reset']} error={c['error']}; "
          f"udp sent {c['udp_tx']} replies {c['udp_rx']} dups {c['udp_dups']}")
    if c["reset"]:
        tcp_broken.append("the TCP stream was reset")
    if c["error"]:
        tcp_broken.append(f"TCP stream: {c['error']}")
    if c["tcp_rx"] != c["tcp_tx"]:
        tcp_broken.append(f"{c['tcp_tx'] - c['tcp_rx']} bytes sent but never echoed")
    if c["udp_dups"]:
        problems.append(f"{c['udp_dups']} duplicated UDP replies")

    conns = s["stream_conns"]
    if len(conns) != 1:
        problems.append(f"server saw {len(conns)} stream connections, expected 1")
    for conn in conns:
        print(f"server stream connection from {conn['peer']}: {conn['bytes']} bytes, "
              f"reset={conn['reset']} eof={conn['eof']}, largest gap {conn.get('max_gap', 0):.3f} s")
        if conn["reset"]:
            tcp_broken.append(f"the server's side of {conn['peer']} was reset")
    for what, sources in (("tcp", s["tcp_sources"]), ("udp", s["udp_sources"])):
        names = ", ".join(f"{k} ({v['count']} pkts)" for k, v in sources.items())
        print(f"server saw {what} sources: {names or 'none'}")
        if len(sources) != 1:
            problems.append(f"the server saw {len(sources)} {what} source address:ports (NAT "
                            f"mapping not kept), expected 1")
        for k in sources:
            if not k.startswith(args.vip + ":"):
                problems.append(f"{what} source {k} is not the outside VIP {args.vip}")
    if s["tcp_sources"] and conns and conns[0]["peer"] not in s["tcp_sources"]:
        problems.append("the stream's peer is not among the sniffed sources")

    # Each event's outage: the largest gap in the echoed stream that starts from shortly before
    # the event (the last byte before it) to a few seconds after.
    tcp_gaps, udp_gaps = list(c["tcp"]["gaps"]), c["udp"]["gaps"]
    # A stream that stopped for good has no gap that ended: count its silence until the client
    # stopped as one.
    if c["tcp"]["last_rx"] and c["stopped"] - c["tcp"]["last_rx"] > GAP_RECORD_S:
        tcp_gaps.append([c["tcp"]["last_rx"], c["stopped"] - c["tcp"]["last_rx"], "never resumed"])
    events = sorted(args.event, key=lambda e: e[1])
    for i, (name, when) in enumerate(events):
        # A gap belongs to the event if it starts between shortly before it (the last byte
        # before the failure) and the next event.
        end = when + args.window
        if i + 1 < len(events):
            end = min(end, events[i + 1][1] - 0.5)

        def worst(gaps):
            inside = [g for g in gaps if when - 0.5 <= g[0] <= end]
            return max(inside, key=lambda g: g[1]) if inside else None
        g, u = worst(tcp_gaps), worst(udp_gaps)
        tcp_s = g[1] if g else 0.0
        udp_s = u[1] if u else 0.0
        # Bytes flowing again, counted from the event (not from the last byte before it).
        if g and len(g) > 2:
            resumed = "no TCP byte arrived after it until the client stopped"
        else:
            resumed = f"bytes flowing again {(g[0] + g[1] - when) if g else 0.0:.3f} s after it"
        print(f"{name}: largest TCP gap {tcp_s:.3f} s ({resumed}), largest UDP gap {udp_s:.3f} s")
        if tcp_s >= args.max_gap:
            tcp_broken.append(f"{name}: the TCP stream stopped for {tcp_s:.3f} s "
                              f"(limit {args.max_gap} s)")
        if (c["tcp"]["last_rx"] or 0) < when:
            tcp_broken.append(f"{name}: no TCP bytes arrived after it")
        if (c["udp"]["last_rx"] or 0) < when:
            problems.append(f"{name}: no UDP replies arrived after it")
    whole = max([c["tcp"]["max_gap"]] + [g[1] for g in tcp_gaps])
    print(f"whole run: largest TCP gap {whole:.3f} s, "
          f"largest UDP gap {c['udp']['max_gap']:.3f} s")

    if args.expect_broken:
        for p in problems:
            print(f"also: {p}")
        if tcp_broken:
            print("as expected, the stream did not survive: " + "; ".join(tcp_broken))
            return 0
        print("FAIL: the stream survived although it should not have")
        return 1
    problems = tcp_broken + problems
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


def event_arg(text: str):
    name, _, when = text.partition("=")
    return name, float(when)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def ports(sp):
        sp.add_argument("--tcp-port", type=int, default=TCP_PORT)
        sp.add_argument("--probe-port", type=int, default=PROBE_PORT)
        sp.add_argument("--udp-port", type=int, default=UDP_PORT)
        sp.add_argument("--extra-udp-port", type=int, default=EXTRA_UDP_PORT)
        sp.add_argument("--max-seconds", type=float, default=120)

    sp = sub.add_parser("server")
    ports(sp)
    sp.add_argument("--report", required=True)
    sp.add_argument("--ready", required=True)
    sp.add_argument("--sniff", help="interface whose incoming segments to the stream port are "
                    "recorded by source")
    sp = sub.add_parser("client")
    ports(sp)
    sp.add_argument("--server", required=True)
    sp.add_argument("--status", required=True)
    sp.add_argument("--report", required=True)
    sp.add_argument("--interval-ms", type=float, default=2.0)
    sp.add_argument("--chunk", type=int, default=256)
    sp.add_argument("--drain-seconds", type=float, default=3.0)
    sp = sub.add_parser("probe")
    sp.add_argument("--server", required=True)
    sp.add_argument("--port", type=int, default=PROBE_PORT)
    sp.add_argument("--timeout", type=float, default=3.0)
    sp = sub.add_parser("flows")
    sp.add_argument("--server", required=True)
    sp.add_argument("--port", type=int, default=EXTRA_UDP_PORT)
    sp.add_argument("--count", type=int, required=True)
    sp.add_argument("--timeout", type=float, default=3.0)
    sp = sub.add_parser("wait")
    sp.add_argument("--status", required=True)
    sp.add_argument("--what", choices=("tcp", "udp"), default="tcp")
    sp.add_argument("--amount", type=int, required=True)
    sp.add_argument("--timeout", type=float, required=True)
    sp = sub.add_parser("check")
    sp.add_argument("--client-report", required=True)
    sp.add_argument("--server-report", required=True)
    sp.add_argument("--vip", required=True, help="the outside virtual address (the NAT source)")
    sp.add_argument("--event", type=event_arg, action="append", default=[],
                    help="NAME=EPOCH_SECONDS of a failover; its outage is measured")
    sp.add_argument("--window", type=float, default=10.0,
                    help="an event's outage starts at most this many seconds after it")
    sp.add_argument("--max-gap", type=float, default=1.0)
    sp.add_argument("--expect-broken", action="store_true")
    args = p.parse_args()
    if args.cmd == "server":
        return Server(args).run()
    if args.cmd == "client":
        return Client(args).run()
    return {"probe": probe, "flows": flows, "wait": wait, "check": check}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
