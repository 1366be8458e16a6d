#!/usr/bin/python3
"""Parse conntrack-tools output and compare the kernel's with ours.

Formats understood (what conntrack v1.4.7 prints with -o extended; an optional `[secs.usecs]\\t`
timestamp prefix from -o timestamp is stripped):

  events  [NEW] ipv4     2 tcp      6 120 SYN_SENT src=A dst=B sport=P dport=Q [UNREPLIED] src=B ...
          [UPDATE] ipv4     2 udp      17 30 src=A dst=B sport=P dport=Q src=B dst=A sport=Q dport=P
          [DESTROY] ipv4     2 tcp      6 src=... (no timeout; may lack the state)
  table   ipv4     2 tcp      6 431999 ESTABLISHED src=... src=... [ASSURED] mark=0 use=1

Compared: table entries (keyed by family, protocol and original tuple): state, flags
([UNREPLIED], [ASSURED], ...), both tuples, mark, zone, timeout within ±tolerance; events in
order: type, state (when either side prints one), both tuples, flags, mark/zone when printed,
timeout within ±tolerance when both print one. Ignored: id=, use=, timestamps, counters.

NAT scenarios (compare_nat): the reply-tuple fields the kernel chose at random (nat_rules.Random)
are checked by property (range, one value per flow, groups, unique live reply tuples, persistent
addresses) and masked as <random> before the comparison above.

CLI: compare.py --kernel-events F --kernel-table F --ours F [--tolerance 2]   (exit 1 on diff)
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass, field

TUPLE_KEYS = {"src", "dst", "sport", "dport", "type", "code", "id", "srckey", "dstkey"}
IGNORED_KEYS = {"use", "id", "delta-time", "timestamp"}
EVENT_TYPES = ("NEW", "UPDATE", "DESTROY")

_TS = re.compile(r"^\s*\[\d+\.\d+\]\s*")
_EV = re.compile(r"^\s*\[(NEW|UPDATE|DESTROY)\]\s*")


@dataclass
class Record:
    kind: str                       # "table" or the event type NEW / UPDATE / DESTROY
    l3: str = ""
    l4: str = ""
    l4num: int = -1
    timeout: int | None = None
    state: str | None = None
    orig: tuple = ()
    reply: tuple = ()
    flags: frozenset = frozenset()
    extra: dict = field(default_factory=dict)   # mark=, zone=, labels=, helper=, ...
    line: str = ""

    @property
    def key(self):
        return (self.l3, self.l4num, self.orig)

    def mark(self) -> str:
        return self.extra.get("mark", "0")

    def zone(self) -> str:
        return self.extra.get("zone", "0")

    def norm(self, with_timeout: bool = True) -> str:
        """Canonical one-line form (no timestamps, no id/use), for readable diffs."""
        parts = [] if self.kind == "table" else [f"[{self.kind}]"]
        parts += [self.l3, self.l4]
        if with_timeout and self.timeout is not None:
            parts.append(str(self.timeout))
        if self.state:
            parts.append(self.state)
        parts += [f"{k}={v}" for k, v in self.orig]
        if "UNREPLIED" in self.flags:
            parts.append("[UNREPLIED]")
        parts += [f"{k}={v}" for k, v in self.reply]
        parts += [f"[{f}]" for f in sorted(self.flags - {"UNREPLIED"})]
        parts += [f"{k}={v}" for k, v in sorted(self.extra.items())]
        return " ".join(parts)


def parse_line(line: str) -> Record | None:
    """Parse one event or table line; None for anything else (summaries, blanks)."""
    raw = line.rstrip("\n")
    s = _TS.sub("", raw, count=1)
    m = _EV.match(s)
    kind = "table"
    if m:
        kind = m.group(1)
        s = s[m.end():]
    toks = s.split()
    if len(toks) < 4 or toks[0] not in ("ipv4", "ipv6") or not toks[3].isdigit():
        return None
    r = Record(kind=kind, l3=toks[0], l4=toks[2], l4num=int(toks[3]), line=raw)
    i = 4
    if i < len(toks) and toks[i].isdigit():
        r.timeout = int(toks[i])
        i += 1
    if i < len(toks) and "=" not in toks[i] and not toks[i].startswith("["):
        r.state = toks[i]
        i += 1
    orig, reply, flags, extra = [], [], set(), {}
    cur = orig
    trailer = False
    for t in toks[i:]:
        if t.startswith("[") and t.endswith("]"):
            flags.add(t[1:-1])
            continue
        if "=" not in t:
            extra.setdefault("_words", []).append(t)
            continue
        k, v = t.split("=", 1)
        if not trailer and k in TUPLE_KEYS:
            if k == "src" and cur is orig and orig:
                cur = reply
            elif k == "src" and cur is reply and reply:
                trailer = True
            if not trailer:
                cur.append((k, v))
                continue
        trailer = True
        if k in IGNORED_KEYS:
            continue
        extra[k] = v
    if "_words" in extra:
        extra["_words"] = " ".join(extra["_words"])
    r.orig, r.reply, r.flags, r.extra = tuple(orig), tuple(reply), frozenset(flags), extra
    return r


def parse_text(text: str) -> tuple[list[Record], list[Record]]:
    """Split an output into (events, table entries)."""
    events, table = [], []
    for line in text.splitlines():
        r = parse_line(line)
        if r is None:
            continue
        (table if r.kind == "table" else events).append(r)
    return events, table


# ---------------------------------------------------------------------------------------------
def _diff_fields(k: Record, o: Record, tol: int, is_event: bool) -> list[str]:
    why = []
    if k.kind != o.kind:
        why.append(f"type {k.kind} != {o.kind}")
    if (k.l3, k.l4num) != (o.l3, o.l4num):
        why.append(f"protocol {k.l3}/{k.l4} != {o.l3}/{o.l4}")
    if k.state != o.state:
        if not (is_event and k.kind == "DESTROY" and (k.state is None or o.state is None)):
            why.append(f"state {k.state} != {o.state}")
    if k.orig != o.orig:
        why.append("original tuple differs")
    if k.reply != o.reply:
        why.append("reply tuple differs")
    if k.flags != o.flags:
        why.append(f"flags {sorted(k.flags)} != {sorted(o.flags)}")
    if k.mark() != o.mark() and (not is_event or ("mark" in k.extra and "mark" in o.extra)):
        why.append(f"mark {k.mark()} != {o.mark()}")
    if k.zone() != o.zone():
        why.append(f"zone {k.zone()} != {o.zone()}")
    other_k = {x: y for x, y in k.extra.items() if x not in ("mark", "zone")}
    other_o = {x: y for x, y in o.extra.items() if x not in ("mark", "zone")}
    if other_k != other_o:
        why.append(f"other fields {other_k} != {other_o}")
    if k.timeout is not None and o.timeout is not None:
        if abs(k.timeout - o.timeout) > tol:
            why.append(f"timeout {k.timeout} vs {o.timeout} (±{tol})")
    elif (k.timeout is None) != (o.timeout is None):
        if not (is_event and k.kind == "DESTROY"):
            why.append(f"timeout {k.timeout} vs {o.timeout}")
    return why


def compare_tables(kern: list[Record], ours: list[Record], tol: int = 2) -> list[str]:
    out = []
    kmap, omap = {}, {}
    for name, recs, mp in (("kernel", kern, kmap), ("ours", ours, omap)):
        for r in recs:
            if r.key in mp:
                out.append(f"table: duplicate entry in {name} output: {r.norm()}")
            mp[r.key] = r
    for key in kmap:
        if key not in omap:
            out.append(f"table: missing in ours:  {kmap[key].norm()}")
    for key in omap:
        if key not in kmap:
            out.append(f"table: extra in ours:    {omap[key].norm()}")
    for key in kmap:
        if key in omap:
            why = _diff_fields(kmap[key], omap[key], tol, False)
            if why:
                out.append(f"table: entry differs ({'; '.join(why)})")
                out.append(f"    kernel: {kmap[key].norm()}")
                out.append(f"    ours:   {omap[key].norm()}")
    return out


def compare_events(kern: list[Record], ours: list[Record], tol: int = 2) -> list[str]:
    out = []
    first_bad = None
    for i in range(max(len(kern), len(ours))):
        if i >= len(kern) or i >= len(ours):
            first_bad = i
            break
        why = _diff_fields(kern[i], ours[i], tol, True)
        if why:
            first_bad = i
            out.append(f"events: #{i + 1} differs ({'; '.join(why)})")
            out.append(f"    kernel: {kern[i].norm()}")
            out.append(f"    ours:   {ours[i].norm()}")
            break
    if first_bad is None:
        return out
    if len(kern) != len(ours):
        out.append(f"events: kernel has {len(kern)}, ours {len(ours)}")
    a = [r.norm() for r in kern]
    b = [r.norm() for r in ours]
    out.append("events (unified diff, kernel -> ours):")
    for line in difflib.unified_diff(a, b, "kernel", "ours", lineterm="", n=2):
        out.append("    " + line)
    return out


def compare(kernel_events: str, kernel_table: str, ours: str, tol: int = 2,
            events: bool = True) -> list[str]:
    """Return the list of differences (empty when equal)."""
    kev, _ = parse_text(kernel_events)
    _, ktab = parse_text(kernel_table)
    oev, otab = parse_text(ours)
    out = compare_tables(ktab, otab, tol)
    if events:
        out += compare_events(kev, oev, tol)
    return out


# ---------------------------------------------------------------------------------------------
# NAT scenarios: fields the kernel chooses at random
# ---------------------------------------------------------------------------------------------
RANDOM_MASK = "<random>"


def _rand_value(r: Record, spec) -> int | None:
    v = dict(r.reply).get(spec.key())
    return int(v) if v is not None and v.isdigit() else None


def _mask(r: Record, key: str) -> Record:
    rep = tuple((k, RANDOM_MASK if k == key else v) for k, v in r.reply)
    return Record(kind=r.kind, l3=r.l3, l4=r.l4, l4num=r.l4num, timeout=r.timeout, state=r.state,
                  orig=r.orig, reply=rep, flags=r.flags, extra=r.extra, line=r.line)


def _l4num(name: str) -> int:
    return {"tcp": 6, "udp": 17, "udplite": 136, "icmp": 1, "icmpv6": 58, "sctp": 132,
            "dccp": 33, "gre": 47}.get(name, -1)


def random_checks(kern: list[Record], ours: list[Record], specs, same_address=()):
    """Check the random NAT choices by property and return (diffs, masked kernel records, masked
    ours records, mappings for the packet comparison).

    For each random flow: the kernel used one value (else the scenario is wrong); ours has the
    flow, used one value in all its events and its table entry, within the range; flows of one
    group share the value on both sides. Then the value is masked in both. Besides: no two live
    entries of ours share a reply tuple (the kernel guarantees unique reply tuples), and all of
    ours' flows from a source in same_address are translated to one address."""
    from compare_packets import Mapping  # noqa: PLC0415 (compare.py works without it otherwise)
    diffs, maps = [], []
    kern, ours = list(kern), list(ours)
    groups: dict[str, dict[str, set]] = {}
    for spec in specs:
        key = spec.key()
        kv, ov = set(), set()
        orec = None
        for recs, vals, who in ((kern, kv, "kernel"), (ours, ov, "ours")):
            for i, r in enumerate(recs):
                if spec.matches(r.l4, dict(r.orig)):
                    v = _rand_value(r, spec)
                    if v is not None:
                        vals.add(v)
                        if who == "ours":
                            orec = r
                    recs[i] = _mask(r, key)
        what = spec.describe()
        if len(kv) != 1:
            diffs.append(f"random: {what}: the kernel's records have {len(kv)} values "
                         f"{sorted(kv)} (test problem: a random flow must have exactly one)")
            continue
        (k,) = kv
        if not ov:
            diffs.append(f"random: {what}: ours has no record of this flow (kernel chose {k})")
            continue
        if len(ov) > 1:
            diffs.append(f"random: {what}: ours used several values {sorted(ov)} for one flow "
                         f"(a mapping must not change)")
        for o in sorted(ov):
            if not spec.lo <= o <= spec.hi:
                diffs.append(f"random: {what}: ours chose {o}, outside {spec.lo}-{spec.hi}")
        g = getattr(spec, "group", None)
        if g:
            groups.setdefault(g, {"kernel": set(), "ours": set()})
            groups[g]["kernel"] |= kv
            groups[g]["ours"] |= ov
        o = min(ov)
        rep = dict(orec.reply)
        if spec.proto in ("icmp", "icmpv6"):
            maps.append(Mapping(_l4num(spec.proto), rep.get("dst"), rep.get("src"), None, o, k,
                                what))
        elif spec.field == "reply.dport":
            maps.append(Mapping(_l4num(spec.proto), rep.get("dst"), rep.get("src"),
                                int(rep.get("sport", -1)), o, k, what))
        else:
            maps.append(Mapping(_l4num(spec.proto), rep.get("src"), rep.get("dst"),
                                int(rep.get("dport", -1)), o, k, what))
    for g, sides in groups.items():
        for who in ("kernel", "ours"):
            if len(sides[who]) > 1:
                diffs.append(f"random: group {g}: {who} used different values "
                             f"{sorted(sides[who])} where one mapping must be reused "
                             f"(same source address, port and protocol)")
    # unique reply tuples among ours' live entries (events in order, then the table)
    live: dict[tuple, tuple] = {}
    for r in ours:
        if r.kind == "table":
            continue
        k = (r.l3, r.l4num, r.reply, dict(r.extra).get("zone", "0"))
        if r.kind == "NEW":
            if k in live and live[k] != r.orig:
                diffs.append(f"random: ours created an entry whose reply tuple a live entry "
                             f"already has: {r.norm()}")
            live[k] = r.orig
        elif r.kind == "DESTROY":
            live.pop(k, None)
    seen: dict[tuple, Record] = {}
    for r in ours:
        if r.kind != "table":
            continue
        k = (r.l3, r.l4num, r.reply, r.zone())
        if k in seen and RANDOM_MASK not in str(r.reply):
            diffs.append(f"random: two entries of ours share a reply tuple: {r.norm()}")
        seen[k] = r
    for src in same_address:
        addrs = {dict(r.reply).get("dst") for r in ours if dict(r.orig).get("src") == src}
        if len(addrs) > 1:
            diffs.append(f"persistent: ours translated {src} to several addresses "
                         f"{sorted(a for a in addrs if a)}; persistent means one")
    return diffs, kern, ours, maps


def compare_nat(kernel_events: str, kernel_table: str, ours: str, tol: int = 2, specs=(),
                same_address=()):
    """compare() for a NAT scenario: random fields checked by property, then masked.
    Returns (differences, mappings for compare_packets)."""
    kev, _ = parse_text(kernel_events)
    _, ktab = parse_text(kernel_table)
    oev, otab = parse_text(ours)
    n_ke, n_oe = len(kev), len(oev)
    diffs, kall, oall, maps = random_checks(kev + ktab, oev + otab, specs, same_address)
    kev, ktab = kall[:n_ke], kall[n_ke:]
    oev, otab = oall[:n_oe], oall[n_oe:]
    return diffs + compare_tables(ktab, otab, tol) + compare_events(kev, oev, tol), maps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compare kernel conntrack output with ctsyncd's")
    ap.add_argument("--kernel-events", required=True)
    ap.add_argument("--kernel-table", required=True)
    ap.add_argument("--ours", required=True, help="ctsyncd replay --events output")
    ap.add_argument("--tolerance", type=int, default=2, help="timeout tolerance, seconds")
    ap.add_argument("--no-events", action="store_true", help="compare the tables only")
    a = ap.parse_args(argv)
    with open(a.kernel_events) as f1, open(a.kernel_table) as f2, open(a.ours) as f3:
        diffs = compare(f1.read(), f2.read(), f3.read(), a.tolerance, not a.no_events)
    for d in diffs:
        print(d)
    if not diffs:
        print("equal")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
