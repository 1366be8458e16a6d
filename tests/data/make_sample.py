#!/usr/bin/python3
"""Writes tests/data/sample.pcap, the capture the README's demo replays: a small day in the life
of a firewall. Uses the differential suite's packet helpers. Deterministic.

Usage: /usr/bin/python3 tests/data/make_sample.py [OUT.pcap]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "diff"))
from gen_scenarios import (CLI4, CLI6, MSS, REQ, RESP, RTR4, SRV4, SRV6, Scenario, Tcp,  # noqa
                           ip4, ip6, quote4)
from scapy.all import ICMP, TCP, UDP, Raw, fragment, wrpcap  # noqa: E402


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                             "sample.pcap")
    sc = Scenario("sample", "demo capture")
    # A web request: handshake, request, response, client closes.
    web = Tcp(sc, sport=40001, dport=80)
    web.handshake(copts=[MSS], sopts=[MSS])
    web.C("PA", REQ)
    web.S("PA", RESP)
    web.C("A")
    web.client_close()
    # A DNS lookup, then a long-lived UDP flow that becomes a stream after 2 s.
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50001, dport=53) / Raw(b"query"))
    sc.s(ip4(SRV4, CLI4) / UDP(sport=53, dport=50001) / Raw(b"answer"))
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50002, dport=5004) / Raw(b"rtp" * 40))
    sc.s(ip4(SRV4, CLI4) / UDP(sport=5004, dport=50002) / Raw(b"rtp" * 40))
    sc.c(ip4(CLI4, SRV4) / UDP(sport=50002, dport=5004) / Raw(b"rtp" * 40), gap=2.5)
    # A ping, and a probe to a closed port answered by ICMP port unreachable (RELATED).
    sc.c(ip4(CLI4, SRV4) / ICMP(type=8, id=7, seq=1) / Raw(b"ping"))
    sc.s(ip4(SRV4, CLI4) / ICMP(type=0, id=7, seq=1) / Raw(b"ping"))
    probe = ip4(CLI4, SRV4) / UDP(sport=50003, dport=9) / Raw(b"anyone?")
    sc.c(probe)
    sc.s(ip4(RTR4, CLI4) / ICMP(type=3, code=3) / Raw(quote4(probe)))
    # An SSH session over IPv6 that stays established.
    ssh = Tcp(sc, v6=True, sport=40002, dport=22)
    ssh.handshake(copts=[MSS], sopts=[MSS])
    ssh.S("PA", b"SSH-2.0-demo\r\n")
    ssh.C("A")
    # A fragmented UDP datagram, reassembled before tracking.
    for frag in fragment(ip4(CLI4, SRV4, id=4242) / UDP(sport=50004, dport=4789) /
                         Raw(b"x" * 2400), fragsize=1000):
        sc.c(frag)
    # Junk: a TCP segment with a broken checksum is INVALID and creates nothing.
    sc.c(ip4(CLI4, SRV4) / TCP(sport=40003, dport=443, flags="S", chksum=0x1234))
    wrpcap(out, sc.frames)
    print(f"wrote {len(sc.frames)} packets to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
