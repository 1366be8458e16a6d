#!/usr/bin/python3
"""Kernel oracle: replay one pcap through real Linux conntrack and record what it did.

Topology (everything lives in two private network namespaces; nothing touches the host's
interfaces):

    ctsdiff-inj-<pid>-<tag>                      ctsdiff-trk-<pid>-<tag>
      injc 02:00:00:00:01:02  <--- veth --->  trkc 02:00:00:00:01:01  10.231.1.1/24 fd00:231:1::1/64
      injs 02:00:00:00:02:02  <--- veth --->  trks 02:00:00:00:02:01  10.231.2.1/24 fd00:231:2::1/64

The injector replays the pcap with tcpreplay (client-side frames, recognised by their
source MAC, go out of injc, everything else out of injs), keeping the pcap's timing. The tracker
forwards between its two interfaces with permanent neighbour entries, has conntrack active (an nft
rule using `ct state`) and rx checksum offload off, so bad checksums are seen by conntrack. The
injector drops everything it receives back (prerouting policy drop).

Output: the `conntrack -E -o extended,timestamp` stream (events file) and `conntrack -L -o
extended` for IPv4 then IPv6 (table file).

NAT scenarios (--nat-nft RULES.nft, the `table inet ctsnat` gen_scenarios.py wrote) also get,
in the tracker: `ct state invalid drop` after the forward chain's counters; an input chain with
the same per-state counters and policy drop (except packets DNATed to the tracker itself, i.e.
redirected: accepted so that their entry is confirmed, as for any locally delivered packet); an
output chain at raw priority (before conntrack) with policy drop, so the tracker's own stack never
emits anything (no RST, no ICMP error, no neighbour discovery) and never touches an entry. The
per-state counters written are then forward + input (every packet conntrack classified, where
the stack was the destination or not). And they record what the tracker emits: tcpdump in the
injector namespace on injc (client side) and injs (server side), incoming frames only, started
and seen listening before the replay and stopped after a settle time (--capture-client /
--capture-server), plus `conntrack -S` (--stats: insert_failed, drop).

Usage: kernel_oracle.py --pcap F.pcap --events OUT.events --table OUT.table
                        [--sysctl nf_conntrack_tcp_loose=0 ...] [--tag NAME]
                        [--nat-nft F.nft --capture-client C.pcap --capture-server S.pcap
                         --stats OUT.stats]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

CLIENT_MAC_INJ = "02:00:00:00:01:02"  # source MAC of client-side frames in the pcaps
CLIENT_MAC_TRK = "02:00:00:00:01:01"
SERVER_MAC_INJ = "02:00:00:00:02:02"  # source MAC of server-side frames in the pcaps
SERVER_MAC_TRK = "02:00:00:00:02:01"

# Hosts the scenarios may send to; each gets a permanent neighbour entry so the tracker never
# resolves addresses (no ARP/ND, no locally generated "host unreachable").
CLIENT_HOSTS = ["10.231.1.2", "10.231.1.3", "10.231.1.4", "10.231.1.254",
                "fd00:231:1::2", "fd00:231:1::3", "fd00:231:1::4", "fd00:231:1::fe"]
SERVER_HOSTS = ["10.231.2.2", "10.231.2.3", "10.231.2.4", "10.231.2.254",
                "fd00:231:2::2", "fd00:231:2::3", "fd00:231:2::4", "fd00:231:2::fe"]

TRK_NFT = """
table inet ctsdiff {
  chain forward_ct {
    type filter hook forward priority 0; policy accept;
    ct state new counter
    ct state established counter
    ct state related counter
    ct state invalid counter
  }
}
"""

# NAT scenarios: TRK_NFT plus an invalid drop (after the counters), the input chain counted the
# same way, and nothing ever leaving the tracker's own stack.
TRK_NFT_NAT = """
table inet ctsdiff {
  chain forward_ct {
    type filter hook forward priority 0; policy accept;
    ct state new counter
    ct state established counter
    ct state related counter
    ct state invalid counter
    ct state invalid drop
  }
  chain input_ct {
    type filter hook input priority 0; policy drop;
    ct state new counter
    ct state established counter
    ct state related counter
    ct state invalid counter
    ct status dnat accept
  }
  chain output_raw {
    type filter hook output priority raw; policy drop;
  }
}
"""

INJ_NFT = """
table inet ctsdiff_inj {
  chain pre {
    type filter hook prerouting priority -500; policy drop;
  }
}
"""

CMD_TIMEOUT = 20  # seconds, for every helper command
_tag_lock = threading.Lock()
_tag_counter = 0


class OracleError(RuntimeError):
    pass


def _run(cmd: list[str], *, input_text: str | None = None, timeout: float = CMD_TIMEOUT,
         check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, input=input_text, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise OracleError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.strip()}")
    return p


def _unique_tag(tag: str | None) -> str:
    global _tag_counter
    with _tag_lock:
        _tag_counter += 1
        n = _tag_counter
    base = f"{os.getpid()}-{n}"
    if tag:
        safe = "".join(c for c in tag if c.isalnum())[:12]
        base = f"{base}-{safe}"
    return base


class Oracle:
    """One replay. Use as a context manager: namespaces are always deleted on exit."""

    def __init__(self, tag: str | None = None):
        t = _unique_tag(tag)
        self.inj = f"ctsdiff-inj-{t}"
        self.trk = f"ctsdiff-trk-{t}"
        self.created: list[str] = []
        self.listener: subprocess.Popen | None = None
        self.captures: list[tuple[subprocess.Popen, str, object]] = []
        self.nat = False

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def cleanup(self):
        self.stop_captures()
        if self.listener is not None and self.listener.poll() is None:
            try:
                self.listener.send_signal(signal.SIGTERM)
                self.listener.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.listener.kill()
                self.listener.wait(timeout=3)
            except ProcessLookupError:
                pass
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=CMD_TIMEOUT)
        self.created = []

    def _ns(self, ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", ns, *cmd], **kw)

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, sysctls: dict[str, str] | None = None, nat_nft: str | None = None):
        inj, trk = self.inj, self.trk
        self.nat = nat_nft is not None
        for ns in (inj, trk):
            _run(["ip", "netns", "add", ns])
            self.created.append(ns)
        # No IPv6 autoconfiguration noise from either side.
        self._ns(trk, "sysctl", "-qw", "net.ipv6.conf.default.accept_ra=0",
                 "net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.addr_gen_mode=1",
                 "net.ipv6.conf.all.accept_redirects=0", "net.ipv4.conf.all.send_redirects=0",
                 "net.ipv4.conf.default.send_redirects=0")
        self._ns(inj, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1",
                 "net.ipv6.conf.all.disable_ipv6=1")
        # veth pairs created straight inside the namespaces: no names in the host namespace.
        _run(["ip", "-n", inj, "link", "add", "injc", "address", CLIENT_MAC_INJ, "type", "veth",
              "peer", "name", "trkc", "address", CLIENT_MAC_TRK, "netns", trk])
        _run(["ip", "-n", inj, "link", "add", "injs", "address", SERVER_MAC_INJ, "type", "veth",
              "peer", "name", "trks", "address", SERVER_MAC_TRK, "netns", trk])
        self._ns(trk, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                 "net.ipv4.conf.default.rp_filter=0", "net.ipv6.conf.all.forwarding=1")
        for dev, a4, a6 in (("trkc", "10.231.1.1/24", "fd00:231:1::1/64"),
                            ("trks", "10.231.2.1/24", "fd00:231:2::1/64")):
            _run(["ip", "-n", trk, "addr", "add", a4, "dev", dev])
            _run(["ip", "-n", trk, "addr", "add", a6, "dev", dev, "nodad"])
            self._ns(trk, "sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0")
            # Checksums must be verified in software, or bad checksums pass unnoticed.
            self._ns(trk, "ethtool", "-K", dev, "rx", "off")
            self._ns(trk, "ethtool", "-K", dev, "gro", "off", check=False)
        # Tracker side first: the side brought up second reports its carrier late (linkwatch).
        _run(["ip", "-n", trk, "link", "set", "lo", "up"])
        _run(["ip", "-n", trk, "link", "set", "trkc", "up"])
        _run(["ip", "-n", trk, "link", "set", "trks", "up"])
        _run(["ip", "-n", inj, "link", "set", "lo", "up"])
        _run(["ip", "-n", inj, "link", "set", "injc", "up"])
        _run(["ip", "-n", inj, "link", "set", "injs", "up"])
        for dev, mac, hosts in (("trkc", CLIENT_MAC_INJ, CLIENT_HOSTS),
                                ("trks", SERVER_MAC_INJ, SERVER_HOSTS)):
            for h in hosts:
                _run(["ip", "-n", trk, "neigh", "replace", h, "lladdr", mac, "dev", dev,
                      "nud", "permanent"])
        self._ns(trk, "nft", "-f", "-", input_text=TRK_NFT_NAT if self.nat else TRK_NFT)
        if self.nat:
            self._ns(trk, "nft", "-f", "-", input_text=nat_nft)
        self._ns(inj, "nft", "-f", "-", input_text=INJ_NFT)
        for k, v in (sysctls or {}).items():
            key = k if k.startswith("net.") else f"net.netfilter.{k}"
            self._ns(trk, "sysctl", "-qw", f"{key}={v}")
        self._wait_links_up()

    def _wait_links_up(self, limit: float = 4.0):
        deadline = time.monotonic() + limit
        while True:
            ok = True
            # Only the tracker side matters (IPv6 on trkc/trks waits for the link to be ready);
            # the injector side's operstate lags ~1 s behind (linkwatch) but it transmits anyway.
            for ns, devs in ((self.trk, ("trkc", "trks")),):
                for d in devs:
                    p = _run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{d}/operstate"],
                             check=False)
                    if p.stdout.strip() != "up":
                        ok = False
            if ok:
                return
            if time.monotonic() > deadline:
                return  # carry on: carrier is there even when operstate lags
            time.sleep(0.05)

    # -- recording -----------------------------------------------------------------------------
    def _listener_subscribed(self) -> bool:
        p = self._ns(self.trk, "cat", "/proc/net/netlink", check=False)
        for line in p.stdout.splitlines()[1:]:
            f = line.split()
            # Eth 12 = NETLINK_NETFILTER; a non-zero group mask = subscribed to ctnetlink events
            if len(f) >= 4 and f[1] == "12" and int(f[3], 16) != 0:
                return True
        return False

    def start_listener(self, events_path: str):
        self._events_file = open(events_path, "w")
        self.listener = subprocess.Popen(
            ["ip", "netns", "exec", self.trk, "stdbuf", "-oL", "conntrack", "-E", "-o",
             "extended,timestamp"],
            stdout=self._events_file, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 5.0
        while not self._listener_subscribed():
            if self.listener.poll() is not None:
                raise OracleError("conntrack -E exited early")
            if time.monotonic() > deadline:
                raise OracleError("conntrack -E did not subscribe within 5 s")
            time.sleep(0.02)

    def stop_listener(self):
        if self.listener is None:
            return
        if self.listener.poll() is None:
            self.listener.send_signal(signal.SIGTERM)
            try:
                self.listener.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.listener.kill()
                self.listener.wait(timeout=3)
        self._events_file.close()
        self.listener = None

    def replay(self, pcap: str, workdir: str, timeout: float = 30.0):
        cache = os.path.join(workdir, os.path.basename(pcap) + ".cache")
        _run(["tcpprep", f"--mac={CLIENT_MAC_INJ}", f"--pcap={pcap}", f"--cachefile={cache}"])
        # Plain tcpreplay: the pcaps already carry the tracker's MACs as destinations.
        # (tcpreplay-edit --enet-dmac 4.4.3 rewrites IPv6 frames to 33:33:00:00:00:02, which the
        # tracker then treats as multicast and never forwards.)
        self._ns(self.inj, "tcpreplay", f"--cachefile={cache}", "-i", "injc", "-I", "injs",
                 pcap, timeout=timeout)

    # -- what the tracker emits (NAT scenarios) ------------------------------------------------
    def start_captures(self, paths: dict[str, str], limit: float = 5.0):
        """tcpdump on injc / injs (keys "injc", "injs"), incoming frames only; returns once each
        says it is listening (the socket is bound: nothing sent after this is missed)."""
        for dev, path in paths.items():
            errpath = path + ".stderr"
            errf = open(errpath, "w+")
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.inj, "tcpdump", "-i", dev, "-Q", "in", "-n",
                 "-s", "0", "-U", "--immediate-mode", "-Z", "root", "-w", path],
                stdout=subprocess.DEVNULL, stderr=errf, stdin=subprocess.DEVNULL)
            self.captures.append((proc, errpath, errf))
        deadline = time.monotonic() + limit
        for proc, errpath, _f in self.captures:
            while True:
                with open(errpath) as f:
                    if "listening on" in f.read():
                        break
                if proc.poll() is not None:
                    with open(errpath) as f:
                        raise OracleError(f"tcpdump exited early: {f.read().strip()}")
                if time.monotonic() > deadline:
                    raise OracleError("tcpdump did not start listening within "
                                      f"{limit:.0f} s")
                time.sleep(0.02)

    def stop_captures(self) -> list[str]:
        """Stop the captures (SIGINT: tcpdump flushes and prints its statistics); return
        problems, e.g. packets the kernel dropped before tcpdump read them."""
        problems = []
        for proc, errpath, errf in self.captures:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=3)
                    problems.append("tcpdump did not stop on SIGINT")
            errf.close()
            mine = []
            with open(errpath) as f:
                for line in f:
                    w = line.split()
                    if "dropped by kernel" in line and w and w[0].isdigit() and int(w[0]) > 0:
                        mine.append(f"tcpdump: {line.strip()}")
            if not mine:
                os.unlink(errpath)
            problems += mine
        self.captures = []
        return problems

    def _chain_counters(self, chain: str) -> dict[str, int]:
        p = self._ns(self.trk, "nft", "list", "chain", "inet", "ctsdiff", chain)
        out: dict[str, int] = {}
        for line in p.stdout.splitlines():
            f = line.split()
            if len(f) >= 6 and f[0] == "ct" and f[1] == "state" and f[3] == "counter":
                out[f[2]] = out.get(f[2], 0) + int(f[5])
        return out

    def counters(self) -> str:
        """Packets per `ct state` seen in the tracker's forward hook, e.g. "invalid 2" (NAT
        scenarios: forward plus input hook)."""
        fwd = self._chain_counters("forward_ct")
        if not self.nat:
            return "".join(f"{k} {v}\n" for k, v in fwd.items())
        inp = self._chain_counters("input_ct")
        out = [f"{k} {fwd.get(k, 0) + inp.get(k, 0)}\n" for k in fwd]
        out += [f"# forward {k} {fwd.get(k, 0)}, input {k} {inp.get(k, 0)}\n" for k in fwd]
        return "".join(out)

    def stats(self) -> str:
        """`conntrack -S` summed over CPUs, one "name value" a line (insert_failed, drop, ...)."""
        p = self._ns(self.trk, "conntrack", "-S")
        tot: dict[str, int] = {}
        for line in p.stdout.splitlines():
            for kv in line.split()[1:]:
                k, _, v = kv.partition("=")
                if v.isdigit():
                    tot[k] = tot.get(k, 0) + int(v)
        return "".join(f"{k} {v}\n" for k, v in tot.items())

    def table(self) -> str:
        out = []
        for fam in ("ipv4", "ipv6"):
            p = self._ns(self.trk, "conntrack", "-L", "-o", "extended", "-f", fam)
            out.append(p.stdout)
        return "".join(out)


def run_oracle(pcap: str, events_path: str, table_path: str,
               sysctls: dict[str, str] | None = None, tag: str | None = None,
               settle: float = 0.15, counters_path: str | None = None,
               nat_nft: str | None = None, capture_client: str | None = None,
               capture_server: str | None = None, stats_path: str | None = None) -> None:
    """Replay pcap through the kernel; write the event stream and the final table (and,
    optionally, how many forwarded packets had each ct state: new/established/related/invalid).

    nat_nft (an nft ruleset text): a NAT scenario (see the module docstring); capture_client /
    capture_server: where the frames the tracker emits on each side are written (Ethernet pcap),
    stats_path: `conntrack -S` totals."""
    with tempfile.TemporaryDirectory(prefix="ctsdiff-") as wd, Oracle(tag) as o:
        o.setup(sysctls, nat_nft)
        o.start_listener(events_path)
        caps = {}
        if capture_client:
            caps["injc"] = capture_client
        if capture_server:
            caps["injs"] = capture_server
        if caps:
            o.start_captures(caps)
        o.replay(pcap, wd)
        time.sleep(max(settle, 0.3) if caps else settle)  # last events and emitted frames
        tbl = o.table()
        o.stop_listener()
        problems = o.stop_captures()
        if problems:
            raise OracleError("; ".join(problems))
        with open(table_path, "w") as f:
            f.write(tbl)
        if counters_path:
            with open(counters_path, "w") as f:
                f.write(o.counters())
        if stats_path:
            with open(stats_path, "w") as f:
                f.write(o.stats())


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pcap", required=True)
    ap.add_argument("--events", required=True, help="output: conntrack -E stream")
    ap.add_argument("--table", required=True, help="output: conntrack -L (ipv4 then ipv6)")
    ap.add_argument("--counters", default=None, help="output: packets per ct state")
    ap.add_argument("--sysctl", action="append", default=[],
                    help="NAME=VALUE inside the tracker namespace (net.netfilter. implied)")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--nat-nft", default=None, help="NAT scenario: nft ruleset file")
    ap.add_argument("--capture-client", default=None, help="output: frames emitted on injc")
    ap.add_argument("--capture-server", default=None, help="output: frames emitted on injs")
    ap.add_argument("--stats", default=None, help="output: conntrack -S totals")
    a = ap.parse_args(argv)
    nat_nft = None
    if a.nat_nft:
        with open(a.nat_nft) as f:
            nat_nft = f.read()
    if os.geteuid() != 0:
        print("kernel_oracle: must run as root", file=sys.stderr)
        return 2
    sysctls = dict(s.split("=", 1) for s in a.sysctl)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run_oracle(a.pcap, a.events, a.table, sysctls, a.tag, counters_path=a.counters,
                   nat_nft=nat_nft, capture_client=a.capture_client,
                   capture_server=a.capture_server, stats_path=a.stats)
    except (OracleError, subprocess.TimeoutExpired) as e:
        print(f"kernel_oracle: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kernel_oracle: interrupted (namespaces removed)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
