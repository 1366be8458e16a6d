#!/usr/bin/python3
"""FTP and TFTP client sessions for ftp_failover.sh (standard library only).

  ftp_traffic.py sanity   --server ADDR --files DIR --report FILE
  ftp_traffic.py failover --server ADDR --files DIR --status FILE --go FILE --report FILE
                          [--port-before 47001] [--pasv-before 47002] [--port-before-len 47003]
                          [--tftp-before 47004] [--same-length-address 10.1.0.10]
  ftp_traffic.py show     --report FILE        # one line per check; exit 0 if all passed
  ftp_traffic.py ok       --report FILE --id ID    # exit 0 if check ID is there and passed

DIR is the servers' directory (vsftpd's anonymous root, in.tftpd's root) with small.bin,
big.bin and tftp.bin; the client reads them there to compare checksums.

`sanity` (through one firewall, no failover): an active-mode RETR (PORT, which masquerade
rewrites) followed by NOOP on the same control connection, a passive-mode RETR, an active LIST,
and a TFTP read.

`failover` sets up, before the failover, the sessions the test looks at afterwards:
  s1  a control connection whose active-mode RETR (PORT rewritten to another length) completed;
      after: NOOP and PWD answered, a passive LIST, an active LIST (a new PORT, so the new
      firewall's helper must follow the connection)
  s2a PORT sent and answered (the client listens on --port-before), from
      --same-length-address, whose PORT is as long as the VIP's (no sequence adjustment: only
      the expectation matters); after: RETR, the server's data connection must reach the
      client through the new firewall
  s2c the same from the client's main address (PORT rewritten to another length), listening
      on --port-before-len
  s2b PASV answered; after: the data connection (from --pasv-before) and RETR
  s3a, s3b  big.bin downloaded in active and in passive mode, running across the failover (the
      server rate-limits them): checksum and the 226 reply, then NOOP answered
  s4  a TFTP RRQ (from --tftp-before) sent once, never again: ftp_failover.sh holds the
      server's DATA packets back until the failover is done, so only the new firewall's
      expectation can let the transfer in
then writes {"phase": "armed"} to --status, waits for --go (written by the test once the
addresses moved), runs the "after" steps concurrently and writes the report: {"checks": [{name,
ok, detail, seconds}], ...}. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import ftplib
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time

STEP_TIMEOUT_S = 5.0  # one FTP reply, one accept, one TFTP packet
TRANSFER_TIMEOUT_S = 20.0  # a transfer across the failover, whole, after the go
GO_TIMEOUT_S = 40.0  # armed until the test says go
FIRST_AFTER_GO_S = 8.0  # the server's held TFTP DATA 1 (resent 2 and 6 s after the RRQ)
BIG_PROGRESS = 64 * 1024  # bytes of each big transfer before the test may kill the firewall


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def describe(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"timed out ({e or 'no answer'})"
    return f"{type(e).__name__}: {e}"


class Checks:
    def __init__(self):
        self.lock = threading.Lock()
        self.items: list[dict] = []

    def add(self, cid: str, name: str, ok: bool, detail: str, seconds: float = 0.0) -> None:
        with self.lock:
            self.items.append({"id": cid, "name": name, "ok": ok, "detail": detail,
                               "seconds": round(seconds, 3)})

    def run(self, cid: str, name: str, fn) -> bool:
        """Runs fn() -> detail; an exception is the failure's detail."""
        t0 = time.monotonic()
        try:
            detail = fn()
            self.add(cid, name, True, detail or "", time.monotonic() - t0)
            return True
        except Exception as e:  # the reason is the result
            self.add(cid, name, False, describe(e), time.monotonic() - t0)
            return False


def login(server: str, source: str | None = None) -> ftplib.FTP:
    f = ftplib.FTP(timeout=STEP_TIMEOUT_S, source_address=(source, 0) if source else None)
    f.connect(server, 21)
    f.login()  # anonymous
    f.voidcmd("TYPE I")
    return f


def port_arg(addr: str, port: int) -> str:
    return ",".join(addr.split(".") + [str(port >> 8), str(port & 0xFF)])


def retr_checked(f: ftplib.FTP, name: str, want: str, progress: list | None = None) -> str:
    got = hashlib.sha256()
    n = [0]

    def chunk(b: bytes):
        got.update(b)
        n[0] += len(b)
        if progress is not None:
            progress[0] = n[0]

    f.retrbinary(f"RETR {name}", chunk, blocksize=16384)
    if got.hexdigest() != want:
        raise ValueError(f"{name}: {n[0]} bytes, sha256 {got.hexdigest()[:16]}… "
                         f"!= {want[:16]}…")
    return f"{n[0]} bytes, sha256 ok, 226 received"


def read_all(conn: socket.socket) -> bytes:
    conn.settimeout(STEP_TIMEOUT_S)
    parts = []
    while True:
        b = conn.recv(65536)
        if not b:
            return b"".join(parts)
        parts.append(b)


def tftp_get(server: str, name: str, want: str, src_port: int, info: dict,
             go: threading.Event | None = None) -> str:
    """Reads NAME with one RRQ, never resent: a second RRQ would start a second transfer from a
    new server port, whose expectation (made by the new firewall's helper) would hide a lost
    one. DATA 1 may take until FIRST_AFTER_GO_S after GO is set (STEP_TIMEOUT_S without GO);
    ACKs are resent on a timeout (bounded)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("", src_port))
        s.sendto(struct.pack(">H", 1) + name.encode() + b"\0octet\0", (server, 69))
        info["rrq_sent"] = time.time()
        data = bytearray()
        expected, peer, last_ack, resends = 1, None, None, 0
        t_rrq = time.monotonic()
        deadline = t_rrq + (GO_TIMEOUT_S if go else STEP_TIMEOUT_S)
        while True:
            if peer is None and go is not None and go.is_set() and "go" not in info:
                info["go"] = time.monotonic()
                deadline = min(deadline, info["go"] + FIRST_AFTER_GO_S)
            left = min(deadline - time.monotonic(), 0.1 if go is not None and peer is None else 1e9)
            if deadline - time.monotonic() <= 0:
                if peer is None:
                    raise TimeoutError(f"no DATA 1 within {time.monotonic() - t_rrq:.1f} s of the "
                                       f"RRQ ({FIRST_AFTER_GO_S:.0f} s after the failover)")
                if resends >= 5:
                    raise TimeoutError(f"transfer stalled at block {expected} after 5 ACK resends")
                resends += 1
                s.sendto(last_ack, peer)
                deadline = time.monotonic() + STEP_TIMEOUT_S / 5
                continue
            s.settimeout(left)
            try:
                pkt, addr = s.recvfrom(65536)
            except socket.timeout:
                continue
            op = struct.unpack(">H", pkt[:2])[0] if len(pkt) >= 2 else 0
            if op == 5:
                msg = pkt[4:].rstrip(b"\0").decode(errors="replace")
                raise ValueError(f"TFTP error from {addr}: {msg}")
            if op != 3 or len(pkt) < 4:
                continue
            if peer is None:
                peer = addr
                info["first_data"] = time.time()
                info["server_port"] = addr[1]
            if addr != peer:
                continue
            block = struct.unpack(">H", pkt[2:4])[0]
            if block == expected & 0xFFFF:
                data += pkt[4:]
                last_ack = struct.pack(">HH", 4, block)
                s.sendto(last_ack, peer)
                expected += 1
                resends = 0
                deadline = time.monotonic() + STEP_TIMEOUT_S
                if len(pkt) - 4 < 512:
                    break
            elif last_ack is not None:
                s.sendto(last_ack, peer)  # a duplicate: our ACK was lost
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise ValueError(f"{len(data)} bytes, sha256 {got[:16]}… != {want[:16]}…")
        return f"{len(data)} bytes in {expected - 1} blocks from server port {peer[1]}, sha256 ok"
    finally:
        s.close()


# ---- sanity ---------------------------------------------------------------------------------

def cmd_sanity(a) -> int:
    checks = Checks()
    small = sha256_file(os.path.join(a.files, "small.bin"))
    tftp = sha256_file(os.path.join(a.files, "tftp.bin"))
    report = {"checks": checks.items}

    def active():
        f = login(a.server)
        try:
            f.set_pasv(False)
            report["port_address"] = ",".join(f.sock.getsockname()[0].split("."))
            detail = retr_checked(f, "small.bin", small)
            f.voidcmd("NOOP")  # the control connection after the length-changing PORT
            f.retrlines("LIST", lambda _: None)
            return f"RETR: {detail}; NOOP and active LIST answered after it"
        finally:
            f.close()

    def passive():
        f = login(a.server)
        try:
            f.set_pasv(True)
            return retr_checked(f, "small.bin", small)
        finally:
            f.close()

    checks.run("sanity-active", "sanity: active-mode RETR (PORT rewritten), then NOOP and LIST",
               active)
    checks.run("sanity-passive", "sanity: passive-mode RETR", passive)
    info: dict = {}
    checks.run("sanity-tftp", "sanity: TFTP read",
               lambda: tftp_get(a.server, "tftp.bin", tftp, 0, info))
    write_json(a.report, report)
    return 0 if all(c["ok"] for c in checks.items) else 1


# ---- failover -------------------------------------------------------------------------------

def cmd_failover(a) -> int:
    checks = Checks()
    small = sha256_file(os.path.join(a.files, "small.bin"))
    big = sha256_file(os.path.join(a.files, "big.bin"))
    tftp = sha256_file(os.path.join(a.files, "tftp.bin"))
    report: dict = {"checks": checks.items}
    t_start = time.monotonic()

    def status(phase: str, **kw):
        write_json(a.status, {"phase": phase, "time": time.time(), **kw})

    def give_up(what: str) -> int:
        status("failed", what=what)
        write_json(a.report, report)
        return 1

    # s1: the PORT of this RETR is rewritten to another length; the kernel adjusts the
    # sequence numbers of everything after it.
    try:
        s1 = login(a.server)
        s1.set_pasv(False)
        report["port_address"] = ",".join(s1.sock.getsockname()[0].split("."))
        checks.add("s1-before", "before: s1 active RETR (PORT rewritten)", True,
                   retr_checked(s1, "small.bin", small))
        s1.voidcmd("NOOP")
    except Exception as e:
        checks.add("s1-before", "before: s1 active RETR (PORT rewritten)", False, describe(e))
        return give_up("s1")

    # s2a, s2c: PORT answered, data connection later. s2a's control connection comes from
    # --same-length-address, whose PORT argument is as long as the VIP's: no sequence
    # adjustment, so only the expectation matters. s2c's PORT changes length, as s1's.
    ports = {}
    for cid, source, port in (("s2a", a.same_length_address, a.port_before),
                              ("s2c", None, a.port_before_len)):
        label = f"before: {cid} PORT answered"
        try:
            f = login(a.server, source)
            listener = socket.create_server((f.sock.getsockname()[0], port), backlog=1)
            listener.settimeout(STEP_TIMEOUT_S)
            cmd = f"PORT {port_arg(f.sock.getsockname()[0], port)}"
            resp = f.voidcmd(cmd)
            ports[cid] = (f, listener)
            checks.add(f"{cid}-before", label, True, f"{cmd} -> {resp}")
        except Exception as e:
            checks.add(f"{cid}-before", label, False, describe(e))
            return give_up(cid)

    # s2b: PASV answered, data connection later.
    try:
        s2b = login(a.server)
        resp = s2b.sendcmd("PASV")
        pasv_addr = ftplib.parse227(resp)
        checks.add("s2b-before", "before: s2b PASV answered", True, resp)
    except Exception as e:
        checks.add("s2b-before", "before: s2b PASV answered", False, describe(e))
        return give_up("s2b")

    # s3a/s3b: big transfers across the failover.
    progress = {"s3a": [0], "s3b": [0]}
    transfer_threads = []
    for name, pasv in (("s3a", False), ("s3b", True)):
        label = f"across: {name} {'passive' if pasv else 'active'} RETR big.bin"
        try:
            f = login(a.server)
            f.set_pasv(pasv)
        except Exception as e:
            checks.add(name, label, False, f"login: {describe(e)}")
            return give_up(name)

        def transfer(f=f, cid=name, label=label, p=progress[name]):
            if checks.run(cid, label, lambda: retr_checked(f, "big.bin", big, p)):
                checks.run(f"{cid}-noop", f"after: {cid} control connection answers NOOP after "
                           "the transfer", lambda: f.voidcmd("NOOP"))
            f.close()
        t = threading.Thread(target=transfer, daemon=True)
        t.start()
        transfer_threads.append(t)

    # s4: one RRQ; the test holds the server's DATA back until after the failover.
    tftp_info: dict = {}
    report["s4"] = tftp_info
    go = threading.Event()
    t4 = threading.Thread(target=lambda: checks.run(
        "s4", "across: s4 TFTP RRQ before, DATA after the failover",
        lambda: tftp_get(a.server, "tftp.bin", tftp, a.tftp_before, tftp_info, go)),
        daemon=True)
    t4.start()

    deadline = time.monotonic() + 10
    while min(p[0] for p in progress.values()) < BIG_PROGRESS or "rrq_sent" not in tftp_info:
        if time.monotonic() > deadline or not all(t.is_alive() for t in transfer_threads):
            return give_up(f"big transfers at {[p[0] for p in progress.values()]} bytes after 10 s")
        time.sleep(0.02)
    status("armed", progress={k: v[0] for k, v in progress.items()},
           setup_seconds=round(time.monotonic() - t_start, 3))

    deadline = time.monotonic() + GO_TIMEOUT_S
    while not os.path.exists(a.go):
        if time.monotonic() > deadline:
            return give_up(f"no go from the test within {GO_TIMEOUT_S:.0f} s")
        time.sleep(0.02)
    go.set()
    t_go = time.time()
    report["go"] = t_go
    report["progress_at_go"] = {k: v[0] for k, v in progress.items()}

    def s1_after():
        def noop_pwd():
            return f"{s1.voidcmd('NOOP')} / {s1.sendcmd('PWD')}"
        if not checks.run("s1-noop", "after: s1 control connection answers NOOP and PWD", noop_pwd):
            return

        def pasv_list():
            s1.set_pasv(True)
            lines: list[str] = []
            s1.retrlines("LIST", lines.append)
            return f"{len(lines)} lines"
        checks.run("s1-pasv-list", "after: s1 passive LIST on the old control connection",
                   pasv_list)

        def port_list():
            s1.set_pasv(False)
            lines: list[str] = []
            s1.retrlines("LIST", lines.append)
            return f"{len(lines)} lines (a new PORT: the helper followed the connection)"
        checks.run("s1-port-list",
                   "after: s1 active LIST (a new PORT) on the old control connection", port_list)

    def port_after(cid: str, what: str):
        f, listener = ports[cid]

        def retr():
            resp = f.sendcmd("RETR small.bin")
            try:
                conn, peer = listener.accept()
            except (socket.timeout, TimeoutError):
                raise TimeoutError(f"RETR answered '{resp[:3]}', but no data connection came "
                                   f"within {STEP_TIMEOUT_S:.0f} s") from None
            with conn:
                body = read_all(conn)
            done = f.voidresp()
            got = hashlib.sha256(body).hexdigest()
            if got != small:
                raise ValueError(f"{len(body)} bytes, sha256 mismatch")
            return (f"{resp[:3]}, connection from {peer[0]}:{peer[1]}, {len(body)} bytes ok, "
                    f"{done[:3]}")
        checks.run(cid, f"after: {cid} data connection announced before ({what}), RETR", retr)

    def s2b_after():
        def retr():
            conn = socket.create_connection(pasv_addr, timeout=STEP_TIMEOUT_S,
                                            source_address=("", a.pasv_before))
            with conn:
                resp = s2b.sendcmd("RETR small.bin")
                body = read_all(conn)
            done = s2b.voidresp()
            got = hashlib.sha256(body).hexdigest()
            if got != small:
                raise ValueError(f"{len(body)} bytes, sha256 mismatch")
            return f"{resp[:3]}, {len(body)} bytes ok, {done[:3]}"
        checks.run("s2b", "after: s2b data connection announced before (PASV), RETR", retr)

    after = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in (
        (s1_after, ()), (port_after, ("s2a", "PORT of the same length")),
        (port_after, ("s2c", "PORT of another length")), (s2b_after, ()))]
    for t in after:
        t.start()
    end = time.monotonic() + TRANSFER_TIMEOUT_S
    for t in after + transfer_threads + [t4]:
        t.join(max(0.0, end - time.monotonic()))
    for t, name in zip(transfer_threads + [t4], ("s3a", "s3b", "s4")):
        if t.is_alive():
            checks.add(name, f"across: {name}", False,
                       f"still running {TRANSFER_TIMEOUT_S:.0f} s after the go")
    if "first_data" in tftp_info:
        tftp_info["first_data_after_go"] = round(tftp_info["first_data"] - t_go, 3)
    tftp_info.pop("go", None)
    report["after_seconds"] = round(time.time() - t_go, 3)
    status("done")
    write_json(a.report, report)
    return 0 if all(c["ok"] for c in checks.items) else 1


def cmd_ok(a) -> int:
    with open(a.report) as f:
        r = json.load(f)
    found = [c for c in r["checks"] if c["id"] == a.id]
    return 0 if found and all(c["ok"] for c in found) else 1


def cmd_show(a) -> int:
    with open(a.report) as f:
        r = json.load(f)
    for c in r["checks"]:
        verdict = "ok  " if c["ok"] else "FAIL"
        print(f"{verdict} [{c['id']}] {c['name']}: {c['detail']} ({c['seconds']} s)")
    return 0 if all(c["ok"] for c in r["checks"]) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sanity")
    s.add_argument("--server", required=True)
    s.add_argument("--files", required=True)
    s.add_argument("--report", required=True)
    s = sub.add_parser("failover")
    s.add_argument("--server", required=True)
    s.add_argument("--files", required=True)
    s.add_argument("--status", required=True)
    s.add_argument("--go", required=True)
    s.add_argument("--report", required=True)
    s.add_argument("--port-before", type=int, default=47001)
    s.add_argument("--port-before-len", type=int, default=47003)
    s.add_argument("--same-length-address", default="10.1.0.10")
    s.add_argument("--pasv-before", type=int, default=47002)
    s.add_argument("--tftp-before", type=int, default=47004)
    s = sub.add_parser("show")
    s.add_argument("--report", required=True)
    s = sub.add_parser("ok")
    s.add_argument("--report", required=True)
    s.add_argument("--id", required=True)
    a = p.parse_args()
    cmds = {"sanity": cmd_sanity, "failover": cmd_failover, "show": cmd_show, "ok": cmd_ok}
    return cmds[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
