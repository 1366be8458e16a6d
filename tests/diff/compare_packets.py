#!/usr/bin/python3
"""Compare the datagrams the firewall emitted: the kernel's (captured on each side of the oracle)
with ctsyncd's (`ctsyncd replay --write`, one LINKTYPE_RAW pcap for both sides).

Per side, in order:
  * ours are split into sides by destination (inside prefixes: client side);
  * the kernel's fragments are reassembled (the kernel refragments what it reassembled; ctsyncd
    writes the datagram whole), and compared with ours whole: addresses, TTL, IP id, ports,
    L4 payload and checksum byte for byte, with "reassembled from N fragments" in messages;
  * random NAT choices: for every Mapping (a flow whose translated port / ICMP id the kernel drew
    at random, with the kernel's and our value, from compare.compare_nat) our value is replaced by
    the kernel's wherever that flow's translated endpoint appears (the packet's own header or the
    header an ICMP error quotes), with the checksums that cover it updated (RFC 1624); everything
    else must then be equal byte for byte;
  * our checksums are verified independently (pktutil), so a wrong checksum is named as such;
  * sequences are aligned (difflib), so a missing or extra packet is reported as one, and a
    differing packet with the fields that differ (scapy's dissection: "TCP.sport: kernel 40000,
    ours 40001").

CLI (for a look at one scenario's outputs):
  compare_packets.py --kernel-client C.pcap --kernel-server S.pcap --ours O.pcap [--input IN.pcap]
  compare_packets.py --dump F.pcap              # one summary line per datagram
"""

from __future__ import annotations

import argparse
import difflib
import struct
import sys
from dataclasses import dataclass

import pktutil
from nat_rules import is_inside


@dataclass(frozen=True)
class Mapping:
    """A random choice of the kernel and ours for one flow: where the translated endpoint is
    (rand_addr with the port / id `ours` on our side, `kernel` on the kernel's) and its peer."""
    proto: int
    rand_addr: str
    peer_addr: str
    peer_port: int | None      # None for ICMP
    ours: int
    kernel: int
    what: str = ""

    def describe(self) -> str:
        return f"{self.what}: kernel chose {self.kernel}, ours {self.ours}"


# ---------------------------------------------------------------------------------------------
def _w16(b: bytearray, off: int) -> int:
    return struct.unpack_from("!H", b, off)[0]


def _set16(b: bytearray, off: int, new: int, covers: list):
    """Write a 16-bit word and update each checksum covering it. covers: [(csum_off,
    covers_of_that_checksum, udp_rules)]: udp_rules = a zero checksum stays zero and a computed
    zero is written 0xffff."""
    old = _w16(b, off)
    if old == new:
        return
    struct.pack_into("!H", b, off, new)
    for coff, ccov, udp in covers:
        if coff is None or coff + 2 > len(b):
            continue
        oc = _w16(b, coff)
        if udp and oc == 0:
            continue
        nc = pktutil.incremental(oc, struct.pack("!H", old), struct.pack("!H", new))
        if udp and nc == 0:
            nc = 0xFFFF
        _set16(b, coff, nc, ccov)


def substitute(raw: bytes, maps: list[Mapping]) -> tuple[bytes, list[str]]:
    """Our packet with our random values replaced by the kernel's; which mappings applied."""
    if not maps:
        return raw, []
    try:
        p = pktutil.parse(raw)
    except pktutil.ParseError:
        return raw, []
    b = bytearray(raw)
    used = []

    def apply(pk: pktutil.Pkt, covers_outer: list):
        h = pk.l4
        if h is None or h.sport is None:
            return
        # UDP and UDP-Lite (the kernel's __udp_manip_pkt): a zero checksum stays zero, a
        # computed zero is written 0xffff.
        own = (h.csum_off, covers_outer, pk.proto in (17, 136))
        for m in maps:
            if m.proto != pk.proto:
                continue
            if h.icmp_type is not None:   # ICMP query: the id
                if h.sport != m.ours:
                    continue
                if (pk.src, pk.dst) in ((m.rand_addr, m.peer_addr), (m.peer_addr, m.rand_addr)):
                    _set16(b, h.off + 4, m.kernel, [own] + covers_outer)
                    used.append(m.what)
                    return
                continue
            if (pk.src, h.sport) == (m.rand_addr, m.ours) and (pk.dst, h.dport) == \
                    (m.peer_addr, m.peer_port):
                _set16(b, h.off, m.kernel, [own] + covers_outer)
                used.append(m.what)
                return
            if (pk.dst, h.dport) == (m.rand_addr, m.ours) and (pk.src, h.sport) == \
                    (m.peer_addr, m.peer_port):
                _set16(b, h.off + 2, m.kernel, [own] + covers_outer)
                used.append(m.what)
                return

    if not p.frag:
        apply(p, [])
        if p.inner is not None and p.l4 is not None:
            # the quoted header: covered by its own checksum (if quoted) and the ICMP checksum
            apply(p.inner, [(p.l4.csum_off, [], False)])
    return bytes(b), used


# ---------------------------------------------------------------------------------------------
def _scapy(raw: bytes):
    from scapy.all import IP, IPv6  # type: ignore
    return IPv6(raw) if raw and raw[0] >> 4 == 6 else IP(raw)


def _fmt(v) -> str:
    if isinstance(v, bytes):
        return repr(v[:24]) + ("..." if len(v) > 24 else "")
    if isinstance(v, int) and v > 255:
        return f"{v} (0x{v:x})"
    return repr(v) if isinstance(v, str) else str(v)


def field_diffs(kraw: bytes, oraw: bytes, limit: int = 8) -> list[str]:
    """The fields that differ, layer by layer, as scapy dissects the two datagrams."""
    out = []
    try:
        k, o = _scapy(kraw), _scapy(oraw)
    except Exception as e:   # noqa: BLE001 - scapy raises many things on garbage
        return [f"(cannot dissect: {e})"]
    from scapy.packet import NoPayload, Raw  # type: ignore
    path = []
    while not isinstance(k, NoPayload) and not isinstance(o, NoPayload):
        cls = k.__class__.__name__
        if k.__class__ is not o.__class__:
            out.append(f"layer {'/'.join(path + [cls])}: ours has {o.__class__.__name__}")
            break
        path.append(cls)
        if isinstance(k, Raw):
            kb, ob = bytes(k.load), bytes(o.load)
            under = k.underlayer
            if under is not None and getattr(under, "proto", getattr(under, "nh", None)) == 136:
                # scapy has no UDP-Lite layer: name its header fields here
                for name, lo, hi in (("sport", 0, 2), ("dport", 2, 4), ("cscov", 4, 6),
                                     ("chksum", 6, 8)):
                    if kb[lo:hi] != ob[lo:hi] and len(kb) >= hi and len(ob) >= hi:
                        vk = struct.unpack("!H", kb[lo:hi])[0]
                        vo = struct.unpack("!H", ob[lo:hi])[0]
                        out.append(f"UDPLite.{name}: kernel {_fmt(vk)}, ours {_fmt(vo)}")
                kb, ob = kb[8:], ob[8:]
            if kb != ob:
                i = next((n for n in range(min(len(kb), len(ob))) if kb[n] != ob[n]),
                         min(len(kb), len(ob)))
                out.append(f"{cls} payload: {len(kb)} vs {len(ob)} bytes, first difference "
                           f"at byte {i}")
            break
        for f in k.fields_desc:
            vk, vo = k.getfieldval(f.name), o.getfieldval(f.name)
            if vk != vo:
                out.append(f"{cls}.{f.name}: kernel {_fmt(vk)}, ours {_fmt(vo)}")
        k, o = k.payload, o.payload
    else:
        if isinstance(k, NoPayload) != isinstance(o, NoPayload):
            out.append("ours has " + ("more" if isinstance(k, NoPayload) else "fewer") +
                       " layers")
    if not out and kraw != oraw:
        i = next((n for n in range(min(len(kraw), len(oraw))) if kraw[n] != oraw[n]),
                 min(len(kraw), len(oraw)))
        out.append(f"bytes differ from offset {i} ({len(kraw)} vs {len(oraw)} bytes)")
    if len(out) > limit:
        out = out[:limit] + [f"... {len(out) - limit} more fields"]
    return out


# ---------------------------------------------------------------------------------------------
@dataclass
class Dgram:
    raw: bytes            # as compared (ours: after substitution)
    orig: bytes           # as written / reassembled, before substitution
    index: int            # 1-based position in this side's list of datagrams
    frags: int = 1        # fragments it was reassembled from
    ts: float | None = None
    used: tuple = ()

    def label(self, who: str) -> str:
        s = f"{who} #{self.index}"
        if self.frags > 1:
            s += f", reassembled from {self.frags} fragments"
        return s


def _assemble(datagrams: list[tuple[float | None, bytes]]) -> tuple[list[Dgram], int, list[str]]:
    r = pktutil.Reassembler()
    out, nfrag = [], 0
    for ts, raw in datagrams:
        got = r.feed(raw)
        try:
            if pktutil.parse(raw).frag:
                nfrag += 1
        except pktutil.ParseError:
            pass
        if got is None:
            continue
        whole, n = got
        out.append(Dgram(whole, whole, len(out) + 1, n, ts))
    return out, nfrag, r.leftovers()


def compare_side(side: str, kernel: list[bytes], ours: list[tuple[float, bytes]],
                 maps: list[Mapping]) -> list[str]:
    diffs = []
    kd, _kf, kleft = _assemble([(None, x) for x in kernel])
    od, of, oleft = _assemble(ours)
    for x in kleft:
        diffs.append(f"packets {side} side: the kernel's capture has {x} (test problem?)")
    if of:
        diffs.append(f"packets {side} side: ours wrote {of} IP fragments; the contract is to "
                     f"write the reassembled datagram whole")
    for x in oleft:
        diffs.append(f"packets {side} side: ours: {x}")
    for d in od:
        d.raw, used = substitute(d.orig, maps)
        d.used = tuple(used)
    # Every packet of a random flow must carry that flow's value: as many of ours carry our
    # value as the kernel's carry its own (a packet of ours with another value, even the
    # kernel's, breaks the count).
    for m in maps:
        same = Mapping(m.proto, m.rand_addr, m.peer_addr, m.peer_port, m.kernel, m.kernel,
                       m.what)
        nk = sum(1 for d in kd if substitute(d.raw, [same])[1])
        no = sum(1 for d in od if m.what in d.used)
        if nk != no:
            diffs.append(f"packets {side} side: {m.what}: {nk} of the kernel's datagrams carry "
                         f"its value {m.kernel}, {no} of ours carry our value {m.ours} (a packet "
                         f"of this flow uses another value?)")
    ka = [d.raw for d in kd]
    oa = [d.raw for d in od]
    sm = difflib.SequenceMatcher(None, ka, oa, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            for kdg, d in zip(kd[i1:i2], od[j1:j2]):
                # what the kernel emits too is no fault of ours (IPv6 UDP with checksum 0, and
                # UDP-Lite, whose checksum Linux computes with protocol 17 in the pseudo header)
                kinds = {_kind(x) for x in _checks(kdg.raw)}
                for prob in _checks(d.orig):
                    if _kind(prob) not in kinds:
                        diffs.append(f"packets {side} side, {d.label('ours')}: {prob} "
                                     f"[{pktutil.summary(d.orig)}]")
            continue
        n = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k in range(n):
            kdg, odg = kd[i1 + k], od[j1 + k]
            diffs.append(f"packets {side} side: {kdg.label('kernel')} and {odg.label('ours')} "
                         f"differ:")
            diffs.append(f"    kernel: {pktutil.summary(kdg.raw)}")
            diffs.append(f"    ours:   {pktutil.summary(odg.orig)}")
            kinds = {_kind(x) for x in _checks(kdg.raw)}
            for prob in _checks(odg.orig):
                if _kind(prob) not in kinds:
                    diffs.append(f"    ours: {prob}")
            for fd in field_diffs(kdg.raw, odg.raw):
                diffs.append(f"    {fd}")
            if odg.used:
                diffs.append(f"    (random fields replaced by the kernel's before comparing: "
                             f"{', '.join(odg.used)})")
        for kdg in kd[i1 + n:i2]:
            diffs.append(f"packets {side} side: missing in ours: {kdg.label('kernel')}: "
                         f"{pktutil.summary(kdg.raw)}")
        for odg in od[j1 + n:j2]:
            diffs.append(f"packets {side} side: extra in ours: {odg.label('ours')}: "
                         f"{pktutil.summary(odg.orig)}")
            for prob in _checks(odg.orig):
                diffs.append(f"    ours: {prob}")
    if len(kd) != len(od):
        diffs.append(f"packets {side} side: kernel emitted {len(kd)} datagrams, ours {len(od)}")
    return diffs


def _kind(problem: str) -> str:
    return problem.split(" checksum")[0]


def _checks(raw: bytes) -> list[str]:
    try:
        return pktutil.checksum_problems(pktutil.parse(raw))
    except pktutil.ParseError as e:
        return [f"unparsable: {e}"]


def split_ours(records: list[tuple[float, bytes]]) -> tuple[list, list]:
    client, server = [], []
    for ts, raw in records:
        raw = pktutil.trim(raw)
        try:
            p = pktutil.parse(raw)
            inside = is_inside(p.dst)
        except (pktutil.ParseError, ValueError):
            inside = False
        (client if inside else server).append((ts, raw))
    return client, server


def check_timestamps(records: list[tuple[float, bytes]], input_pcap: str | None) -> list[str]:
    """Our records carry the timestamps of input packets, in non-decreasing order."""
    out = []
    stamps = None
    if input_pcap:
        _lt, inp = pktutil.read_pcap(input_pcap)
        stamps = sorted(ts for ts, _ in inp)
    last = None
    for n, (ts, _raw) in enumerate(records, 1):
        if last is not None and ts + 1e-6 < last:
            out.append(f"packets: ours record #{n} has timestamp {ts:.6f}, before the previous "
                       f"record's {last:.6f}")
            break
        last = ts
        if stamps is not None:
            import bisect
            i = bisect.bisect_left(stamps, ts - 2e-6)
            if i >= len(stamps) or abs(stamps[i] - ts) > 2e-6:
                out.append(f"packets: ours record #{n} has timestamp {ts:.6f}, which no input "
                           f"packet has")
                break
    return out


def compare_files(kernel_client: str, kernel_server: str, ours_pcap: str,
                  maps: list[Mapping] | None = None, input_pcap: str | None = None) -> list[str]:
    maps = maps or []
    try:
        lt, recs = pktutil.read_pcap(ours_pcap)
    except (OSError, ValueError) as e:
        return [f"packets: cannot read ours: {e}"]
    diffs = []
    if lt != 101:
        diffs.append(f"packets: ours has link type {lt}, expected 101 (LINKTYPE_RAW)")
    diffs += check_timestamps(recs, input_pcap)
    oc, os_ = split_ours(recs)
    kc = pktutil.ip_datagrams(kernel_client)
    ks = pktutil.ip_datagrams(kernel_server)
    diffs += compare_side("client", kc, oc, maps)
    diffs += compare_side("server", ks, os_, maps)
    if diffs and maps:
        diffs.append("packets: random mappings: " + "; ".join(m.describe() for m in maps))
    return diffs


def dump(path: str) -> int:
    for n, raw in enumerate(pktutil.ip_datagrams(path), 1):
        probs = _checks(raw)
        print(f"#{n} {pktutil.summary(raw)}" + (f"  !! {'; '.join(probs)}" if probs else ""))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compare emitted datagrams, kernel vs ctsyncd")
    ap.add_argument("--kernel-client")
    ap.add_argument("--kernel-server")
    ap.add_argument("--ours")
    ap.add_argument("--input", help="the replayed pcap (timestamps of ours are checked)")
    ap.add_argument("--dump", help="print one line per datagram of a capture")
    a = ap.parse_args(argv)
    if a.dump:
        return dump(a.dump)
    if not (a.kernel_client and a.kernel_server and a.ours):
        ap.error("--kernel-client, --kernel-server and --ours are needed (or --dump)")
    diffs = compare_files(a.kernel_client, a.kernel_server, a.ours, [], a.input)
    for d in diffs:
        print(d)
    if not diffs:
        print("equal")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
