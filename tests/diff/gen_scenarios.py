#!/usr/bin/python3
"""Generate the differential-test scenarios: one Ethernet pcap per scenario plus manifest.json.

Usage: /usr/bin/python3 gen_scenarios.py OUTDIR [--only NAME[,NAME]] [--list]

Needs scapy (python3-scapy, installed for /usr/bin/python3). Output is deterministic: fixed
timestamps (starting at T0), fixed sequence numbers, IP ids and ports.

Addresses: client net 10.231.1.0/24 (client 10.231.1.2), server net 10.231.2.0/24 (server
10.231.2.2), a router 10.231.2.254 that sends ICMP errors; IPv6 fd00:231:1::2 / fd00:231:2::2 and
router fd00:231:2::fe. Client-side frames carry source MAC 02:00:00:00:01:02 (the oracle sends
them out of the client-side veth), server-side frames 02:00:00:00:02:02; destination MACs are the
tracker's interfaces (…:01:01 and …:02:01).

manifest.json: {"version": 1, "scenarios": [{"name", "file", "description", "sysctls": {name:
value}, "long": bool, "duration": seconds, "packets": n}]}. sysctls are net.netfilter names as
set inside the oracle's tracker namespace (e.g. "nf_conntrack_tcp_loose": "0").

NAT scenarios (names nat_* for IPv4, nat6_* for IPv6) also carry "nat": {"rules": [...], "random":
[...], "same_address": [...], "nat_dropped": n, "nft": "NAME.nft", "toml": "NAME.nat.toml"}: the
rules are declared once (nat_rules.Rule) and both files are derived from them here. Flows whose
translated port / ICMP id the kernel draws at random ("random") only send original-direction
packets (no reply can be addressed to a port nobody knows before the run).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import struct
import sys

from scapy.all import (  # type: ignore
    ICMP, IP, TCP, UDP, Ether, ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest,
    ICMPv6TimeExceeded, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
    PadN, Raw, fragment, fragment6, wrpcap)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nat_rules  # noqa: E402
import pktutil  # noqa: E402
from nat_rules import NatSpec, Random, Rule, kernel_pick_address  # noqa: E402

T0 = 1700000000.0
GAP = 0.010  # default inter-packet gap, seconds

CLI_MAC, TRKC_MAC = "02:00:00:00:01:02", "02:00:00:00:01:01"
SRV_MAC, TRKS_MAC = "02:00:00:00:02:02", "02:00:00:00:02:01"

CLI4, SRV4, RTR4, CLI4B, SRV4B, CRTR4 = ("10.231.1.2", "10.231.2.2", "10.231.2.254",
                                         "10.231.1.3", "10.231.2.3", "10.231.1.254")
CLI6, SRV6, RTR6, CLI6B = "fd00:231:1::2", "fd00:231:2::2", "fd00:231:2::fe", "fd00:231:1::3"


class Scenario:
    def __init__(self, name: str, desc: str, sysctls: dict | None = None):
        self.name, self.desc = name, desc
        self.sysctls = {k: str(v) for k, v in (sysctls or {}).items()}
        self.frames = []
        self.t = T0
        self.first = True

    def _add(self, client_side: bool, l3, gap: float | None):
        if not self.first:
            self.t += GAP if gap is None else gap
        self.first = False
        src, dst = (CLI_MAC, TRKC_MAC) if client_side else (SRV_MAC, TRKS_MAC)
        if isinstance(l3, (bytes, bytearray)):
            etype = 0x86DD if (l3[0] >> 4) == 6 else 0x0800
            f = Ether(src=src, dst=dst, type=etype) / Raw(bytes(l3))
        else:
            f = Ether(src=src, dst=dst) / l3
        raw = bytes(f)
        if len(raw) < 60:  # Ethernet minimum frame: pad like a real NIC would
            raw += b"\x00" * (60 - len(raw))
        f = Ether(raw)
        f.time = round(self.t, 6)
        self.frames.append(f)

    def c(self, l3, gap: float | None = None):
        """Frame entering the tracker on the client side."""
        self._add(True, l3, gap)

    def s(self, l3, gap: float | None = None):
        """Frame entering the tracker on the server side (server or router)."""
        self._add(False, l3, gap)

    def wait(self, secs: float):
        self.t += secs

    @property
    def long(self) -> bool:
        return self.t - T0 > 2.0


def ip4(src, dst, **kw):
    return IP(src=src, dst=dst, **kw)


def ip6(src, dst, **kw):
    return IPv6(src=src, dst=dst, **kw)


class Tcp:
    """One TCP connection between client and server with automatic sequence numbers."""

    def __init__(self, sc: Scenario, v6=False, sport=40000, dport=80, cisn=1000, sisn=700000,
                 cwin=64240, swin=65160, caddr=None, saddr=None):
        self.sc, self.v6 = sc, v6
        self.sport, self.dport = sport, dport
        self.caddr = caddr or (CLI6 if v6 else CLI4)
        self.saddr = saddr or (SRV6 if v6 else SRV4)
        self.cwin, self.swin = cwin, swin
        self.reset(cisn, sisn)

    def reset(self, cisn, sisn):
        self.c_nxt, self.s_nxt = cisn, sisn

    def l3(self, from_client: bool):
        src, dst = (self.caddr, self.saddr) if from_client else (self.saddr, self.caddr)
        return ip6(src, dst) if self.v6 else ip4(src, dst)

    def seg(self, from_client: bool, flags: str, data: bytes = b"", seq=None, ack=None, win=None,
            opts=None, advance=True, chksum=None, gap=None, build_only=False):
        nxt = self.c_nxt if from_client else self.s_nxt
        other = self.s_nxt if from_client else self.c_nxt
        seq = nxt if seq is None else seq
        if ack is None:
            ack = other if "A" in flags else 0
        if win is None:
            win = self.cwin if from_client else self.swin
        sp, dp = (self.sport, self.dport) if from_client else (self.dport, self.sport)
        t = TCP(sport=sp, dport=dp, flags=flags, seq=seq % 2**32, ack=ack % 2**32, window=win,
                options=opts or [])
        if chksum is not None:
            t.chksum = chksum
        p = self.l3(from_client) / t
        if data:
            p = p / Raw(data)
        if advance:
            end = seq + len(data) + ("S" in flags) + ("F" in flags)
            if from_client:
                self.c_nxt = max(self.c_nxt, end)
            else:
                self.s_nxt = max(self.s_nxt, end)
        if not build_only:
            (self.sc.c if from_client else self.sc.s)(p, gap)
        return p

    def C(self, flags, data=b"", **kw):
        return self.seg(True, flags, data, **kw)

    def S(self, flags, data=b"", **kw):
        return self.seg(False, flags, data, **kw)

    def handshake(self, copts=None, sopts=None, swin_syn=None):
        self.C("S", opts=copts)
        self.S("SA", opts=sopts, win=swin_syn)
        self.C("A")

    def client_close(self):
        self.C("FA")
        self.S("A")
        self.S("FA")
        self.C("A")


REQ = b"GET / HTTP/1.1\r\nHost: server\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
MSS = ("MSS", 1460)


def quote4(pkt) -> bytes:
    """The quoted original datagram of an ICMP error (whole packet, as Linux quotes ≤ 576 B)."""
    return bytes(pkt)[:548]


def quote6(pkt) -> bytes:
    return bytes(pkt)[:1184]


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------
SCENARIOS = []


def scenario(name, desc, sysctls=None, nat: NatSpec | None = None):
    def deco(fn):
        SCENARIOS.append((name, desc, sysctls, fn, nat))
        return fn
    return deco


# --- TCP basics ---
@scenario("tcp_syn_only", "a single SYN: SYN_SENT [UNREPLIED], 120 s")
def _(sc):
    Tcp(sc).C("S", opts=[MSS])


@scenario("tcp_syn_retrans", "SYN sent three times (identical) 1.6 s apart: SYN_SENT; whether the "
          "repeats refresh the timer shows in the final timeout")
def _(sc):
    t = Tcp(sc)
    p = t.C("S", opts=[MSS])
    sc.c(p, gap=1.6)
    sc.c(p, gap=1.6)


@scenario("tcp_syn_recv", "SYN, SYN+ACK (no final ACK): SYN_RECV")
def _(sc):
    t = Tcp(sc)
    t.C("S", opts=[MSS])
    t.S("SA", opts=[MSS])


@scenario("tcp_handshake", "three-way handshake: ESTABLISHED [ASSURED]")
def _(sc):
    Tcp(sc).handshake([MSS], [MSS])


@scenario("tcp_handshake_data", "handshake, request and response with ACKs")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("A")
    t.S("PA", RESP)
    t.C("A")


@scenario("tcp_data_no_acks", "handshake, then three client data segments the server never "
          "acknowledges (unacknowledged data)")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    for i in range(3):
        t.C("PA", bytes([65 + i]) * 500)


@scenario("tcp_custom_timeout", "handshake with nf_conntrack_tcp_timeout_established=3600",
          {"nf_conntrack_tcp_timeout_established": 3600})
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("A")


# --- TCP close ---
@scenario("tcp_close_client_first", "client FIN, ACK, server FIN, ACK: TIME_WAIT")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.C("A")
    t.client_close()


@scenario("tcp_close_server_first", "server FIN, ACK, client FIN, ACK: TIME_WAIT")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.S("FA")
    t.C("A")
    t.C("FA")
    t.S("A")


@scenario("tcp_close_simultaneous", "both FINs cross (neither acknowledges the other's), then "
          "both ACKs")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("FA")
    t.S("FA", ack=t.c_nxt - 1)
    t.C("A")
    t.S("A")


@scenario("tcp_half_close", "client FIN, server ACK (CLOSE_WAIT), server keeps sending data "
          "which the client acknowledges")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.C("FA")
    t.S("A")
    t.S("PA", RESP)
    t.C("A")


# --- TCP RST in every state, from each side ---
def _prefix(t: Tcp, state: str):
    if state == "syn_sent":
        t.C("S", opts=[MSS])
        return
    if state == "syn_recv":
        t.C("S", opts=[MSS])
        t.S("SA", opts=[MSS])
        return
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.C("A")
    if state == "established":
        return
    t.C("FA")
    if state == "fin_wait":
        return
    t.S("A")
    if state == "close_wait":
        return
    t.S("FA")
    if state == "last_ack":
        return
    t.C("A")  # time_wait


for _state in ("syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack",
               "time_wait"):
    for _who in ("client", "server"):
        def _mk(state=_state, who=_who):
            def fn(sc):
                t = Tcp(sc)
                _prefix(t, state)
                if who == "client":
                    t.C("R" if state == "syn_sent" else "RA", ack=None if state != "syn_sent"
                        else 0)
                elif state == "syn_sent":
                    t.S("RA", seq=0)  # what a host answers to a SYN on a closed port
                else:
                    t.S("RA")
            return fn
        scenario(f"tcp_rst_{_who}_{_state}",
                 f"RST (exact sequence number) from the {_who} in {_state.upper()}")(_mk())


@scenario("tcp_rst_inexact_established", "in ESTABLISHED the client sends a RST with an in-window "
          "but not exact sequence number, the server answers with a challenge ACK, then the "
          "client sends the exact RST")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.C("A")
    t.C("RA", seq=t.c_nxt + 1000, advance=False)
    t.S("A")
    t.C("R", ack=0)


@scenario("tcp_rst_only_reply", "mid-stream pickup (client data) whose only reply is a server "
          "RST: the entry is destroyed at once")
def _(sc):
    t = Tcp(sc)
    t.C("PA", REQ)
    t.S("R", ack=0)


# --- TCP window tracking ---
@scenario("tcp_out_of_window", "established; client segment (data+FIN) with a sequence number "
          "10 MB beyond the window is invalid (state stays ESTABLISHED); normal traffic follows")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("A")
    t.C("FPA", b"X" * 100, seq=t.c_nxt + 10_000_000, advance=False)
    t.S("PA", RESP)
    t.C("A")


@scenario("tcp_out_of_window_liberal", "tcp_out_of_window with nf_conntrack_tcp_be_liberal=1: "
          "the far segment is accepted and its FIN moves the state",
          {"nf_conntrack_tcp_be_liberal": 1})
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("A")
    t.C("FPA", b"X" * 100, seq=t.c_nxt + 10_000_000, advance=False)


@scenario("tcp_old_retransmission", "server window 1000: client sends 4 x 1000 bytes (each "
          "acked), then retransmits the first segment with a FIN flag (old retransmission, "
          "ignored: state stays ESTABLISHED)")
def _(sc):
    t = Tcp(sc, swin=1000)
    t.handshake([MSS], [MSS])
    first = t.c_nxt
    for i in range(4):
        t.C("PA", bytes([97 + i]) * 1000)
        t.S("A")
    t.C("FPA", b"a" * 1000, seq=first, advance=False)


@scenario("tcp_retrans_3", "established; one data segment sent, then retransmitted 3 times "
          "identically (no ACK from the server)")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.C("A")
    p = t.C("PA", b"Z" * 200)
    for _i in range(3):
        sc.c(p, gap=0.05)


@scenario("tcp_retrans_3_acked", "like tcp_retrans_3, then the server acknowledges the data")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    p = t.C("PA", b"Z" * 200)
    for _i in range(3):
        sc.c(p, gap=0.05)
    t.S("A")


@scenario("tcp_ack_unseen_data", "established; the client ACKs (with FIN) 100000 bytes the server "
          "never sent: invalid, state stays ESTABLISHED")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.C("FA", ack=t.s_nxt + 100000, advance=False)
    t.C("A")


@scenario("tcp_zero_window", "established; the server advertises a zero window")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("A", win=0)


@scenario("tcp_wscale_both", "window scaling 7 on both sides; server SYN+ACK window 1000; the "
          "client later advertises 502 (x128); server sends 1400 bytes then FIN (in the scaled "
          "window: FIN_WAIT)")
def _(sc):
    t = Tcp(sc, cwin=502, swin=501)
    t.C("S", opts=[MSS, ("SAckOK", b""), ("WScale", 7)], win=64240)
    t.S("SA", opts=[MSS, ("SAckOK", b""), ("WScale", 7)], win=1000)
    t.C("A")
    t.C("PA", REQ)
    t.S("A")
    t.S("PA", b"D" * 1400)
    t.S("FA")


@scenario("tcp_wscale_one_side", "same packets as tcp_wscale_both but the server sends no window "
          "scale: scaling is off, the client's 502 is 502 bytes, the server's FIN lies beyond the "
          "window (state stays ESTABLISHED)")
def _(sc):
    t = Tcp(sc, cwin=502, swin=501)
    t.C("S", opts=[MSS, ("SAckOK", b""), ("WScale", 7)], win=64240)
    t.S("SA", opts=[MSS, ("SAckOK", b"")], win=1000)
    t.C("A")
    t.C("PA", REQ)
    t.S("A")
    t.S("PA", b"D" * 1400)
    t.S("FA")


@scenario("tcp_sack_valid", "SACK permitted both ways; a client segment is lost, the server ACKs "
          "with a valid SACK block, the client retransmits, then FIN from the server")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS, ("SAckOK", b"")], [MSS, ("SAckOK", b"")])
    a = t.c_nxt
    t.C("PA", b"1" * 100)
    t.C("PA", b"2" * 100, gap=0.005)   # "lost": the server never sees it … but the tracker does
    t.C("PA", b"3" * 100, gap=0.005)
    t.S("A", ack=a + 100, opts=[("SAck", (a + 200, a + 300))])
    t.C("PA", b"2" * 100, seq=a + 100, advance=False)
    t.S("A")
    t.S("FA")


@scenario("tcp_sack_beyond_window", "SACK permitted; the server sends FIN+ACK with a SACK block "
          "beyond anything the client sent: invalid, state stays ESTABLISHED")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS, ("SAckOK", b"")], [MSS, ("SAckOK", b"")])
    t.C("PA", b"1" * 100)
    far = t.c_nxt + 200000
    t.S("FA", ack=t.c_nxt - 100, opts=[("SAck", (far, far + 100))], advance=False)
    t.S("A")


# --- TCP pickup / odd openings ---
@scenario("tcp_midstream_loose", "no handshake seen: client data, server ACK+data, client ACK "
          "(nf_conntrack_tcp_loose=1, default)")
def _(sc):
    t = Tcp(sc, cisn=123456, sisn=987654)
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.C("A")
    t.C("PA", REQ)
    t.S("A")


@scenario("tcp_midstream_noloose", "tcp_midstream_loose with nf_conntrack_tcp_loose=0: no entry",
          {"nf_conntrack_tcp_loose": 0})
def _(sc):
    t = Tcp(sc, cisn=123456, sisn=987654)
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.C("A")
    t.C("PA", REQ)
    t.S("A")


@scenario("tcp_midstream_server_first", "pickup where the first packet seen comes from the server "
          "(the server becomes the original direction)")
def _(sc):
    t = Tcp(sc, cisn=123456, sisn=987654)
    t.S("PA", RESP)
    t.C("A")
    t.S("PA", RESP)
    t.C("A")


@scenario("tcp_simultaneous_open", "both sides send SYN, then both SYN+ACK, then ACK")
def _(sc):
    t = Tcp(sc)
    c0, s0 = t.c_nxt, t.s_nxt
    t.C("S", opts=[MSS])
    t.S("S", opts=[MSS])
    t.S("SA", seq=s0, ack=c0 + 1, opts=[MSS])
    t.C("SA", seq=c0, ack=s0 + 1, opts=[MSS])
    t.C("A")
    t.S("A")


@scenario("tcp_reopen_time_wait", "full close to TIME_WAIT, then the client reuses the ports "
          "with a new SYN (higher ISN): DESTROY, NEW, handshake")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.C("A")
    t.client_close()
    t.reset(t.c_nxt + 500000, 3000000)
    t.handshake([MSS], [MSS])


@scenario("tcp_reopen_close", "handshake, client RST (CLOSE), then a new SYN on the same ports: "
          "DESTROY, NEW, handshake")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("RA")
    t.reset(t.c_nxt + 500000, 3000000)
    t.handshake([MSS], [MSS])


@scenario("tcp_synack_first", "a SYN+ACK from the server is the first packet (creates nothing), "
          "then the client's ACK is picked up mid-stream")
def _(sc):
    t = Tcp(sc)
    t.c_nxt += 1
    t.S("SA", opts=[MSS])
    t.C("A")


@scenario("tcp_out_of_window_close", "an assured flow: the client's FIN and then the server's RST "
          "both far out of window (invalid); the kernel lowers the timeout to 300 s "
          "(nf_tcp_handle_invalid) and keeps ESTABLISHED")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    t.C("FA", seq=t.c_nxt + 100000000, advance=False)
    t.S("R", seq=t.s_nxt + 100000000, advance=False)


@scenario("tcp_bare_fin", "a FIN without ACK as the first packet of one flow (invalid), and a FIN "
          "without ACK inside an established flow (invalid: stays ESTABLISHED)")
def _(sc):
    Tcp(sc, sport=40001).C("F")
    t = Tcp(sc, sport=40002)
    t.handshake([MSS], [MSS])
    t.C("F", ack=0)


@scenario("tcp_bad_flags_new", "first packets with invalid flag sets (SYN+FIN, SYN+RST, none, "
          "FIN+PSH+URG, SYN+FIN+ACK), one flow each: no entries")
def _(sc):
    for i, fl in enumerate(["SF", "SR", "", "FPU", "SFA"]):
        Tcp(sc, sport=41000 + i).C(fl, ack=0 if "A" not in fl else 5)


@scenario("tcp_bad_flags_established", "invalid flag sets inside an established flow (none, "
          "SYN+FIN, FIN+PSH+URG, SYN+RST): state stays ESTABLISHED")
def _(sc):
    t = Tcp(sc)
    t.handshake([MSS], [MSS])
    for fl in ["", "SF", "FPU", "SR"]:
        t.C(fl, ack=0, advance=False)
    t.S("A")


# --- UDP ---
@scenario("udp_oneway", "three UDP datagrams client to server, no reply: [UNREPLIED], 30 s")
def _(sc):
    for i in range(3):
        sc.c(ip4(CLI4, SRV4) / UDP(sport=50000, dport=53) / Raw(b"q%d" % i))


@scenario("udp_reply", "UDP request, reply, request (within 2 s): seen reply, not assured, 30 s")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50000, dport=53) / Raw(b"query"))
    sc.s(ip4(SRV4, CLI4) / UDP(sport=53, dport=50000) / Raw(b"answer"))
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50000, dport=53) / Raw(b"query2"))


@scenario("udp_stream", "UDP request and reply, then a packet 2.3 s after creation: stream, "
          "ASSURED, 120 s")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50000, dport=5004) / Raw(b"a"))
    sc.s(ip4(SRV4, CLI4) / UDP(sport=5004, dport=50000) / Raw(b"b"))
    sc.wait(2.3)
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50000, dport=5004) / Raw(b"c"))


@scenario("udp_zero_checksum", "IPv4 UDP with checksum 0 (no checksum: valid) creates an entry")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50000, dport=53, chksum=0) / Raw(b"nochecksum"))


@scenario("udp_two_flows", "two UDP flows from the same client (different source ports), one "
          "answered")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50000, dport=53) / Raw(b"q1"))
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50001, dport=53) / Raw(b"q2"))
    sc.s(ip4(SRV4, CLI4) / UDP(sport=53, dport=50001) / Raw(b"a2"))


# --- ICMP ---
@scenario("icmp_echo_reply", "ICMP echo request and reply")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / ICMP(type=8, id=0x1234, seq=1) / Raw(b"ping" * 8))
    sc.s(ip4(SRV4, CLI4) / ICMP(type=0, id=0x1234, seq=1) / Raw(b"ping" * 8))


@scenario("icmp_echo_noreply", "ICMP echo requests (two sequence numbers, same id) without reply")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / ICMP(type=8, id=0x4321, seq=1) / Raw(b"ping" * 8))
    sc.c(ip4(CLI4, SRV4) / ICMP(type=8, id=0x4321, seq=2) / Raw(b"ping" * 8))


@scenario("icmp_timestamp", "ICMP timestamp request and reply")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / ICMP(type=13, id=77, seq=1, ts_ori=1000, ts_rx=0, ts_tx=0))
    sc.s(ip4(SRV4, CLI4) / ICMP(type=14, id=77, seq=1, ts_ori=1000, ts_rx=2000, ts_tx=2000))


@scenario("icmp_port_unreach_udp", "UDP to the server, which answers ICMP port unreachable "
          "(RELATED, reply direction): only the UDP entry, still [UNREPLIED]")
def _(sc):
    u = ip4(CLI4, SRV4) / UDP(sport=50000, dport=9999) / Raw(b"hello?")
    sc.c(u)
    sc.s(ip4(SRV4, CLI4) / ICMP(type=3, code=3) / Raw(quote4(u)))


@scenario("icmp_time_exceeded_tcp", "TCP SYN; a router on the server side answers ICMP time "
          "exceeded to the client (RELATED); then the handshake completes")
def _(sc):
    t = Tcp(sc)
    syn = t.C("S", opts=[MSS])
    sc.s(ip4(RTR4, CLI4) / ICMP(type=11, code=0) / Raw(quote4(syn)))
    t.S("SA", opts=[MSS])
    t.C("A")


@scenario("icmp_error_from_client", "UDP exchange, then the client sends ICMP port unreachable "
          "about the server's reply (RELATED, original direction); and a client-side router sends "
          "time exceeded to the server about a server TCP segment")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50000, dport=53) / Raw(b"query"))
    r = ip4(SRV4, CLI4) / UDP(sport=53, dport=50000) / Raw(b"answer")
    sc.s(r)
    sc.c(ip4(CLI4, SRV4) / ICMP(type=3, code=3) / Raw(quote4(r)))
    t = Tcp(sc, sport=40010)
    t.handshake([MSS], [MSS])
    seg = t.S("PA", RESP)
    sc.c(ip4(CRTR4, SRV4) / ICMP(type=11, code=0) / Raw(quote4(seg)))


@scenario("icmp_error_nomatch", "ICMP port unreachable quoting a UDP packet no entry matches "
          "(invalid, no entry); an unrelated UDP flow exists")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50000, dport=53) / Raw(b"query"))
    ghost = ip4(CLI4, SRV4) / UDP(sport=50001, dport=53) / Raw(b"never sent")
    sc.s(ip4(SRV4, CLI4) / ICMP(type=3, code=3) / Raw(quote4(ghost)))


@scenario("icmp_error_outer_dst_mismatch", "TCP SYN; a router sends time exceeded quoting the SYN "
          "to 10.231.1.3 instead of the client (outer destination mismatch: invalid)")
def _(sc):
    t = Tcp(sc)
    syn = t.C("S", opts=[MSS])
    sc.s(ip4(RTR4, CLI4B) / ICMP(type=11, code=0) / Raw(quote4(syn)))


# --- generic ---
@scenario("generic_proto253", "IP protocol 253 (experimental; generic tracker): client packet, "
          "server reply, client packet")
def _(sc):
    sc.c(ip4(CLI4, SRV4, proto=253) / Raw(b"\x01" * 20))
    sc.s(ip4(SRV4, CLI4, proto=253) / Raw(b"\x02" * 20))
    sc.c(ip4(CLI4, SRV4, proto=253) / Raw(b"\x03" * 20))


@scenario("generic_proto253_oneway", "IP protocol 253, one direction only")
def _(sc):
    sc.c(ip4(CLI4, SRV4, proto=253) / Raw(b"\x01" * 20))
    sc.c(ip4(CLI4, SRV4, proto=253) / Raw(b"\x01" * 20))


# --- IPv4 fragments ---
@scenario("ipv4_frag_udp", "UDP datagram of 3000 bytes in three IPv4 fragments (reassembled by "
          "conntrack defrag), unfragmented reply")
def _(sc):
    big = ip4(CLI4, SRV4, id=0x4242) / UDP(sport=50000, dport=4000) / Raw(b"F" * 3000)
    for f in fragment(big, fragsize=1208):
        sc.c(f, gap=0.002)
    sc.s(ip4(SRV4, CLI4) / UDP(sport=4000, dport=50000) / Raw(b"ok"))


@scenario("ipv4_frag_udp_reversed", "the three fragments of a UDP datagram arrive last first")
def _(sc):
    big = ip4(CLI4, SRV4, id=0x4343) / UDP(sport=50000, dport=4000) / Raw(b"R" * 3000)
    for f in reversed(fragment(big, fragsize=1208)):
        sc.c(f, gap=0.002)


# --- malformed ---
@scenario("tcp_bad_checksum", "a SYN with a bad TCP checksum (invalid, no entry); a second flow "
          "completes its handshake, then a FIN with a bad checksum (ignored: stays ESTABLISHED)")
def _(sc):
    Tcp(sc, sport=40001).C("S", opts=[MSS], chksum=0xdead)
    t = Tcp(sc, sport=40002)
    t.handshake([MSS], [MSS])
    t.C("FA", chksum=0xbeef, advance=False)


@scenario("udp_bad_checksum", "UDP with a bad checksum (invalid, no entry); a good UDP flow too")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50000, dport=53, chksum=0x1234) / Raw(b"bad"))
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50001, dport=53) / Raw(b"good"))


@scenario("tcp_truncated_header", "IPv4 says TCP but carries only 12 bytes of TCP header "
          "(invalid); then a valid SYN on another port")
def _(sc):
    full = bytes(ip4(CLI4, SRV4) / TCP(sport=40001, dport=80, flags="S", seq=1000))
    ip = IP(full[:20])
    trunc = ip4(CLI4, SRV4, proto=6, id=ip.id) / Raw(full[20:32])
    sc.c(trunc)
    Tcp(sc, sport=40002).C("S", opts=[MSS])


@scenario("tcp_doff_lt5", "TCP header with data offset 4 (< 5: invalid); then a valid SYN on "
          "another port")
def _(sc):
    sc.c(ip4(CLI4, SRV4) / TCP(sport=40001, dport=80, flags="S", seq=1000, dataofs=4))
    Tcp(sc, sport=40002).C("S", opts=[MSS])


@scenario("ipv4_bad_header_checksum", "a SYN with a bad IPv4 header checksum (dropped by IP, no "
          "entry); then a valid SYN on another port")
def _(sc):
    sc.c(ip4(CLI4, SRV4, chksum=0x0bad) / TCP(sport=40001, dport=80, flags="S", seq=1000))
    Tcp(sc, sport=40002).C("S", opts=[MSS])


# --- IPv6 ---
@scenario("v6_tcp_handshake_data", "IPv6: handshake, request, response")
def _(sc):
    t = Tcp(sc, v6=True)
    t.handshake([("MSS", 1440)], [("MSS", 1440)])
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.C("A")


@scenario("v6_tcp_close", "IPv6: handshake and client-first close: TIME_WAIT")
def _(sc):
    t = Tcp(sc, v6=True)
    t.handshake([("MSS", 1440)], [("MSS", 1440)])
    t.client_close()


@scenario("v6_tcp_rst_server_syn_sent", "IPv6: SYN answered by RST")
def _(sc):
    t = Tcp(sc, v6=True)
    t.C("S", opts=[("MSS", 1440)])
    t.S("RA")


@scenario("v6_tcp_rst_established", "IPv6: handshake, client RST: CLOSE")
def _(sc):
    t = Tcp(sc, v6=True)
    t.handshake([("MSS", 1440)], [("MSS", 1440)])
    t.C("RA")


@scenario("v6_tcp_midstream", "IPv6: mid-stream pickup")
def _(sc):
    t = Tcp(sc, v6=True, cisn=55555, sisn=77777)
    t.C("PA", REQ)
    t.S("PA", RESP)
    t.C("A")


@scenario("v6_udp_oneway", "IPv6 UDP without reply")
def _(sc):
    sc.c(ip6(CLI6, SRV6) / UDP(sport=50000, dport=53) / Raw(b"q1"))
    sc.c(ip6(CLI6, SRV6) / UDP(sport=50000, dport=53) / Raw(b"q2"))


@scenario("v6_udp_reply", "IPv6 UDP with reply")
def _(sc):
    sc.c(ip6(CLI6, SRV6) / UDP(sport=50000, dport=53) / Raw(b"query"))
    sc.s(ip6(SRV6, CLI6) / UDP(sport=53, dport=50000) / Raw(b"answer"))


@scenario("v6_udp_bad_checksum", "IPv6 UDP with a bad checksum (invalid) and one with checksum 0 "
          "(conntrack accepts it: entry, though IPv6 forbids it); a good flow too")
def _(sc):
    sc.c(ip6(CLI6, SRV6) / UDP(sport=50000, dport=53, chksum=0x1234) / Raw(b"bad"))
    sc.c(ip6(CLI6, SRV6) / UDP(sport=50001, dport=53, chksum=0) / Raw(b"zero"))
    sc.c(ip6(CLI6, SRV6) / UDP(sport=50002, dport=53) / Raw(b"good"))


@scenario("v6_icmp_echo_reply", "ICMPv6 echo request and reply")
def _(sc):
    sc.c(ip6(CLI6, SRV6) / ICMPv6EchoRequest(id=0x77, seq=1, data=b"ping6"))
    sc.s(ip6(SRV6, CLI6) / ICMPv6EchoReply(id=0x77, seq=1, data=b"ping6"))


@scenario("v6_icmp_echo_noreply", "ICMPv6 echo request without reply")
def _(sc):
    sc.c(ip6(CLI6, SRV6) / ICMPv6EchoRequest(id=0x78, seq=1, data=b"ping6"))


@scenario("v6_icmp_port_unreach_udp", "IPv6 UDP answered by ICMPv6 port unreachable (RELATED)")
def _(sc):
    u = ip6(CLI6, SRV6) / UDP(sport=50000, dport=9999) / Raw(b"hello?")
    sc.c(u)
    sc.s(ip6(SRV6, CLI6) / ICMPv6DestUnreach(code=4) / Raw(quote6(u)))


@scenario("v6_icmp_time_exceeded_tcp", "IPv6 SYN, router sends ICMPv6 time exceeded to the client "
          "(RELATED), handshake completes")
def _(sc):
    t = Tcp(sc, v6=True)
    syn = t.C("S", opts=[("MSS", 1440)])
    sc.s(ip6(RTR6, CLI6) / ICMPv6TimeExceeded(code=0) / Raw(quote6(syn)))
    t.S("SA", opts=[("MSS", 1440)])
    t.C("A")


@scenario("v6_icmp_error_nomatch", "ICMPv6 port unreachable quoting a packet no entry matches, "
          "and one with the outer destination not the client (both invalid)")
def _(sc):
    sc.c(ip6(CLI6, SRV6) / UDP(sport=50000, dport=53) / Raw(b"query"))
    ghost = ip6(CLI6, SRV6) / UDP(sport=50001, dport=53) / Raw(b"never sent")
    sc.s(ip6(SRV6, CLI6) / ICMPv6DestUnreach(code=4) / Raw(quote6(ghost)))
    real = ip6(CLI6, SRV6) / UDP(sport=50000, dport=53) / Raw(b"query")
    sc.s(ip6(SRV6, CLI6B) / ICMPv6DestUnreach(code=4) / Raw(quote6(real)))


@scenario("v6_exthdr_udp", "IPv6 UDP behind a destination-options extension header, with reply")
def _(sc):
    sc.c(ip6(CLI6, SRV6) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 4)]) /
         UDP(sport=50000, dport=53) / Raw(b"query"))
    sc.s(ip6(SRV6, CLI6) / UDP(sport=53, dport=50000) / Raw(b"answer"))


@scenario("v6_exthdr_tcp", "IPv6 TCP handshake with a hop-by-hop options header on the SYN and a "
          "destination-options header on the final ACK")
def _(sc):
    t = Tcp(sc, v6=True)
    syn = t.C("S", opts=[("MSS", 1440)], build_only=True)
    sc.c(ip6(CLI6, SRV6) / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00" * 4)]) / syn[TCP])
    t.S("SA", opts=[("MSS", 1440)])
    ack = t.C("A", build_only=True)
    sc.c(ip6(CLI6, SRV6) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 4)]) / ack[TCP])


@scenario("v6_frag_udp", "IPv6 UDP datagram of 3000 bytes in fragments (reassembled), with reply")
def _(sc):
    big = ip6(CLI6, SRV6) / IPv6ExtHdrFragment(id=0x5151) / UDP(sport=50000, dport=4000) / \
        Raw(b"F" * 3000)
    for f in fragment6(big, 1280):
        sc.c(f, gap=0.002)
    sc.s(ip6(SRV6, CLI6) / UDP(sport=4000, dport=50000) / Raw(b"ok"))


@scenario("v6_generic_proto253", "IPv6 next header 253 (generic tracker), with reply")
def _(sc):
    sc.c(ip6(CLI6, SRV6, nh=253) / Raw(b"\x01" * 20))
    sc.s(ip6(SRV6, CLI6, nh=253) / Raw(b"\x02" * 20))


# ---------------------------------------------------------------------------------------------
# NAT scenarios: the tracker forwards with the NAT rules of nat_rules.Rule objects (nft for the
# kernel, [[nat.rule]] for ctsyncd); what it emits on each side is compared too.
# ---------------------------------------------------------------------------------------------
class Addrs:
    """The addresses of one family, so that each NAT scenario exists for IPv4 and IPv6."""

    def __init__(self, v6: bool):
        self.v6 = v6
        if v6:
            p1, p2 = "fd00:231:1::", "fd00:231:2::"
            self.fam, self.icmp = "ipv6", "icmpv6"
            self.cli, self.cli2, self.cli3, self.crtr = p1 + "2", p1 + "3", p1 + "4", p1 + "fe"
            self.srv, self.srv2, self.rtr = p2 + "2", p2 + "3", p2 + "fe"
            self.masq, self.gw_in = p2 + "1", p1 + "1"
            self.snat, self.snat2, self.pub = p2 + "50", p2 + "51", p2 + "100"
            self.range = f"{p2}10-{p2}13"
            self.other_prefix = "fd00:231:1:0:8000::/65"   # the upper half of the inside /64
            self.other_fam = "ipv4"
        else:
            self.fam, self.icmp = "ipv4", "icmp"
            self.cli, self.cli2, self.cli3, self.crtr = CLI4, CLI4B, "10.231.1.4", CRTR4
            self.srv, self.srv2, self.rtr = SRV4, SRV4B, RTR4
            self.masq, self.gw_in = "10.231.2.1", "10.231.1.1"
            self.snat, self.snat2, self.pub = "10.231.2.50", "10.231.2.51", "10.231.2.100"
            self.range = "10.231.2.10-10.231.2.13"
            self.other_prefix = "10.231.1.128/25"
            self.other_fam = "ipv6"


def ipx(src, dst, **kw):
    return ip6(src, dst, **kw) if ":" in src else ip4(src, dst, **kw)


def udpx(src, dst, sport, dport, data=b"", chksum=None):
    u = UDP(sport=sport, dport=dport) if chksum is None else UDP(sport=sport, dport=dport,
                                                                  chksum=chksum)
    return ipx(src, dst) / u / Raw(data)


def echox(src, dst, ident, seq, reply=False, data=b"ping" * 8):
    if ":" in src:
        cls = ICMPv6EchoReply if reply else ICMPv6EchoRequest
        return ip6(src, dst) / cls(id=ident, seq=seq, data=data)
    return ip4(src, dst) / ICMP(type=0 if reply else 8, id=ident, seq=seq) / Raw(data)


def icmp_err(src, dst, quoted, kind="unreach"):
    """An ICMP error from src to dst quoting `quoted` (port unreachable / host unreachable /
    time exceeded, in either family)."""
    if ":" in src:
        l4 = {"unreach": ICMPv6DestUnreach(code=4), "host": ICMPv6DestUnreach(code=3),
              "ttl": ICMPv6TimeExceeded(code=0)}[kind]
        return ip6(src, dst) / l4 / Raw(quote6(quoted))
    l4 = {"unreach": ICMP(type=3, code=3), "host": ICMP(type=3, code=1),
          "ttl": ICMP(type=11, code=0)}[kind]
    return ip4(src, dst) / l4 / Raw(quote4(quoted))


def udplite(src, dst, sport, dport, data, cscov=0, pseudo_proto=136):
    """UDP-Lite (RFC 3828; scapy has no layer for it). pseudo_proto: the protocol number put in
    the checksum's pseudo header (136 per the RFC; 17 is what Linux conntrack checks against)."""
    v6 = ":" in src
    seg = bytearray(struct.pack("!HHHH", sport, dport, cscov, 0) + data)
    sb = ipaddress_packed(src)
    db = ipaddress_packed(dst)
    covered = bytes(seg) if cscov == 0 else bytes(seg[:cscov])
    c = pktutil.csum(covered, pktutil.csum_add(pktutil.pseudo(6 if v6 else 4, sb, db,
                                                              pseudo_proto, len(seg))))
    struct.pack_into("!H", seg, 6, c or 0xFFFF)
    l3 = ip6(src, dst, nh=136) if v6 else ip4(src, dst, proto=136)
    return l3 / Raw(bytes(seg))


def ipaddress_packed(a: str) -> bytes:
    import ipaddress
    return ipaddress.ip_address(a).packed


def emitted(p, src=None, dst=None, sport=None, dport=None, ident=None):
    """The packet `p` as the tracker would emit it after translation: new addresses / ports /
    ICMP id, TTL or hop limit minus one, checksums recomputed. For quoting it in ICMP errors
    sent by hosts beyond the tracker."""
    q = copy.deepcopy(p)
    l3 = q[IPv6] if IPv6 in q else q[IP]
    if src:
        l3.src = src
    if dst:
        l3.dst = dst
    if IPv6 in q:
        l3.hlim -= 1
    else:
        l3.ttl -= 1
        del l3.chksum
    for layer in (TCP, UDP):
        if layer in q:
            if sport is not None:
                q[layer].sport = sport
            if dport is not None:
                q[layer].dport = dport
            del q[layer].chksum
    if ICMP in q:
        if ident is not None:
            q[ICMP].id = ident
        del q[ICMP].chksum
    for layer in (ICMPv6EchoRequest, ICMPv6EchoReply):
        if layer in q:
            if ident is not None:
                q[layer].id = ident
            del q[layer].cksum
    return q.__class__(bytes(q))


class NatTcp:
    """A TCP connection through the tracker's NAT. The initiator (injected on side i_side, "c" or
    "s") sends from `i` to `r_view`; the responder sends from `r` to `i_view`. Endpoints are
    (address, port); the views default to the real endpoints (no translation)."""

    def __init__(self, sc, i, r, i_view=None, r_view=None, i_side="c", iisn=1000,
                 risn=700000, iwin=64240, rwin=65160):
        self.sc, self.i, self.r = sc, i, r
        self.i_view, self.r_view = i_view or i, r_view or r
        self.i_side = i_side
        self.nxt = [iisn, risn]
        self.win = [iwin, rwin]

    def seg(self, from_i, flags, data=b"", seq=None, ack=None, win=None, opts=None,
            advance=True, gap=None, build_only=False):
        me, other = (0, 1) if from_i else (1, 0)
        seq = self.nxt[me] if seq is None else seq
        if ack is None:
            ack = self.nxt[other] if "A" in flags else 0
        win = self.win[me] if win is None else win
        (sa, sp), (da, dp) = (self.i, self.r_view) if from_i else (self.r, self.i_view)
        p = ipx(sa, da) / TCP(sport=sp, dport=dp, flags=flags, seq=seq % 2**32,
                              ack=ack % 2**32, window=win, options=opts or [])
        if data:
            p = p / Raw(data)
        if advance:
            end = seq + len(data) + ("S" in flags) + ("F" in flags)
            self.nxt[me] = max(self.nxt[me], end)
        if not build_only:
            on_c = (self.i_side == "c") == from_i
            (self.sc.c if on_c else self.sc.s)(p, gap)
        return p

    def out(self, p, from_i):
        """p as the tracker emits it (for ICMP errors quoting it)."""
        if from_i:
            return emitted(p, src=self.i_view[0], dst=self.r[0], sport=self.i_view[1],
                           dport=self.r[1])
        return emitted(p, src=self.r_view[0], dst=self.i[0], sport=self.r_view[1],
                       dport=self.i[1])

    def I(self, flags, data=b"", **kw):  # noqa: E743
        return self.seg(True, flags, data, **kw)

    def R(self, flags, data=b"", **kw):
        return self.seg(False, flags, data, **kw)

    def handshake(self):
        self.I("S", opts=[MSS])
        self.R("SA", opts=[MSS])
        self.I("A")

    def exchange(self):
        self.I("PA", REQ)
        self.R("PA", RESP)
        self.I("A")

    def close(self):
        self.I("FA")
        self.R("A")
        self.R("FA")
        self.I("A")


def tune16(raw_translated: bytes) -> int:
    """The 16-bit value to put in a field at an even offset of the L4 segment (currently zero;
    where does not matter to a one's complement sum) so that the translated packet's true L4
    checksum comes out as 0x0000 (one's complement sum 0xffff): the checksum edge where UDP
    must write 0xffff (CSUM_MANGLED_0)."""
    p = pktutil.parse(raw_translated)
    seg = bytearray(raw_translated[p.l4_off:p.l3_off + p.total_len])
    co = p.l4.csum_off - p.l4_off
    seg[co:co + 2] = b"\x00\x00"
    s = pktutil.csum_add(bytes(seg), pktutil.csum_add(
        pktutil.pseudo(p.version, p.src_b, p.dst_b, p.proto, len(seg))))
    return (~s) & 0xFFFF


def nat_scenario(name, desc, spec, versions=(4, 6), sysctls=None):
    """Register scenario `name` (IPv4) and its nat6_ twin (IPv6): spec(A) gives the NatSpec,
    the decorated fn(sc, A) the packets, for the addresses A of each family."""
    def deco(fn):
        for v in versions:
            A = Addrs(v == 6)
            nm = name if v == 4 else name.replace("nat_", "nat6_", 1)
            d = desc if v == 4 else desc + " [IPv6, NAT66]"
            scenario(nm, d, sysctls, nat=spec(A))(lambda sc, A=A: fn(sc, A))
        return fn
    return deco


def masq_rules(A):
    return NatSpec(rules=[Rule("masquerade", out_interface="trks")])


@nat_scenario("nat_masq_tcp", "masquerade (oifname trks, no family): a full TCP connection "
              "(handshake, request, response, close to TIME_WAIT); the source port is kept",
              masq_rules)
def _(sc, A):
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80), i_view=(A.masq, 40000))
    t.handshake()
    t.exchange()
    t.close()


@nat_scenario("nat_masq_udp", "masquerade: UDP request, reply, request (port 50000 kept), and "
              "a flow from port 123 (below 512: kept too, as it is free)", masq_rules)
def _(sc, A):
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"query"))
    sc.s(udpx(A.srv, A.masq, 53, 50000, b"answer"))
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"query2"))
    sc.c(udpx(A.cli, A.srv, 123, 123, b"ntp?"))
    sc.s(udpx(A.srv, A.masq, 123, 123, b"ntp!"))


@nat_scenario("nat_masq_udp_zero_csum", "masquerade: UDP with checksum 0 both ways (must stay "
              "0 after NAT), and a flow with a checksum", masq_rules)
def _(sc, A):
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"nochecksum", chksum=0))
    sc.s(udpx(A.srv, A.masq, 53, 50000, b"nochecksum-reply", chksum=0))
    sc.c(udpx(A.cli, A.srv, 50001, 53, b"with checksum"))
    sc.s(udpx(A.srv, A.masq, 53, 50001, b"with checksum reply"))


@nat_scenario("nat_csum_edge", "masquerade: packets whose checksum after translation is 0 in "
              "one's complement: UDP must carry 0xffff (0 means none), TCP 0x0000; both "
              "directions", masq_rules)
def _(sc, A):
    # UDP: 2 bytes at the end of the payload chosen so that the translated datagram sums to 0.
    def tuned_udp(src, dst, sport, dport, out_src, out_dst, tag):
        probe = udpx(out_src, out_dst, sport, dport, tag + b"\x00\x00")
        x = tune16(bytes(probe))
        return udpx(src, dst, sport, dport, tag + struct.pack("!H", x))
    sc.c(tuned_udp(A.cli, A.srv, 50000, 53, A.masq, A.srv, b"edge"))
    sc.s(tuned_udp(A.srv, A.masq, 53, 50000, A.srv, A.cli, b"EDGE"))
    # TCP: the low 16 bits of each ISN chosen the same way (SYN out, SYN+ACK back).
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80), i_view=(A.masq, 40000))
    probe = t.out(t.I("S", opts=[MSS], seq=0x10000, advance=False, build_only=True), True)
    t.nxt[0] = 0x10000 | tune16(bytes(probe))
    probe = t.out(t.R("SA", opts=[MSS], seq=0x70000, ack=t.nxt[0] + 1, advance=False,
                      build_only=True), False)
    t.nxt[1] = 0x70000 | tune16(bytes(probe))
    t.handshake()


@nat_scenario("nat_masq_udplite", "masquerade: UDP-Lite flows with checksum coverage 8 (header "
              "only) and 0 (all), each with a reply; once with the RFC 3828 pseudo header "
              "(protocol 136) and once with protocol 17 in the pseudo header (what "
              "nf_conntrack_proto_udp.c checks against)", masq_rules)
def _(sc, A):
    for sport, cov, pp in ((50000, 8, 136), (50001, 0, 136), (50002, 8, 17), (50003, 0, 17)):
        sc.c(udplite(A.cli, A.srv, sport, 5004, b"lite request %d" % sport, cov, pp))
        sc.s(udplite(A.srv, A.masq, 5004, sport, b"lite reply %d" % sport, cov, pp))


@nat_scenario("nat_masq_icmp_echo", "masquerade: ICMP echo request / reply twice (id kept)",
              masq_rules)
def _(sc, A):
    for seq in (1, 2):
        sc.c(echox(A.cli, A.srv, 0x1234, seq))
        sc.s(echox(A.srv, A.masq, 0x1234, seq, reply=True))


@nat_scenario("nat_masq_to_ports", "masquerade to a port range (tcp 10000-10099, udp "
              "20000-20009): a UDP flow whose port 20005 lies in the range keeps it (with reply); "
              "flows from 50000 (udp, to the same server port) and 40000 (tcp) get a random port "
              "in the range (no reply: nobody knows it before the run)",
              lambda A: NatSpec(
                  rules=[Rule("masquerade", protocol="tcp", out_interface="trks",
                              to_port="10000-10099"),
                         Rule("masquerade", protocol="udp", out_interface="trks",
                              to_port="20000-20009")],
                  random=[Random("udp", A.cli, 50000, 20000, 20009),
                          Random("tcp", A.cli, 40000, 10000, 10099)]))
def _(sc, A):
    sc.c(udpx(A.cli, A.srv, 20005, 53, b"in range"))
    sc.s(udpx(A.srv, A.masq, 53, 20005, b"in range reply"))
    for i in range(3):
        sc.c(udpx(A.cli, A.srv, 50000, 53, b"random %d" % i))
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80))
    syn = t.I("S", opts=[MSS])
    sc.c(syn, gap=0.2)  # a retransmission: the same mapping


def snat_one(A):
    return NatSpec(rules=[Rule("snat", family=A.fam, out_interface="trks",
                               to_address=A.snat)])


@nat_scenario("nat_snat_one_addr", "SNAT to one address that is not the tracker's: a full TCP "
              "connection, UDP with reply, ICMP echo with reply (ports and id kept)", snat_one)
def _(sc, A):
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80), i_view=(A.snat, 40000))
    t.handshake()
    t.exchange()
    t.close()
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"query"))
    sc.s(udpx(A.srv, A.snat, 53, 50000, b"answer"))
    sc.c(echox(A.cli, A.srv, 0x77, 1))
    sc.s(echox(A.srv, A.snat, 0x77, 1, reply=True))


def snat_range(persistent):
    def spec(A):
        return NatSpec(rules=[Rule("snat", family=A.fam, out_interface="trks",
                                   to_address=A.range,
                                   flags=("persistent",) if persistent else ())],
                       same_address=[A.cli] if persistent else [])
    return spec


@nat_scenario("nat_snat_addr_range", "SNAT to a range of 4 addresses: three clients (UDP with "
              "reply each) and a TCP handshake from the first; the address is the kernel's "
              "jhash of source and destination (deterministic, predicted here)",
              snat_range(False))
def _(sc, A):
    for n, c in enumerate((A.cli, A.cli2, A.cli3)):
        m = kernel_pick_address(A.range, c, A.srv)
        sc.c(udpx(c, A.srv, 50000 + n, 53, b"query %d" % n))
        sc.s(udpx(A.srv, m, 53, 50000 + n, b"answer %d" % n))
    m = kernel_pick_address(A.range, A.cli, A.srv)
    NatTcp(sc, (A.cli, 40000), (A.srv, 80), i_view=(m, 40000)).handshake()


@nat_scenario("nat_snat_persistent", "SNAT to an address range with persistent: one client to "
              "two servers gets the same address for both (hash of the source only); a second "
              "client too; UDP with replies", snat_range(True))
def _(sc, A):
    for c, base in ((A.cli, 50000), (A.cli2, 51000)):
        for k, s in enumerate((A.srv, A.srv2)):
            m = kernel_pick_address(A.range, c, s, persistent=True)
            sc.c(udpx(c, s, base + k, 53, b"q"))
            sc.s(udpx(s, m, 53, base + k, b"a"))


@nat_scenario("nat_snat_nonpersistent", "as nat_snat_persistent without persistent: the address "
              "depends on the destination too", snat_range(False))
def _(sc, A):
    for c, base in ((A.cli, 50000), (A.cli2, 51000)):
        for k, s in enumerate((A.srv, A.srv2)):
            m = kernel_pick_address(A.range, c, s)
            sc.c(udpx(c, s, base + k, 53, b"q"))
            sc.s(udpx(s, m, 53, base + k, b"a"))


@nat_scenario("nat_snat_port_range", "SNAT to one address and a port range 20000-20009 (tcp and "
              "udp rules): a UDP flow from 20003 keeps its port (reply); UDP from 50000 and TCP "
              "from 40000 get random ports in the range (original direction only)",
              lambda A: NatSpec(
                  rules=[Rule("snat", family=A.fam, protocol="tcp", out_interface="trks",
                              to_address=A.snat, to_port="20000-20009"),
                         Rule("snat", family=A.fam, protocol="udp", out_interface="trks",
                              to_address=A.snat, to_port="20000-20009")],
                  random=[Random("udp", A.cli, 50000, 20000, 20009),
                          Random("tcp", A.cli, 40000, 20000, 20009)]))
def _(sc, A):
    sc.c(udpx(A.cli, A.srv, 20003, 53, b"kept"))
    sc.s(udpx(A.srv, A.snat, 53, 20003, b"kept reply"))
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"r1"))
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"r2"))
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80))
    t.I("S", opts=[MSS])
    t.I("S", opts=[MSS], seq=1000, advance=False, gap=0.2)


def random_flows_spec(rule):
    def spec(A):
        return NatSpec(rules=[rule(A)],
                       random=[Random("tcp", A.cli, 40000, 1024, 65535),
                               Random("udp", A.cli, 50000, 1024, 65535),
                               Random("udp", A.cli, 123, 1, 511),
                               Random(A.icmp, A.cli, 0x99, 0, 65535)])
    return spec


def random_flows(sc, A):
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80))
    t.I("S", opts=[MSS])
    t.I("S", opts=[MSS], seq=1000, advance=False, gap=0.2)
    for i in range(3):
        sc.c(udpx(A.cli, A.srv, 50000, 53, b"q%d" % i))
    sc.c(udpx(A.cli, A.srv, 123, 123, b"low port"))
    for seq in (1, 2):
        sc.c(echox(A.cli, A.srv, 0x99, seq))


@nat_scenario("nat_masq_random", "masquerade random: every port / ICMP id is drawn at random "
              "(in 1024-65535, 1-511 for a port below 512, 0-65535 for the id), even when the "
              "original one is free; original direction only",
              random_flows_spec(lambda A: Rule("masquerade", out_interface="trks",
                                               flags=("random",))))
def _(sc, A):
    random_flows(sc, A)


@nat_scenario("nat_masq_fully_random", "masquerade fully-random: as nat_masq_random",
              random_flows_spec(lambda A: Rule("masquerade", out_interface="trks",
                                               flags=("fully-random",))),
              versions=(4,))
def _(sc, A):
    random_flows(sc, A)


@nat_scenario("nat_snat_random_persistent", "SNAT to an address range with random,persistent: "
              "ports random, the address one per source (two servers, the same address)",
              lambda A: NatSpec(
                  rules=[Rule("snat", family=A.fam, out_interface="trks", to_address=A.range,
                              flags=("random", "persistent"))],
                  random=[Random("udp", A.cli, 50000, 1024, 65535, dst=A.srv),
                          Random("udp", A.cli, 50000, 1024, 65535, dst=A.srv2)],
                  same_address=[A.cli]),
              versions=(4,))
def _(sc, A):
    for s in (A.srv, A.srv2):
        sc.c(udpx(A.cli, s, 50000, 53, b"q"))
        sc.c(udpx(A.cli, s, 50000, 53, b"q again"))


@nat_scenario("nat_snat_conflict", "masquerade: two inside hosts use source port 40000 to the "
              "same server port: the first keeps 40000 (full handshake), the second gets a "
              "random port (SYN and retransmission), and the second host's next flow from 40000 "
              "to another server reuses that same random mapping; the same with UDP",
              lambda A: NatSpec(
                  rules=[Rule("masquerade", out_interface="trks")],
                  random=[Random("tcp", A.cli2, 40000, 1024, 65535, dst=A.srv, group="cli2"),
                          Random("tcp", A.cli2, 40000, 1024, 65535, dst=A.srv2, group="cli2"),
                          Random("udp", A.cli2, 50000, 1024, 65535)]))
def _(sc, A):
    NatTcp(sc, (A.cli, 40000), (A.srv, 80), i_view=(A.masq, 40000)).handshake()
    t2 = NatTcp(sc, (A.cli2, 40000), (A.srv, 80), iisn=5000)
    t2.I("S", opts=[MSS])
    t2.I("S", opts=[MSS], seq=5000, advance=False, gap=0.2)
    NatTcp(sc, (A.cli2, 40000), (A.srv2, 80), iisn=9000).I("S", opts=[MSS])
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"first"))
    sc.s(udpx(A.srv, A.masq, 53, 50000, b"first reply"))
    sc.c(udpx(A.cli2, A.srv, 50000, 53, b"second"))
    sc.c(udpx(A.cli2, A.srv, 50000, 53, b"second again"))


@nat_scenario("nat_icmp_id_conflict", "masquerade: two inside hosts ping the same server with "
              "the same ICMP id: the first keeps it (with replies), the second gets a random id",
              lambda A: NatSpec(rules=[Rule("masquerade", out_interface="trks")],
                                random=[Random(A.icmp, A.cli2, 0x4242, 0, 65535)]))
def _(sc, A):
    sc.c(echox(A.cli, A.srv, 0x4242, 1))
    sc.s(echox(A.srv, A.masq, 0x4242, 1, reply=True))
    sc.c(echox(A.cli2, A.srv, 0x4242, 1))
    sc.c(echox(A.cli2, A.srv, 0x4242, 2))
    sc.c(echox(A.cli, A.srv, 0x4242, 2))
    sc.s(echox(A.srv, A.masq, 0x4242, 2, reply=True))


@nat_scenario("nat_snat_exhausted", "SNAT to one address with ports 20000-20001: TCP flows "
              "from 20000 and 20001 keep their ports (handshakes); a third from 40000 and a "
              "fourth from another host's port 20000 find no free port: dropped at confirm, no "
              "entry; UDP from 20000 then from 50000 (dropped) likewise",
              lambda A: NatSpec(
                  rules=[Rule("snat", family=A.fam, protocol="tcp", out_interface="trks",
                              to_address=A.snat, to_port="20000-20001"),
                         Rule("snat", family=A.fam, protocol="udp", out_interface="trks",
                              to_address=A.snat, to_port="20000-20000")],
                  nat_dropped=3))
def _(sc, A):
    for sp in (20000, 20001):
        NatTcp(sc, (A.cli, sp), (A.srv, 80), i_view=(A.snat, sp)).handshake()
    NatTcp(sc, (A.cli, 40000), (A.srv, 80)).I("S", opts=[MSS])
    NatTcp(sc, (A.cli2, 20000), (A.srv, 80)).I("S", opts=[MSS])
    sc.c(udpx(A.cli, A.srv, 20000, 53, b"fits"))
    sc.s(udpx(A.srv, A.snat, 53, 20000, b"fits reply"))
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"no room"))


def dnat_fwd(A):
    return NatSpec(rules=[
        Rule("dnat", family=A.fam, protocol="tcp", destination=A.pub, dport="8080",
             in_interface="trks", to_address=A.cli, to_port="80"),
        Rule("dnat", family=A.fam, protocol="udp", destination=A.pub, dport="5353",
             in_interface="trks", to_address=A.cli, to_port="53")])


@nat_scenario("nat_snat_reuse_time_wait", "SNAT to one address and one port (20000): a TCP "
              "connection from 40000 closes to TIME_WAIT holding it; a SYN from 40001 whose ISN "
              "lies below the old flow's last sequence finds no free port (dropped at confirm); "
              "a SYN from 40002 with a higher ISN evicts the TIME_WAIT entry (DESTROY) and takes "
              "the port (nf_nat_used_tuple_harder: a new SYN_SENT flow, the old one SNATed and in "
              "TIME_WAIT or later, its sequence advanced)",
              lambda A: NatSpec(
                  rules=[Rule("snat", family=A.fam, protocol="tcp", out_interface="trks",
                              to_address=A.snat, to_port="20000")],
                  nat_dropped=1))
def _(sc, A):
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80), i_view=(A.snat, 20000))
    t.handshake()
    t.exchange()
    t.close()
    NatTcp(sc, (A.cli, 40001), (A.srv, 80), iisn=500).I("S", opts=[MSS])
    t3 = NatTcp(sc, (A.cli, 40002), (A.srv, 80), i_view=(A.snat, 20000), iisn=900000,
                risn=3000000)
    t3.handshake()


@nat_scenario("nat_dnat_port_forward", "DNAT port forward: an outside host connects to "
              "PUB:8080, translated to the inside host's port 80 (full TCP connection); UDP "
              "PUB:5353 to inside port 53 with reply", dnat_fwd)
def _(sc, A):
    t = NatTcp(sc, (A.srv, 45000), (A.cli, 80), r_view=(A.pub, 8080), i_side="s")
    t.handshake()
    t.exchange()
    t.close()
    sc.s(udpx(A.srv, A.pub, 45001, 5353, b"query"))
    sc.c(udpx(A.cli, A.srv, 53, 45001, b"answer"))


@nat_scenario("nat_dnat_port_range", "DNAT of PUB ports 8000-8099 to the inside host's ports "
              "8000-8009: port 8005 is in the range and kept; port 8080 is not: the kernel takes "
              "the first free port from the range's start (DNAT searches from offset 0, not at "
              "random): 8000; the same outside port to PUB:8081 finds 8000 taken (same reply "
              "tuple) and gets 8001 (handshakes); a second rule with flag random (9000-9099 to "
              "9000-9009) draws the port at random (original direction only)",
              lambda A: NatSpec(
                  rules=[Rule("dnat", family=A.fam, protocol="tcp", destination=A.pub,
                              dport="8000-8099", to_address=A.cli, to_port="8000-8009"),
                         Rule("dnat", family=A.fam, protocol="tcp", destination=A.pub,
                              dport="9000-9099", to_address=A.cli, to_port="9000-9009",
                              flags=("random",))],
                  random=[Random("tcp", A.srv, 45002, 9000, 9009, field="reply.sport")]))
def _(sc, A):
    for sport, pub_port, inside_port in ((45000, 8005, 8005), (45001, 8080, 8000),
                                         (45001, 8081, 8001)):
        NatTcp(sc, (A.srv, sport), (A.cli, inside_port), r_view=(A.pub, pub_port),
               i_side="s", iisn=1000 + pub_port).handshake()
    t = NatTcp(sc, (A.srv, 45002), (A.cli, 0), r_view=(A.pub, 9050), i_side="s")
    t.I("S", opts=[MSS])
    t.I("S", opts=[MSS], seq=1000, advance=False, gap=0.2)


@nat_scenario("nat_dnat_addr_range", "DNAT of PUB:8080 to a range of three inside hosts, port "
              "80: two outside hosts, each mapped by jhash of source and destination "
              "(deterministic, predicted here); UDP with replies",
              lambda A: NatSpec(rules=[Rule("dnat", family=A.fam, protocol="udp",
                                            destination=A.pub, dport="8080",
                                            to_address=f"{A.cli}-{A.cli3}", to_port="80")]))
def _(sc, A):
    for n, o in enumerate((A.srv, A.srv2)):
        inside = kernel_pick_address(f"{A.cli}-{A.cli3}", o, A.pub)
        sc.s(udpx(o, A.pub, 45000 + n, 8080, b"q%d" % n))
        sc.c(udpx(inside, o, 80, 45000 + n, b"a%d" % n))


@nat_scenario("nat_redirect", "redirect (iifname trkc, tcp dport 80 to :8080, udp dport 53 to "
              ":5353): the packets are delivered to the tracker itself (its address on trkc): "
              "entries created, nothing emitted; a tcp flow to port 443 is forwarded untouched",
              lambda A: NatSpec(rules=[
                  Rule("redirect", protocol="tcp", dport="80", in_interface="trkc",
                       to_port="8080"),
                  Rule("redirect", protocol="udp", dport="53", in_interface="trkc",
                       to_port="5353")]))
def _(sc, A):
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80))
    t.I("S", opts=[MSS])
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"query"))
    t2 = NatTcp(sc, (A.cli, 40001), (A.srv, 443))
    t2.handshake()


@nat_scenario("nat_dnat_snat_both", "one flow through DNAT and SNAT: the client connects to "
              "PUB:80, DNAT to the server's port 8080 at prerouting, masquerade at postrouting "
              "(full TCP connection); UDP PUB:53 to the server's 5353 likewise",
              lambda A: NatSpec(rules=[
                  Rule("dnat", family=A.fam, protocol="tcp", destination=A.pub, dport="80",
                       in_interface="trkc", to_address=A.srv, to_port="8080"),
                  Rule("dnat", family=A.fam, protocol="udp", destination=A.pub, dport="53",
                       in_interface="trkc", to_address=A.srv, to_port="5353"),
                  Rule("masquerade", out_interface="trks")]))
def _(sc, A):
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 8080), i_view=(A.masq, 40000), r_view=(A.pub, 80))
    t.handshake()
    t.exchange()
    t.close()
    sc.c(udpx(A.cli, A.pub, 50000, 53, b"query"))
    sc.s(udpx(A.srv, A.masq, 5353, 50000, b"answer"))


@nat_scenario("nat_icmp_err_server_side", "masquerade; ICMP errors from beyond the tracker about "
              "translated packets (RELATED, reply direction; inner and outer headers are "
              "translated back): the server-side router reports host unreachable for a UDP "
              "datagram and time exceeded for a TCP SYN (the handshake then completes) and for "
              "an echo request; the server reports port unreachable", masq_rules)
def _(sc, A):
    u = udpx(A.cli, A.srv, 50000, 9999, b"hello?")
    sc.c(u)
    sc.s(icmp_err(A.rtr, A.masq, emitted(u, src=A.masq), "host"))
    u2 = udpx(A.cli, A.srv, 50001, 9999, b"anyone?")
    sc.c(u2)
    sc.s(icmp_err(A.srv, A.masq, emitted(u2, src=A.masq), "unreach"))
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80), i_view=(A.masq, 40000))
    syn = t.I("S", opts=[MSS])
    sc.s(icmp_err(A.rtr, A.masq, t.out(syn, True), "ttl"))
    t.R("SA", opts=[MSS])
    t.I("A")
    e = echox(A.cli, A.srv, 0x55, 1)
    sc.c(e)
    sc.s(icmp_err(A.rtr, A.masq, emitted(e, src=A.masq), "ttl"))


@nat_scenario("nat_icmp_err_client_side", "masquerade; ICMP errors from the inside about reply "
              "packets (RELATED, original direction: translated like the flow's packets, the "
              "outer source becomes the masquerade address): the client sends port unreachable "
              "about a UDP reply, a client-side router time exceeded about a TCP segment of the "
              "server", masq_rules)
def _(sc, A):
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"query"))
    r = udpx(A.srv, A.masq, 53, 50000, b"answer")
    sc.s(r)
    sc.c(icmp_err(A.cli, A.srv, emitted(r, dst=A.cli), "unreach"))
    t = NatTcp(sc, (A.cli, 40010), (A.srv, 80), i_view=(A.masq, 40010))
    t.handshake()
    seg = t.R("PA", RESP)
    sc.c(icmp_err(A.crtr, A.srv, t.out(seg, False), "ttl"))


@nat_scenario("nat_icmp_err_dnat", "DNAT port forward; ICMP errors about the DNATed flow: the "
              "inside host reports port unreachable for a forwarded UDP datagram, a client-side "
              "router time exceeded for a forwarded TCP SYN (outer source and inner "
              "destination translated back to PUB); the server-side router reports host "
              "unreachable for the inside host's UDP reply (outer destination translated)",
              dnat_fwd)
def _(sc, A):
    u = udpx(A.srv, A.pub, 45001, 5353, b"query")
    sc.s(u)
    sc.c(icmp_err(A.cli, A.srv, emitted(u, dst=A.cli, dport=53), "unreach"))
    t = NatTcp(sc, (A.srv, 45000), (A.cli, 80), r_view=(A.pub, 8080), i_side="s")
    syn = t.I("S", opts=[MSS])
    sc.c(icmp_err(A.crtr, A.srv, t.out(syn, True), "ttl"))
    sc.s(udpx(A.srv, A.pub, 45002, 5353, b"query2"))
    r = udpx(A.cli, A.srv, 53, 45002, b"answer2")
    sc.c(r)
    sc.s(icmp_err(A.rtr, A.pub, emitted(r, src=A.pub, sport=5353), "host"))


@nat_scenario("nat_icmp_err_short_quote", "masquerade; ICMP errors quoting only the IP "
              "header and 8 bytes (RFC 792's minimum): for a TCP SYN the quoted ports are "
              "translated back but its checksum is not there to update; for UDP the quoted "
              "checksum (over data not quoted) is updated incrementally", masq_rules)
def _(sc, A):
    def short(p):
        raw = bytes(p)
        hl = 40 if A.v6 else (raw[0] & 15) * 4
        return raw[:hl + 8]
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80), i_view=(A.masq, 40000))
    syn = t.I("S", opts=[MSS])
    q = short(t.out(syn, True))
    if A.v6:
        sc.s(ip6(A.rtr, A.masq) / ICMPv6TimeExceeded(code=0) / Raw(q))
    else:
        sc.s(ip4(A.rtr, A.masq) / ICMP(type=11, code=0) / Raw(q))
    u = udpx(A.cli, A.srv, 50000, 9999, b"hello?")
    sc.c(u)
    q = short(emitted(u, src=A.masq))
    if A.v6:
        sc.s(ip6(A.rtr, A.masq) / ICMPv6DestUnreach(code=3) / Raw(q))
    else:
        sc.s(ip4(A.rtr, A.masq) / ICMP(type=3, code=1) / Raw(q))


@nat_scenario("nat_late_reply", "TCP SYNs answered by a RST (the entry goes at once: the only "
              "reply was a RST), then a late SYN+ACK for the same ports: no entry, SYN+ACK "
              "creates none: invalid, dropped. Port 80 is masqueraded (the late reply is "
              "addressed to the tracker itself), port 81 SNATed to another address (the late "
              "reply would be forwarded); a third flow (port 82, masquerade) times out in "
              "SYN_SENT (1 s) before its SYN+ACK comes",
              lambda A: NatSpec(rules=[
                  Rule("snat", family=A.fam, protocol="tcp", dport="81", out_interface="trks",
                       to_address=A.snat),
                  Rule("masquerade", out_interface="trks")]),
              sysctls={"nf_conntrack_tcp_timeout_syn_sent": 1})
def _(sc, A):
    for dport, view in ((80, A.masq), (81, A.snat)):
        t = NatTcp(sc, (A.cli, 40000 + dport), (A.srv, dport), i_view=(view, 40000 + dport))
        t.I("S", opts=[MSS])
        t.R("RA", seq=0)
        t.R("SA", opts=[MSS])
    t = NatTcp(sc, (A.cli, 40082), (A.srv, 82), i_view=(A.masq, 40082))
    t.I("S", opts=[MSS])
    sc.wait(2.2)
    t.R("SA", opts=[MSS])


@nat_scenario("nat_frag_udp", "masquerade: a 3000-byte UDP datagram in three fragments "
              "(reassembled by defrag, translated, refragmented on output), and a fragmented "
              "3000-byte reply", masq_rules)
def _(sc, A):
    if A.v6:
        big = ip6(A.cli, A.srv) / IPv6ExtHdrFragment(id=0x5151) / UDP(sport=50000, dport=4000) \
            / Raw(b"F" * 3000)
        frags = fragment6(big, 1280)
        rep = ip6(A.srv, A.masq) / IPv6ExtHdrFragment(id=0x6161) / \
            UDP(sport=4000, dport=50000) / Raw(b"G" * 3000)
        rfrags = fragment6(rep, 1280)
    else:
        big = ip4(A.cli, A.srv, id=0x4242) / UDP(sport=50000, dport=4000) / Raw(b"F" * 3000)
        frags = fragment(big, fragsize=1208)
        rep = ip4(A.srv, A.masq, id=0x4343) / UDP(sport=4000, dport=50000) / Raw(b"G" * 3000)
        rfrags = fragment(rep, fragsize=1208)
    for f in frags:
        sc.c(f, gap=0.002)
    for f in rfrags:
        sc.s(f, gap=0.002)
    sc.c(udpx(A.cli, A.srv, 50000, 4000, b"small"))


@nat_scenario("nat_nomatch", "rules that do not match the flows, which pass untranslated: "
              "masquerade out of the wrong interface, tcp dport 443 only, udplite only, a "
              "source prefix the client is not in, zone 5, the other family, and a DNAT on the "
              "wrong input interface; a TCP handshake, an ICMP echo and UDP with replies",
              lambda A: NatSpec(rules=[
                  Rule("masquerade", out_interface="trkc"),
                  Rule("masquerade", protocol="tcp", dport="443", out_interface="trks"),
                  Rule("masquerade", protocol="udplite", out_interface="trks"),
                  Rule("snat", family=A.fam, source=A.other_prefix, to_address=A.snat),
                  Rule("snat", family=A.fam, zone=5, to_address=A.snat),
                  Rule("masquerade", family=A.other_fam, out_interface="trks"),
                  Rule("dnat", family=A.fam, protocol="tcp", dport="80", in_interface="trks",
                       to_address=A.cli2)]))
def _(sc, A):
    t = NatTcp(sc, (A.cli, 40000), (A.srv, 80))
    t.handshake()
    sc.c(echox(A.cli, A.srv, 0x31, 1))
    sc.s(echox(A.srv, A.cli, 0x31, 1, reply=True))
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"q"))
    sc.s(udpx(A.srv, A.cli, 53, 50000, b"a"))


@nat_scenario("nat_first_match", "first match wins: postrouting rules snat tcp dport 80 to "
              "address 1, snat tcp to address 2, masquerade; prerouting dnat PUB tcp 8080 to the "
              "client's port 80, dnat PUB (anything) to the second client; flows for each rule "
              "with replies",
              lambda A: NatSpec(rules=[
                  Rule("snat", family=A.fam, protocol="tcp", dport="80", out_interface="trks",
                       to_address=A.snat),
                  Rule("snat", family=A.fam, protocol="tcp", out_interface="trks",
                       to_address=A.snat2),
                  Rule("masquerade", out_interface="trks"),
                  Rule("dnat", family=A.fam, protocol="tcp", destination=A.pub, dport="8080",
                       to_address=A.cli, to_port="80"),
                  Rule("dnat", family=A.fam, destination=A.pub, to_address=A.cli2)]))
def _(sc, A):
    NatTcp(sc, (A.cli, 40000), (A.srv, 80), i_view=(A.snat, 40000)).handshake()
    NatTcp(sc, (A.cli, 40001), (A.srv, 443), i_view=(A.snat2, 40001)).handshake()
    sc.c(udpx(A.cli, A.srv, 50000, 53, b"q"))
    sc.s(udpx(A.srv, A.masq, 53, 50000, b"a"))
    NatTcp(sc, (A.srv, 45000), (A.cli, 80), r_view=(A.pub, 8080), i_side="s").handshake()
    sc.s(udpx(A.srv, A.pub, 45001, 9090, b"q"))
    sc.c(udpx(A.cli2, A.srv, 9090, 45001, b"a"))


# ---------------------------------------------------------------------------------------------
def build(name, desc, sysctls, fn) -> Scenario:
    sc = Scenario(name, desc, sysctls)
    fn(sc)
    return sc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="generate differential-test pcaps")
    ap.add_argument("outdir", nargs="?")
    ap.add_argument("--only", default=None, help="comma-separated scenario names")
    ap.add_argument("--list", action="store_true", help="print the scenario names and exit")
    a = ap.parse_args(argv)
    names = [s[0] for s in SCENARIOS]
    assert len(names) == len(set(names)), "duplicate scenario names"
    if a.list:
        for n, d, _s, _f, _n in SCENARIOS:
            print(f"{n:34} {d}")
        return 0
    if not a.outdir:
        ap.error("OUTDIR is required")
    only = set(a.only.split(",")) if a.only else None
    if only:
        unknown = only - set(names)
        if unknown:
            print(f"unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
    os.makedirs(a.outdir, exist_ok=True)
    manifest = []
    for name, desc, sysctls, fn, nat in SCENARIOS:
        if only and name not in only:
            continue
        sc = build(name, desc, sysctls, fn)
        fname = f"{name}.pcap"
        wrpcap(os.path.join(a.outdir, fname), sc.frames)
        entry = {
            "name": name, "file": fname, "description": desc, "sysctls": sc.sysctls,
            "long": sc.long, "duration": round(sc.t - T0, 3), "packets": len(sc.frames)}
        if nat is not None:
            # Both rule sets from the same Rule objects: the oracle loads NAME.nft, ctsyncd reads
            # NAME.nat.toml (run_diff.py puts the [tracker] section in front).
            with open(os.path.join(a.outdir, f"{name}.nft"), "w") as f:
                f.write(nat_rules.nft_ruleset(nat.rules))
            with open(os.path.join(a.outdir, f"{name}.nat.toml"), "w") as f:
                f.write(nat_rules.toml_rules(nat.rules))
            entry["nat"] = dict(nat.manifest(), nft=f"{name}.nft", toml=f"{name}.nat.toml")
        manifest.append(entry)
    with open(os.path.join(a.outdir, "manifest.json"), "w") as f:
        json.dump({"version": 1, "scenarios": manifest}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(manifest)} scenarios to {a.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
