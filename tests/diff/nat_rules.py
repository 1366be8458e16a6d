#!/usr/bin/python3
"""NAT rules of the differential scenarios, written once and turned into both rule sets.

A scenario lists Rule objects; nft_ruleset() makes the `table inet ctsnat` the kernel oracle
loads, toml_rules() the `[[nat.rule]]` tables (plus `[replay]`) `ctsyncd replay` reads. Both come
from the same objects, so the two sides cannot drift: every key maps to exactly one nft match or
statement argument.

  Rule(type, family=None, protocol=None, source=None, destination=None, sport=None, dport=None,
       in_interface=None, out_interface=None, zone=None, to_address=None, to_port=None, flags=())

dnat/redirect rules go to the prerouting chain, snat/masquerade to the postrouting chain, each in
the order written (first match wins: the nat statements are terminal in nft).

Randomness: a Random object names a flow (by its original tuple) whose translated port / ICMP id
the kernel draws at random; compare.py and compare_packets.py then check that value by property
(in range, unique, the same for all of that flow's records and packets) instead of exactly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

TYPES = ("snat", "dnat", "masquerade", "redirect")
FAMILIES = ("ipv4", "ipv6")
PROTOCOLS = ("tcp", "udp", "udplite", "icmp", "icmpv6", "sctp", "dccp", "gre")
PORT_PROTOCOLS = ("tcp", "udp", "udplite", "sctp", "dccp")
FLAGS = ("persistent", "random", "fully-random")

# What the oracle's tracker namespace and ctsyncd's [replay] section agree on.
IN_INTERFACE, OUT_INTERFACE = "trkc", "trks"
INSIDE = ("10.231.1.0/24", "fd00:231:1::/64")
OUT_ADDRESSES = ("10.231.2.1", "fd00:231:2::1")
IN_ADDRESSES = ("10.231.1.1", "fd00:231:1::1")


class RuleError(ValueError):
    pass


def _fam_of(addr: str) -> str:
    return "ipv4" if ipaddress.ip_network(addr, strict=False).version == 4 else "ipv6"


def _ports(text: str, what: str) -> tuple[int, int]:
    parts = str(text).split("-")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise RuleError(f"{what} {text!r} is not N or N-M")
    lo, hi = int(parts[0]), int(parts[-1])
    if not (0 <= lo <= hi <= 65535):
        raise RuleError(f"{what} {text!r} out of range")
    return lo, hi


@dataclass(frozen=True)
class Rule:
    type: str
    family: str | None = None
    protocol: str | None = None
    source: str | None = None
    destination: str | None = None
    sport: str | None = None
    dport: str | None = None
    in_interface: str | None = None
    out_interface: str | None = None
    zone: int | None = None
    to_address: str | None = None
    to_port: str | None = None
    flags: tuple = ()

    def __post_init__(self):
        self.check()

    def check(self):
        if self.type not in TYPES:
            raise RuleError(f"type {self.type!r} not one of {TYPES}")
        if self.family is not None and self.family not in FAMILIES:
            raise RuleError(f"family {self.family!r}")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise RuleError(f"protocol {self.protocol!r}")
        for f in self.flags:
            if f not in FLAGS:
                raise RuleError(f"flag {f!r} not one of {FLAGS}")
        for what in ("source", "destination"):
            v = getattr(self, what)
            if v is not None:
                ipaddress.ip_network(v)   # strict: no host bits beyond the prefix
                if self.family is None or _fam_of(v) != self.family:
                    raise RuleError(f"{what} {v} needs family {_fam_of(v)} spelled out")
        if (self.sport or self.dport) and self.protocol not in PORT_PROTOCOLS:
            raise RuleError("sport/dport need a protocol with ports")
        for what in ("sport", "dport", "to_port"):
            if getattr(self, what) is not None:
                _ports(getattr(self, what), what)
        if self.to_port is not None and self.protocol is None:
            raise RuleError("to_port needs a protocol (nft: 'transport protocol mapping is only "
                            "valid after transport protocol match')")
        if self.type in ("dnat", "redirect") and self.out_interface:
            raise RuleError("dnat/redirect are decided at prerouting: no out_interface there")
        if self.type in ("snat", "dnat"):
            if not self.to_address:
                raise RuleError(f"{self.type} needs to_address")
            for a in self.to_address.split("-"):
                ipaddress.ip_address(a)
                if self.family is None or _fam_of(a) != self.family:
                    raise RuleError(f"to_address {a} needs family {_fam_of(a)} spelled out")
        elif self.to_address:
            raise RuleError(f"{self.type} takes no to_address")

    @property
    def hook(self) -> str:
        return "pre" if self.type in ("dnat", "redirect") else "post"

    # -- nft ----------------------------------------------------------------------------------
    def nft(self) -> str:
        m = []
        ipk = {"ipv4": "ip", "ipv6": "ip6", None: None}[self.family]
        if self.family:
            m.append(f"meta nfproto {self.family}")
        if self.in_interface:
            m.append(f'iifname "{self.in_interface}"')
        if self.out_interface:
            m.append(f'oifname "{self.out_interface}"')
        if self.zone is not None:
            m.append(f"ct zone {int(self.zone)}")
        if self.source:
            m.append(f"{ipk} saddr {self.source}")
        if self.destination:
            m.append(f"{ipk} daddr {self.destination}")
        if self.protocol:
            m.append(f"meta l4proto {self.protocol}")
        if self.sport:
            m.append(f"th sport {self.sport}")
        if self.dport:
            m.append(f"th dport {self.dport}")
        if self.type in ("snat", "dnat"):
            addrs = self.to_address.split("-")
            if self.family == "ipv6" and self.to_port:
                target = "-".join(f"[{a}]" for a in addrs)
            else:
                target = "-".join(addrs)
            if self.to_port:
                target += f":{self.to_port}"
            stmt = f"{self.type} {ipk} to {target}"
        else:
            stmt = self.type
            if self.to_port:
                stmt += f" to :{self.to_port}"
        if self.flags:
            stmt += " " + ",".join(self.flags)
        return " ".join(m + [stmt])

    # -- toml ---------------------------------------------------------------------------------
    def toml(self) -> str:
        lines = ["[[nat.rule]]"]
        for k, v in asdict(self).items():
            if v is None or v == () or v == []:
                continue
            if k == "zone":
                lines.append(f"{k} = {int(v)}")
            elif k == "flags":
                lines.append(f"{k} = [" + ", ".join(f'"{x}"' for x in v) + "]")
            else:
                lines.append(f'{k} = "{v}"')
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        return self.nft()


def nft_ruleset(rules: list[Rule]) -> str:
    pre = [r.nft() for r in rules if r.hook == "pre"]
    post = [r.nft() for r in rules if r.hook == "post"]
    out = ["# generated by tests/diff/nat_rules.py", "table inet ctsnat {",
           "  chain prerouting {",
           "    type nat hook prerouting priority dstnat; policy accept;"]
    out += [f"    {r}" for r in pre]
    out += ["  }", "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;"]
    out += [f"    {r}" for r in post]
    out += ["  }", "}"]
    return "\n".join(out) + "\n"


def toml_rules(rules: list[Rule], drop_invalid: bool = True) -> str:
    """The [[nat.rule]] tables and the [replay] section (no [tracker]: run_diff adds it)."""
    parts = ["# generated by tests/diff/nat_rules.py from the scenario's rules"]
    parts += [r.toml() for r in rules]

    def arr(xs):
        return "[" + ", ".join(f'"{x}"' for x in xs) + "]"
    parts.append("[replay]\n"
                 f"inside = {arr(INSIDE)}\n"
                 f'in_interface = "{IN_INTERFACE}"\n'
                 f'out_interface = "{OUT_INTERFACE}"\n'
                 f"out_addresses = {arr(OUT_ADDRESSES)}\n"
                 f"in_addresses = {arr(IN_ADDRESSES)}\n"
                 f"drop_invalid = {'true' if drop_invalid else 'false'}\n")
    return "\n".join(parts)


def is_inside(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return any(a in ipaddress.ip_network(n) for n in INSIDE)


@dataclass(frozen=True)
class Random:
    """A flow (matched by its original tuple as conntrack prints it) whose translated port or
    ICMP id the kernel chooses at random.

    field "reply.dport": the SNAT / masquerade source port (conntrack's reply dport); for ICMP
    the id (reply id). field "reply.sport": a DNAT destination port chosen at random.
    lo..hi: the range the value must lie in.
    """
    proto: str                 # conntrack's protocol name: tcp, udp, udplite, icmp, icmpv6
    src: str                   # original source address
    sport: int                 # original source port (ICMP: id)
    lo: int
    hi: int
    field: str = "reply.dport"
    dst: str | None = None     # original destination, when src+sport is not unique
    dport: int | None = None
    group: str | None = None   # flows of one group must share the value (a reused mapping)

    def matches(self, l4: str, orig: dict) -> bool:
        if l4 != self.proto or orig.get("src") != self.src:
            return False
        port = orig.get("id") if self.proto in ("icmp", "icmpv6") else orig.get("sport")
        if port is None or int(port) != self.sport:
            return False
        if self.dst is not None and orig.get("dst") != self.dst:
            return False
        if self.dport is not None and int(orig.get("dport", -1)) != self.dport:
            return False
        return True

    def key(self) -> str:
        """The conntrack key of the random value in the reply tuple."""
        if self.proto in ("icmp", "icmpv6"):
            return "id"
        return self.field.split(".")[1]

    def describe(self) -> str:
        what = "ICMP id" if self.proto in ("icmp", "icmpv6") else self.field
        return (f"{self.proto} flow from {self.src} port/id {self.sport}"
                + (f" to {self.dst}" if self.dst else "") + f": {what} random in "
                f"{self.lo}-{self.hi}")


@dataclass
class NatSpec:
    """Everything a NAT scenario adds to a plain one."""
    rules: list = field(default_factory=list)
    random: list = field(default_factory=list)         # Random objects
    same_address: list = field(default_factory=list)   # sources whose flows share one address
    nat_dropped: int = 0                               # packets the kernel drops at NAT setup

    def manifest(self) -> dict:
        return {"rules": [{k: v for k, v in asdict(r).items() if v not in (None, ())}
                          for r in self.rules],
                "random": [asdict(r) for r in self.random],
                "same_address": list(self.same_address),
                "nat_dropped": self.nat_dropped}


def random_from_manifest(d: dict) -> list[Random]:
    return [Random(**x) for x in d.get("random", [])]


# ---------------------------------------------------------------------------------------------
# The kernel's (deterministic) address choice within a range, so that scenarios can address
# replies to the translated address before any run. A reimplementation of find_best_ips_proto()
# in net/netfilter/nf_nat_core.c and jhash2() of include/linux/jhash.h; the oracle's own run
# checks it (a wrong prediction leaves the replies unmatched).
# ---------------------------------------------------------------------------------------------
_M = 0xFFFFFFFF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def jhash2(words: list[int], initval: int) -> int:
    a = b = c = (0xDEADBEEF + (len(words) << 2) + initval) & _M
    k, n, i = list(words), len(words), 0
    while n > 3:
        a = (a + k[i]) & _M
        b = (b + k[i + 1]) & _M
        c = (c + k[i + 2]) & _M
        a = (a - c) & _M; a ^= _rol(c, 4); c = (c + b) & _M      # noqa: E702
        b = (b - a) & _M; b ^= _rol(a, 6); a = (a + c) & _M      # noqa: E702
        c = (c - b) & _M; c ^= _rol(b, 8); b = (b + a) & _M      # noqa: E702
        a = (a - c) & _M; a ^= _rol(c, 16); c = (c + b) & _M     # noqa: E702
        b = (b - a) & _M; b ^= _rol(a, 19); a = (a + c) & _M     # noqa: E702
        c = (c - b) & _M; c ^= _rol(b, 4); b = (b + a) & _M      # noqa: E702
        n -= 3
        i += 3
    if n == 0:
        return c
    if n == 3:
        c = (c + k[i + 2]) & _M
    if n >= 2:
        b = (b + k[i + 1]) & _M
    a = (a + k[i]) & _M
    c ^= b; c = (c - _rol(b, 14)) & _M    # noqa: E702
    a ^= c; a = (a - _rol(c, 11)) & _M    # noqa: E702
    b ^= a; b = (b - _rol(a, 25)) & _M    # noqa: E702
    c ^= b; c = (c - _rol(b, 16)) & _M    # noqa: E702
    a ^= c; a = (a - _rol(c, 4)) & _M     # noqa: E702
    b ^= a; b = (b - _rol(a, 14)) & _M    # noqa: E702
    c ^= b; c = (c - _rol(b, 24)) & _M    # noqa: E702
    return c


def _words_le(addr: str) -> list[int]:
    """union nf_inet_addr as the kernel's u32 array on a little-endian machine."""
    b = ipaddress.ip_address(addr).packed.ljust(16, b"\x00")
    return [int.from_bytes(b[i:i + 4], "little") for i in (0, 4, 8, 12)]


def _words_be(addr: str) -> list[int]:
    b = ipaddress.ip_address(addr).packed.ljust(16, b"\x00")
    return [int.from_bytes(b[i:i + 4], "big") for i in (0, 4, 8, 12)]


def kernel_pick_address(to_address: str, src: str, dst: str, persistent: bool = False,
                        zone: int = 0) -> str:
    """The address the kernel maps a flow src -> dst to within to_address ("A" or "A-B")."""
    parts = to_address.split("-")
    lo, hi = parts[0], parts[-1]
    if lo == hi:
        return lo
    v4 = ipaddress.ip_address(lo).version == 4
    mx = 0 if v4 else 3
    srcw, dstw = _words_le(src), _words_le(dst)
    low, high = _words_be(lo), _words_be(hi)
    j = jhash2(srcw, 0 if persistent else (dstw[mx] ^ zone))
    full = False
    out = []
    for i in range(mx + 1):
        if not full:
            minip, dist = low[i], (high[i] - low[i] + 1) & _M
        else:
            minip, dist = 0, _M
        val = (minip + ((j * dist) >> 32)) & _M
        out.append(val)
        if val != high[i]:
            full = True
        if not persistent:
            j ^= dstw[i]
    packed = b"".join(w.to_bytes(4, "big") for w in out)
    return str(ipaddress.ip_address(packed[:4] if v4 else packed))
