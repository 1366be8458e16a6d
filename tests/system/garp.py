#!/usr/bin/python3
"""Gratuitous ARP, for machines without arping (iputils-arping).

  garp.py DEV ADDR [--count N] [--interval-ms MS]

Broadcasts ARP requests whose sender and target address are ADDR, from DEV's MAC address, as
`arping -U -I DEV ADDR` does: neighbours that hold an entry for ADDR move it to this MAC at once
(Linux accepts a gratuitous ARP even within the neighbour entry's locktime). The first one leaves
immediately. Standard library only; needs CAP_NET_RAW.
"""

import argparse
import socket
import struct
import sys
import time

ETH_P_ARP = 0x0806


def frame(mac: bytes, addr: bytes) -> bytes:
    eth = b"\xff" * 6 + mac + struct.pack(">H", ETH_P_ARP)
    arp = struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + mac + addr + b"\x00" * 6 + addr
    return eth + arp


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dev")
    p.add_argument("addr")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--interval-ms", type=float, default=100)
    a = p.parse_args()
    try:
        with open(f"/sys/class/net/{a.dev}/address") as f:
            mac = bytes.fromhex(f.read().strip().replace(":", ""))
        addr = socket.inet_aton(a.addr.split("/")[0])
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
            s.bind((a.dev, ETH_P_ARP))
            for i in range(max(1, a.count)):
                if i:
                    time.sleep(a.interval_ms / 1000.0)
                s.send(frame(mac, addr))
    except OSError as e:
        print(f"garp: {a.dev} {a.addr}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
