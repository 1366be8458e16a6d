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
