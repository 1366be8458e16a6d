#!/usr/bin/python3
"""Raw IP datagram helpers for the NAT differential tests (no scapy needed here).

parse(raw) finds the fields NAT touches (addresses, ports / ICMP id, checksums, TTL, fragment
information, an ICMP error's quoted packet) by offset, so that packets can be compared, checked
and patched byte by byte. Checksums are computed here from the RFCs, independently of both the
kernel and ctsyncd (the self test cross-checks them against scapy).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 136: "udplite", 132: "sctp",
               33: "dccp", 47: "gre"}
PORT_PROTOS = (6, 17, 136, 132, 33)
ICMP4_ERRORS = (3, 4, 5, 11, 12)
ICMP6_ERRORS = (1, 2, 3, 4)
ICMP4_QUERIES = (8, 0, 13, 14, 15, 16, 17, 18)
ICMP6_QUERIES = (128, 129)
V6_EXT = (0, 43, 60, 44, 51)   # hop-by-hop, routing, dest options, fragment, AH


def csum_add(data: bytes, start: int = 0) -> int:
    """One's complement sum (not yet inverted) of data, 16 bits."""
    if len(data) % 2:
        data = data + b"\x00"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum(data: bytes, start: int = 0) -> int:
    return (~csum_add(data, start)) & 0xFFFF


def pseudo(version: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if version == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


@dataclass
class L4:
    """One transport header (the packet's own, or the one quoted inside an ICMP error)."""
    proto: int
    off: int                      # offset of the L4 header in the raw bytes
    length: int                   # bytes of L4 present (header + payload, maybe truncated)
    sport: int | None = None      # ports, or for ICMP queries the id in sport (dport None)
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    csum_off: int | None = None   # offset of the L4 checksum field


@dataclass
class Pkt:
    raw: bytes
    version: int
    src: str
    dst: str
    src_b: bytes
    dst_b: bytes
    l3_off: int                   # 0 for the packet itself, else offset of a quoted packet
    l4_off: int
    proto: int                    # final protocol (after IPv6 extension headers)
    ttl: int
    total_len: int                # as the header says
    frag: tuple | None = None     # (id, offset_bytes, more_fragments, frag_hdr_off) if a fragment
    l4: L4 | None = None
    inner: "Pkt | None" = None    # the datagram an ICMP error quotes
    ext_types: list = field(default_factory=list)

    @property
    def l4name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    def is_icmp_error(self) -> bool:
        if self.l4 is None or self.l4.icmp_type is None:
            return False
        errs = ICMP4_ERRORS if self.version == 4 else ICMP6_ERRORS
        return self.l4.icmp_type in errs


class ParseError(ValueError):
    pass


def parse(raw: bytes, base: int = 0, quoted: bool = False) -> Pkt:
    """Parse the IP datagram starting at raw[base:]. Quoted packets (inside ICMP errors) may be
    truncated: their lengths are taken from what is there."""
    b = raw
    if len(b) < base + 1:
        raise ParseError("empty")
    ver = b[base] >> 4
    if ver == 4:
        if len(b) < base + 20:
            raise ParseError("truncated IPv4 header")
        ihl = (b[base] & 0xF) * 4
        tot = struct.unpack_from("!H", b, base + 2)[0]
        ident, fl = struct.unpack_from("!HH", b, base + 4)
        ttl, proto = b[base + 8], b[base + 9]
        src_b, dst_b = b[base + 12:base + 16], b[base + 16:base + 20]
        l4_off = base + ihl
        frag = None
        if fl & 0x3FFF:
            frag = (ident, (fl & 0x1FFF) * 8, bool(fl & 0x2000), None)
        p = Pkt(raw, 4, str(ipaddress.IPv4Address(src_b)), str(ipaddress.IPv4Address(dst_b)),
                src_b, dst_b, base, l4_off, proto, ttl, tot, frag)
        end = base + tot if not quoted else len(b)
        end = min(end, len(b))
    elif ver == 6:
        if len(b) < base + 40:
            raise ParseError("truncated IPv6 header")
        plen = struct.unpack_from("!H", b, base + 4)[0]
        nh, hlim = b[base + 6], b[base + 7]
        src_b, dst_b = b[base + 8:base + 24], b[base + 24:base + 40]
        off = base + 40
        frag = None
        exts = []
        while nh in V6_EXT and off + 8 <= len(b):
            exts.append(nh)
            if nh == 44:
                fo = struct.unpack_from("!H", b, off + 2)[0]
                ident = struct.unpack_from("!I", b, off + 4)[0]
                frag = (ident, fo & 0xFFF8, bool(fo & 1), off)
                nh = b[off]
                off += 8
                if fo & 0xFFF8:
                    break   # not the first fragment: no L4 header here
                continue
            hl = (b[off + 1] + 2) * 4 if nh == 51 else (b[off + 1] + 1) * 8
            nh = b[off]
            off += hl
        p = Pkt(raw, 6, str(ipaddress.IPv6Address(src_b)), str(ipaddress.IPv6Address(dst_b)),
                src_b, dst_b, base, off, nh, hlim, plen + 40, frag, ext_types=exts)
        end = min(base + 40 + plen, len(b)) if not quoted else len(b)
    else:
        raise ParseError(f"IP version {ver}")
    if p.frag and p.frag[1] != 0:
        return p   # a non-first fragment: no transport header
    o = p.l4_off
    avail = end - o
    if avail <= 0:
        return p
    proto = p.proto
    l4 = L4(proto, o, avail)
    if proto in PORT_PROTOS and avail >= 4:
        l4.sport, l4.dport = struct.unpack_from("!HH", b, o)
        co = {6: 16, 17: 6, 136: 6}.get(proto)
        if co is not None and avail >= co + 2:
            l4.csum_off = o + co
    elif proto in (1, 58) and avail >= 4:
        l4.icmp_type, l4.icmp_code = b[o], b[o + 1]
        l4.csum_off = o + 2
        queries = ICMP4_QUERIES if proto == 1 else ICMP6_QUERIES
        if l4.icmp_type in queries and avail >= 6:
            l4.sport = struct.unpack_from("!H", b, o + 4)[0]
        errs = ICMP4_ERRORS if proto == 1 else ICMP6_ERRORS
        if l4.icmp_type in errs and not quoted and avail > 8:
            try:
                p.inner = parse(b[:end], o + 8, quoted=True)
            except ParseError:
                p.inner = None
    p.l4 = l4
    return p


def l4_checksum(p: Pkt, data: bytes | None = None) -> int | None:
    """The correct L4 checksum of a whole (not truncated, not fragmented) packet; None when the
    protocol has none we know. For UDP-Lite the coverage field is honoured."""
    b = bytearray(p.raw if data is None else data)
    l4 = p.l4
    if l4 is None or l4.csum_off is None:
        return None
    end = p.l3_off + p.total_len
    seg = bytes(b[l4.off:end])
    co = l4.csum_off - l4.off
    seg = seg[:co] + b"\x00\x00" + seg[co + 2:]
    if p.proto == 1:
        return csum(seg)
    length = len(seg)
    if p.proto == 136:
        cov = struct.unpack_from("!H", seg, 4)[0]
        covered = seg if cov == 0 else seg[:cov]
        c = csum(covered, csum_add(pseudo(p.version, p.src_b, p.dst_b, p.proto, length)))
        return c or 0xFFFF
    c = csum(seg, csum_add(pseudo(p.version, p.src_b, p.dst_b, p.proto, length)))
    if p.proto == 17 and c == 0:
        return 0xFFFF
    return c


def ipv4_header_checksum(p: Pkt) -> int:
    b = p.raw
    ihl = (b[p.l3_off] & 0xF) * 4
    h = b[p.l3_off:p.l3_off + ihl]
    return csum(h[:10] + b"\x00\x00" + h[12:])


def checksum_problems(p: Pkt) -> list[str]:
    """What is wrong with the checksums of a complete packet (empty list: all correct)."""
    out = []
    if p.version == 4:
        want = ipv4_header_checksum(p)
        have = struct.unpack_from("!H", p.raw, p.l3_off + 10)[0]
        if want != have:
            out.append(f"IPv4 header checksum 0x{have:04x}, correct is 0x{want:04x}")
    if p.frag or p.l4 is None or p.l4.csum_off is None:
        return out
    if p.l3_off + p.total_len > len(p.raw):
        return out + [f"truncated: header says {p.total_len} bytes, {len(p.raw)} present"]
    have = struct.unpack_from("!H", p.raw, p.l4.csum_off)[0]
    if p.proto == 17 and have == 0 and p.version == 4:
        return out   # no checksum: legal for IPv4
    want = l4_checksum(p)
    if want is not None and want != have:
        out.append(f"{p.l4name.upper()} checksum 0x{have:04x}, correct is 0x{want:04x}")
    return out


def incremental(old_csum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 update of a checksum field when bytes `old` become `new` (even lengths)."""
    s = csum_add(bytes((~x) & 0xFF for x in old), (~old_csum) & 0xFFFF)
    s = csum_add(new, s)
    return (~s) & 0xFFFF


def summary(raw: bytes) -> str:
    """One line: protocol, addresses, ports, flags / ICMP type, length, TTL; the quoted packet of
    an ICMP error in brackets."""
    try:
        p = parse(raw)
    except ParseError as e:
        return f"<unparsable: {e}; {len(raw)} bytes>"
    return _summary(p)


def _fmt(addr: str, port, v: int) -> str:
    if port is None:
        return addr
    return f"{addr}:{port}" if v == 4 else f"[{addr}]:{port}"


def _summary(p: Pkt, inner: bool = False) -> str:
    fam = "IPv4" if p.version == 4 else "IPv6"
    s = f"{fam} {p.l4name}"
    l4 = p.l4
    if p.frag:
        s += f" fragment(id=0x{p.frag[0]:x} off={p.frag[1]} mf={int(p.frag[2])})"
    if l4 is not None and l4.icmp_type is None and l4.sport is not None:
        s += f" {_fmt(p.src, l4.sport, p.version)} > {_fmt(p.dst, l4.dport, p.version)}"
        if p.proto == 6 and l4.length >= 14:
            fl = p.raw[l4.off + 13]
            names = "".join(c for i, c in enumerate("FSRPAUEC") if fl & (1 << i))
            seq = struct.unpack_from("!I", p.raw, l4.off + 4)[0]
            s += f" [{names}] seq={seq}"
    else:
        s += f" {p.src} > {p.dst}"
        if l4 is not None and l4.icmp_type is not None:
            s += f" type={l4.icmp_type}/{l4.icmp_code}"
            if l4.sport is not None:
                s += f" id={l4.sport}"
    if not inner:
        s += f" len={p.total_len} ttl={p.ttl}"
    if p.inner is not None:
        s += " quoting [" + _summary(p.inner, True) + "]"
    return s


# ---------------------------------------------------------------------------------------------
# Reassembly (the kernel refragments what it reassembled; ctsyncd writes the datagram whole)
# ---------------------------------------------------------------------------------------------
class Reassembler:
    """Feed datagrams in order; get back complete datagrams (fragments joined, at the position of
    the fragment that completed them) with the number of fragments each was made of."""

    def __init__(self):
        self.pending: dict[tuple, dict] = {}

    def feed(self, raw: bytes) -> tuple[bytes, int] | None:
        try:
            p = parse(raw)
        except ParseError:
            return raw, 1
        if not p.frag:
            return raw, 1
        ident, off, mf, fh = p.frag
        key = (p.version, p.src, p.dst, ident, p.proto if p.version == 4 else None)
        st = self.pending.setdefault(key, {"pieces": {}, "end": None, "first": None, "n": 0})
        st["n"] += 1
        data_off = p.l4_off
        end_of_packet = p.l3_off + p.total_len
        st["pieces"][off] = raw[data_off:end_of_packet]
        if not mf:
            st["end"] = off + (end_of_packet - data_off)
        if off == 0:
            st["first"] = (p, raw)
        if st["end"] is None or st["first"] is None:
            return None
        data = bytearray()
        pos = 0
        for o in sorted(st["pieces"]):
            if o > pos:
                return None
            piece = st["pieces"][o]
            data += piece[pos - o:] if o < pos else piece
            pos = max(pos, o + len(piece))
        if pos < st["end"]:
            return None
        del self.pending[key]
        fp, fraw = st["first"]
        payload = bytes(data[:st["end"]])
        if fp.version == 4:
            ihl = (fraw[0] & 0xF) * 4
            h = bytearray(fraw[:ihl])
            struct.pack_into("!H", h, 2, ihl + len(payload))
            fl = struct.unpack_from("!H", h, 6)[0] & 0x4000   # keep DF only
            struct.pack_into("!H", h, 6, fl)
            struct.pack_into("!H", h, 10, 0)
            struct.pack_into("!H", h, 10, csum(bytes(h)))
            return bytes(h) + payload, st["n"]
        # IPv6: drop the fragment header, splice its next header into the chain
        fh = fp.frag[3]
        head = bytearray(fraw[:fh])
        nh = fraw[fh]
        # the next-header field pointing at the fragment header: the base header's, or that of
        # the extension header right before it
        off, prev = 40, 6
        while off < fh:
            prev = off
            off += (fraw[off + 1] + 1) * 8
        head[prev] = nh
        out = bytes(head) + payload
        out = bytearray(out)
        struct.pack_into("!H", out, 4, len(out) - 40)
        return bytes(out), st["n"]

    def leftovers(self) -> list[str]:
        return [f"incomplete fragments id=0x{k[3]:x} {k[1]} > {k[2]} ({v['n']} fragments)"
                for k, v in self.pending.items()]


# ---------------------------------------------------------------------------------------------
# pcap files (classic format) without scapy: Ethernet (1) and raw IP (101 / 228 / 229)
# ---------------------------------------------------------------------------------------------
def read_pcap(path: str) -> tuple[int, list[tuple[float, bytes]]]:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise ValueError(f"{path}: not a pcap file ({len(data)} bytes)")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (magic {magic.hex()})")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(e + "I", data, 20)[0] & 0x0FFFFFFF
    recs = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(e + "IIII", data, off)
        off += 16
        if off + incl > len(data):
            raise ValueError(f"{path}: record {len(recs) + 1} truncated")
        recs.append((sec + frac / (1e9 if nano else 1e6), data[off:off + incl]))
        off += incl
    return linktype, recs


def write_pcap(path: str, records: list[tuple[float, bytes]], linktype: int = 101):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for ts, raw in records:
            sec = int(ts)
            usec = int(round((ts - sec) * 1e6))
            if usec >= 1000000:
                sec, usec = sec + 1, usec - 1000000
            f.write(struct.pack("<IIII", sec, usec, len(raw), len(raw)))
            f.write(raw)


ND_MLD_TYPES = {130, 131, 132, 133, 134, 135, 136, 137, 143}


def ip_datagrams(path: str) -> list[bytes]:
    """The IP datagrams of a capture, in order: Ethernet stripped (VLAN tags too), non-IP
    (ARP, ...) and IPv6 neighbour discovery / MLD left out; Ethernet padding cut off."""
    lt, recs = read_pcap(path)
    out = []
    for _ts, fr in recs:
        if lt == 1:
            if len(fr) < 14:
                continue
            et = struct.unpack_from("!H", fr, 12)[0]
            off = 14
            while et in (0x8100, 0x88A8) and len(fr) >= off + 4:
                et = struct.unpack_from("!H", fr, off + 2)[0]
                off += 4
            if et not in (0x0800, 0x86DD):
                continue
            ip = fr[off:]
        elif lt in (101, 228, 229, 12, 14):
            ip = fr
        else:
            raise ValueError(f"{path}: link type {lt} not handled")
        ip = trim(ip)
        if not ip:
            continue
        if ip[0] >> 4 == 6:
            try:
                p = parse(ip)
                if p.proto == 58 and p.l4 and p.l4.icmp_type in ND_MLD_TYPES:
                    continue
            except ParseError:
                pass
        out.append(ip)
    return out


def trim(ip: bytes) -> bytes:
    """Cut link-layer padding after the IP datagram."""
    if not ip:
        return ip
    v = ip[0] >> 4
    if v == 4 and len(ip) >= 4:
        n = struct.unpack_from("!H", ip, 2)[0]
        return ip[:n] if 20 <= n <= len(ip) else ip
    if v == 6 and len(ip) >= 6:
        n = struct.unpack_from("!H", ip, 4)[0] + 40
        return ip[:n] if n <= len(ip) else ip
    return ip
