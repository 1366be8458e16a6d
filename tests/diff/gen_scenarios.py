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
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from scapy.all import (  # type: ignore
    ICMP, IP, TCP, UDP, Ether, ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest,
    ICMPv6TimeExceeded, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
    PadN, Raw, fragment, fragment6, wrpcap)

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


def scenario(name, desc, sysctls=None):
    def deco(fn):
        SCENARIOS.append((name, desc, sysctls, fn))
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
        for n, d, _s, _f in SCENARIOS:
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
    for name, desc, sysctls, fn in SCENARIOS:
        if only and name not in only:
            continue
        sc = build(name, desc, sysctls, fn)
        fname = f"{name}.pcap"
        wrpcap(os.path.join(a.outdir, fname), sc.frames)
        manifest.append({
            "name": name, "file": fname, "description": desc, "sysctls": sc.sysctls,
            "long": sc.long, "duration": round(sc.t - T0, 3), "packets": len(sc.frames)})
    with open(os.path.join(a.outdir, "manifest.json"), "w") as f:
        json.dump({"version": 1, "scenarios": manifest}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(manifest)} scenarios to {a.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
