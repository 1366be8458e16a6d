#!/usr/bin/python3
"""Self test of the NAT comparison (compare.compare_nat, compare_packets, run_diff's ct-state
check), without ctsyncd.

  selftest_nat.py                       synthetic packets only (scapy; no root, no kernel)
  selftest_nat.py --kernel-out DIR      also: DIR from `run_diff.py --kernel-only --out DIR`

With --kernel-out, for every NAT scenario recorded there a perfect "ours" is made from the
kernel's own outputs (events/table text, the datagrams both captures hold, reassembled, written
as one LINKTYPE_RAW pcap, the ctstate line from the counters) with every random value replaced by
another one in its range; it must compare equal. Then faults are put into it one at a time (a TTL
not decremented, a wrong checksum, a packet missing, an extra one, a random port out of range or
changing within a flow, fragments written as such, a zero UDP checksum filled in, a wrong table
entry, a wrong nat_dropped) and each must be reported, naming the packet, side and field.

Exit 0 when everything behaves, 1 otherwise; one line per check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import compare  # noqa: E402
import compare_packets  # noqa: E402
import nat_rules  # noqa: E402
import pktutil  # noqa: E402

FAILS: list[str] = []
COUNT = [0]


def check(cond: bool, what: str, detail: str = ""):
    COUNT[0] += 1
    if cond:
        print(f"ok   {what}")
    else:
        FAILS.append(what)
        print(f"FAIL {what}" + (f"\n     {detail}" if detail else ""))


def has(diffs: list[str], *needles: str) -> bool:
    text = "\n".join(diffs)
    return all(n in text for n in needles)


# ---------------------------------------------------------------------------------------------
# Synthetic unit tests
# ---------------------------------------------------------------------------------------------
def synthetic():
    from scapy.all import ICMP, IP, TCP, UDP, IPv6, Raw, fragment  # type: ignore

    def b(p):
        return bytes(p)

    # checksums: pktutil agrees with scapy
    for p in (IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2, flags="S") / Raw(b"x"),
              IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(b"abc"),
              IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / Raw(b"abcd"),
              IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=5, seq=1) / Raw(b"zz")):
        pk = pktutil.parse(b(p))
        check(pktutil.checksum_problems(pk) == [], f"checksums verified: {p.summary()}")
        raw = bytearray(b(p))
        struct.pack_into("!H", raw, pk.l4.csum_off, (struct.unpack_from(
            "!H", raw, pk.l4.csum_off)[0] + 1) & 0xFFFF)
        check(pktutil.checksum_problems(pktutil.parse(bytes(raw))) != [],
              f"bad checksum noticed: {p.summary()}")

    # incremental update equals recomputation
    p = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53) / Raw(b"hello")
    m = compare_packets.Mapping(17, "10.0.0.1", "10.0.0.2", 53, 1000, 2000, "t")
    new, used = compare_packets.substitute(b(p), [m])
    want = b(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=2000, dport=53) / Raw(b"hello"))
    check(new == want and used == ["t"], "substitute: UDP port and checksum as recomputed")

    # substitution inside an ICMP error's quote, both checksums updated
    inner = IP(src="10.0.0.1", dst="10.0.0.2", ttl=63) / UDP(sport=1000, dport=53) / Raw(b"q")
    err = IP(src="10.0.0.9", dst="10.0.0.1") / ICMP(type=3, code=3) / Raw(b(inner))
    new, used = compare_packets.substitute(b(err), [m])
    inner2 = IP(src="10.0.0.1", dst="10.0.0.2", ttl=63) / UDP(sport=2000, dport=53) / Raw(b"q")
    want = b(IP(src="10.0.0.9", dst="10.0.0.1") / ICMP(type=3, code=3) / Raw(b(inner2)))
    check(new == want, "substitute: quoted UDP port, its checksum and the ICMP checksum")

    # a zero UDP checksum stays zero through substitution
    z = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53, chksum=0) / Raw(b"h")
    new, _ = compare_packets.substitute(b(z), [m])
    check(new[26:28] == b"\x00\x00" and new[20:22] == struct.pack("!H", 2000),
          "substitute: zero UDP checksum kept")

    # ICMP id
    e = IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=77, seq=1) / Raw(b"p")
    mi = compare_packets.Mapping(1, "10.0.0.1", "10.0.0.2", None, 77, 99, "icmp")
    new, _ = compare_packets.substitute(b(e), [mi])
    check(new == b(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=99, seq=1) / Raw(b"p")),
          "substitute: ICMP echo id")

    # reassembly (IPv4) gives back the datagram
    big = IP(src="10.0.0.1", dst="10.0.0.2", id=7) / UDP(sport=1, dport=2) / Raw(b"F" * 3000)
    r = pktutil.Reassembler()
    out = [r.feed(b(f)) for f in fragment(big, fragsize=1208)]
    check(out[:2] == [None, None] and out[2] is not None and out[2][0] == b(big) and
          out[2][1] == 3, "reassembly: three IPv4 fragments give the datagram")

    # compare_side: equal, a TTL difference, missing and extra packets
    k = [b(IP(src="10.0.0.1", dst="10.0.0.2", ttl=63) / TCP(sport=1, dport=2, flags="S")),
         b(IP(src="10.0.0.1", dst="10.0.0.2", ttl=63) / TCP(sport=1, dport=2, flags="A"))]
    ours = [(0.0, x) for x in k]
    check(compare_packets.compare_side("server", k, ours, []) == [], "compare_side: equal")
    bad = [(0.0, k[0]), (0.0, b(IP(src="10.0.0.1", dst="10.0.0.2", ttl=64) /
                                 TCP(sport=1, dport=2, flags="A")))]
    d = compare_packets.compare_side("server", k, bad, [])
    check(has(d, "server side: kernel #2 and ours #2 differ", "IP.ttl: kernel 63, ours 64"),
          "compare_side: names packet, side and field (TTL)", "\n".join(d))
    d = compare_packets.compare_side("client", k, ours[:1], [])
    check(has(d, "client side: missing in ours: kernel #2", "[A]"),
          "compare_side: a missing packet", "\n".join(d))
    d = compare_packets.compare_side("client", k, ours + ours[:1], [])
    check(has(d, "extra in ours: ours #3"), "compare_side: an extra packet", "\n".join(d))

    # random mapping in compare_nat: masked when in range, reported when out of range
    kev = ("[NEW] udp      17 30 src=10.231.1.3 dst=10.231.2.2 sport=50000 dport=53 [UNREPLIED] "
           "src=10.231.2.2 dst=10.231.2.1 sport=53 dport={p}\n")
    kev4 = "    [NEW] ipv4     2 " + kev[6:]
    spec = nat_rules.Random("udp", "10.231.1.3", 50000, 1024, 65535)
    d, maps = compare.compare_nat(kev4.format(p=31000), "", kev4.format(p=42000), 2, [spec])
    check(d == [] and maps and maps[0].kernel == 31000 and maps[0].ours == 42000,
          "compare_nat: a random port in range is masked", "\n".join(d))
    d, _ = compare.compare_nat(kev4.format(p=31000), "", kev4.format(p=80), 2, [spec])
    check(has(d, "ours chose 80, outside 1024-65535"), "compare_nat: out of range", "\n".join(d))


# ---------------------------------------------------------------------------------------------
# On recorded kernel outputs
# ---------------------------------------------------------------------------------------------
def _swap_reply(line: str, key: str, old: int, new: int) -> str:
    i = line.find(" src=")
    j = line.find(" src=", i + 1)
    if j < 0:
        return line
    return line[:j] + line[j:].replace(f" {key}={old} ", f" {key}={new} ", 1).replace(
        f" {key}={old}\n", f" {key}={new}\n", 1)


def make_ours(out: str, sc: dict, tmp: str) -> dict:
    """A perfect 'ours' made from the kernel's outputs; random values changed."""
    name = sc["name"]
    nat = sc["nat"]
    specs = nat_rules.random_from_manifest(nat)
    with open(os.path.join(out, f"{name}.kernel.events")) as f:
        ev = f.read()
    with open(os.path.join(out, f"{name}.kernel.table")) as f:
        tb = f.read()
    krecs = compare.parse_text(ev)[0] + compare.parse_text(tb)[1]
    taken: dict[int, set] = {}
    for r in krecs:
        taken.setdefault(r.l4num, set()).update(
            int(v) for k, v in r.reply if k in ("sport", "dport", "id") and v.isdigit())
    rev_maps = []
    chosen: dict[str, int] = {}
    lines_ev, lines_tb = ev.splitlines(True), tb.splitlines(True)
    for spec in specs:
        kv = {compare._rand_value(r, spec) for r in krecs
              if spec.matches(r.l4, dict(r.orig))} - {None}
        if len(kv) != 1:
            continue
        (kval,) = kv
        if spec.group and spec.group in chosen:
            oval = chosen[spec.group]
        else:
            oval = None
            size = spec.hi - spec.lo + 1
            for step in range(1, size):
                cand = spec.lo + (kval - spec.lo + step * 7919) % size
                if cand not in taken.get(compare._l4num(spec.proto), set()):
                    oval = cand
                    break
            if oval is None:
                continue
            taken.setdefault(compare._l4num(spec.proto), set()).add(oval)
            if spec.group:
                chosen[spec.group] = oval
        key = spec.key()
        for lines in (lines_ev, lines_tb):
            for n, line in enumerate(lines):
                r = compare.parse_line(line)
                if r is not None and spec.matches(r.l4, dict(r.orig)):
                    lines[n] = _swap_reply(line, key, kval, oval)
        rec = next(r for r in krecs if spec.matches(r.l4, dict(r.orig)))
        rep = dict(rec.reply)
        if spec.proto in ("icmp", "icmpv6"):
            m = compare_packets.Mapping(compare._l4num(spec.proto), rep["dst"], rep["src"], None,
                                        kval, oval, "make")
        elif spec.field == "reply.dport":
            m = compare_packets.Mapping(compare._l4num(spec.proto), rep["dst"], rep["src"],
                                        int(rep["sport"]), kval, oval, "make")
        else:
            m = compare_packets.Mapping(compare._l4num(spec.proto), rep["src"], rep["dst"],
                                        int(rep["dport"]), kval, oval, "make")
        rev_maps.append(m)
    ours_out = "".join(lines_ev) + "".join(lines_tb)
    # datagrams: both captures, reassembled, random values changed
    _lt, inp = pktutil.read_pcap(os.path.join(out, "pcaps", sc["file"]))
    t0 = inp[0][0]
    recs = []
    for side in ("client", "server"):
        r = pktutil.Reassembler()
        for raw in pktutil.ip_datagrams(os.path.join(out, f"{name}.kernel.{side}.pcap")):
            got = r.feed(raw)
            if got is None:
                continue
            new, _ = compare_packets.substitute(got[0], rev_maps)
            recs.append((t0, new))
    pcap = os.path.join(tmp, f"{name}.ours.pcap")
    pktutil.write_pcap(pcap, recs)
    counters = {}
    with open(os.path.join(out, f"{name}.kernel.counters")) as f:
        for line in f:
            w = line.split()
            if len(w) == 2:
                counters[w[0]] = int(w[1])
    st = {}
    sp = os.path.join(out, f"{name}.kernel.stats")
    if os.path.exists(sp):
        with open(sp) as f:
            for line in f:
                w = line.split()
                if len(w) == 2:
                    st[w[0]] = int(w[1])
    ctline = ("ctstate " + " ".join(f"{k}={counters.get(k, 0)}" for k in
                                     ("new", "established", "related", "invalid")) +
              f" invalid_l3=0 held=0 nat_dropped={st.get('insert_failed', 0)}\n")
    return {"out": ours_out, "pcap": pcap, "recs": recs, "ctline": ctline}


def run_compare(out: str, sc: dict, ours: dict, tmp: str) -> list[str]:
    import run_diff
    name = sc["name"]
    work = os.path.join(tmp, "w")
    os.makedirs(os.path.join(work, "pcaps"), exist_ok=True)
    for suffix in ("kernel.events", "kernel.table", "kernel.counters", "kernel.stats",
                   "kernel.client.pcap", "kernel.server.pcap"):
        src = os.path.join(out, f"{name}.{suffix}")
        if os.path.exists(src):
            shutil.copy(src, os.path.join(work, f"{name}.{suffix}"))
    shutil.copy(os.path.join(out, "pcaps", sc["file"]), os.path.join(work, "pcaps", sc["file"]))
    shutil.copy(ours["pcap"], os.path.join(work, f"{name}.ours.pcap"))
    with open(os.path.join(work, f"{name}.ours.err"), "w") as f:
        f.write(ours["ctline"])
    with open(os.path.join(out, f"{name}.kernel.events")) as f1, \
            open(os.path.join(out, f"{name}.kernel.table")) as f2:
        d = run_diff.compare_nat(sc, f1.read(), f2.read(), ours["out"], work, 2)
    return d + run_diff.compare_ct_states(work, name, sc["nat"])


def mutate_pcap(ours: dict, tmp: str, fn) -> dict:
    recs = fn(list(ours["recs"]))
    p = os.path.join(tmp, "mut.pcap")
    pktutil.write_pcap(p, recs)
    return dict(ours, pcap=p, recs=recs)


def _find(recs, pred):
    for n, (ts, raw) in enumerate(recs):
        try:
            p = pktutil.parse(raw)
        except pktutil.ParseError:
            continue
        if pred(p):
            return n
    return None


def recorded(out: str, only: set | None):
    with open(os.path.join(out, "pcaps", "manifest.json")) as f:
        scenarios = [s for s in json.load(f)["scenarios"] if s.get("nat")]
    if only:
        scenarios = [s for s in scenarios if s["name"] in only]
    done = set()
    for sc in scenarios:
        name = sc["name"]
        if not os.path.exists(os.path.join(out, f"{name}.kernel.client.pcap")):
            continue
        with tempfile.TemporaryDirectory(prefix="ctsdiff-self-") as tmp:
            ours = make_ours(out, sc, tmp)
            d = run_compare(out, sc, ours, tmp)
            check(d == [], f"{name}: kernel outputs as ours (random values changed) compare "
                  f"equal", "\n     ".join(d[:12]))
            if d:
                continue
            # -- faults, each must be reported --------------------------------------------
            def ttl_plus(recs):
                ts, raw = recs[0]
                b = bytearray(raw)
                if raw[0] >> 4 == 4:
                    b[8] += 1
                    struct.pack_into("!H", b, 10, 0)
                    struct.pack_into("!H", b, 10, pktutil.csum(bytes(b[:(b[0] & 15) * 4])))
                else:
                    b[7] += 1
                recs[0] = (ts, bytes(b))
                return recs
            if ours["recs"]:
                side = "client" if nat_rules.is_inside(pktutil.parse(
                    ours["recs"][0][1]).dst) else "server"
                dd = run_compare(out, sc, mutate_pcap(ours, tmp, ttl_plus), tmp)
                fld = "IP.ttl" if ours["recs"][0][1][0] >> 4 == 4 else "IPv6.hlim"
                check(has(dd, f"packets {side} side:", "differ", fld),
                      f"{name}: a TTL not decremented is named ({side} side, {fld})",
                      "\n     ".join(dd[:6]))
                dd = run_compare(out, sc, mutate_pcap(ours, tmp, lambda r: r[1:]), tmp)
                check(has(dd, f"packets {side} side: missing in ours: kernel #1"),
                      f"{name}: a missing packet is named", "\n     ".join(dd[:6]))
                dd = run_compare(out, sc, mutate_pcap(ours, tmp, lambda r: r + r[-1:]), tmp)
                check(has(dd, "extra in ours"), f"{name}: an extra packet is named",
                      "\n     ".join(dd[:6]))

                def bad_csum(recs):
                    n = _find(recs, lambda p: p.l4 is not None and p.l4.csum_off is not None
                              and p.proto in (6, 17, 136, 1, 58) and not p.frag)
                    if n is None:
                        return recs
                    ts, raw = recs[n]
                    p = pktutil.parse(raw)
                    b = bytearray(raw)
                    v = struct.unpack_from("!H", b, p.l4.csum_off)[0]
                    struct.pack_into("!H", b, p.l4.csum_off, v ^ 0x0101)
                    recs[n] = (ts, bytes(b))
                    return recs
                dd = run_compare(out, sc, mutate_pcap(ours, tmp, bad_csum), tmp)
                # named as a wrong checksum, or (where the kernel's own checksum is not the
                # textbook one: IPv6 UDP 0, UDP-Lite) as a differing checksum field
                check(has(dd, "checksum 0x", "correct is 0x") or has(dd, "chksum: kernel"),
                      f"{name}: a wrong L4 checksum is named", "\n     ".join(dd[:6]))
            # a wrong table entry: drop the last table line
            lines = ours["out"].splitlines(True)
            tl = [n for n, ln in enumerate(lines) if compare.parse_line(ln) is not None and
                  compare.parse_line(ln).kind == "table"]
            if tl:
                o2 = dict(ours, out="".join(x for n, x in enumerate(lines) if n != tl[-1]))
                dd = run_compare(out, sc, o2, tmp)
                check(has(dd, "table: missing in ours"), f"{name}: a missing entry is named")
            # nat_dropped off by one
            o2 = dict(ours, ctline=ours["ctline"].replace("nat_dropped=",
                                                          "nat_dropped=1").replace(
                "nat_dropped=10", "nat_dropped=1"))
            dd = run_compare(out, sc, o2, tmp)
            check(has(dd, "nat_dropped"), f"{name}: a wrong nat_dropped is named")
            # scenario-specific faults
            specs = nat_rules.random_from_manifest(sc["nat"])
            if specs:
                spec = next((x for x in specs if (x.lo, x.hi) != (0, 65535)), None)
                if spec is not None:   # (an ICMP id may be anything)
                    bad = "\n".join(_swap_random(ours["out"], spec, spec.hi + 1
                                                 if spec.hi < 65535 else spec.lo - 1))
                    dd = run_compare(out, sc, dict(ours, out=bad), tmp)
                    check(has(dd, "random:", "outside"), f"{name}: a random value out of range "
                          f"is named", "\n     ".join(dd[:6]))
                # the random port changes in one packet of the flow
                maps = compare.compare_nat(*_texts(out, name), ours["out"], 2, specs)[1]
                m = maps[0]

                def wobble(recs):
                    for n, (ts, raw) in enumerate(recs):
                        nb, used = compare_packets.substitute(raw, [
                            compare_packets.Mapping(m.proto, m.rand_addr, m.peer_addr,
                                                    m.peer_port, m.ours, m.kernel, "w")])
                        if used:
                            recs[n] = (ts, nb)
                            return recs
                    return recs
                dd = run_compare(out, sc, mutate_pcap(ours, tmp, wobble), tmp)
                # the worst case: the stray value is the kernel's own choice, so only the count
                # of packets carrying each flow's value can tell
                check(has(dd, "a packet of this flow uses another value"),
                      f"{name}: a packet using another mapping is named",
                      "\n     ".join(dd[:8]))
            if "frag" in name and ("frag", name[:4]) not in done:
                done.add(("frag", name[:4]))
                # ours writes the kernel's fragments instead of the whole datagram
                recs = []
                for side in ("client", "server"):
                    for raw in pktutil.ip_datagrams(os.path.join(out,
                                                                 f"{name}.kernel.{side}.pcap")):
                        recs.append((ours["recs"][0][0], raw))
                p = os.path.join(tmp, "frag.pcap")
                pktutil.write_pcap(p, recs)
                dd = run_compare(out, sc, dict(ours, pcap=p, recs=recs), tmp)
                check(has(dd, "ours wrote", "IP fragments"), f"{name}: fragments written as "
                      f"such are named", "\n     ".join(dd[:4]))
            if "zero_csum" in name:
                def fill(recs):
                    n = _find(recs, lambda p: p.proto == 17 and p.l4 and
                              struct.unpack_from("!H", p.raw, p.l4.csum_off)[0] == 0)
                    ts, raw = recs[n]
                    p = pktutil.parse(raw)
                    b = bytearray(raw)
                    struct.pack_into("!H", b, p.l4.csum_off, pktutil.l4_checksum(p))
                    recs[n] = (ts, bytes(b))
                    return recs
                dd = run_compare(out, sc, mutate_pcap(ours, tmp, fill), tmp)
                check(has(dd, "UDP.chksum: kernel 0,"), f"{name}: a zero UDP checksum filled "
                      f"in is named", "\n     ".join(dd[:6]))
            if "csum_edge" in name:
                def zero(recs):
                    n = _find(recs, lambda p: p.proto == 17 and p.l4 and
                              struct.unpack_from("!H", p.raw, p.l4.csum_off)[0] == 0xFFFF)
                    ts, raw = recs[n]
                    p = pktutil.parse(raw)
                    b = bytearray(raw)
                    struct.pack_into("!H", b, p.l4.csum_off, 0)
                    recs[n] = (ts, bytes(b))
                    return recs
                dd = run_compare(out, sc, mutate_pcap(ours, tmp, zero), tmp)
                check(has(dd, "UDP.chksum: kernel 65535 (0xffff), ours 0"),
                      f"{name}: a computed zero UDP checksum written as 0 is named",
                      "\n     ".join(dd[:6]))


def _texts(out, name):
    with open(os.path.join(out, f"{name}.kernel.events")) as f1, \
            open(os.path.join(out, f"{name}.kernel.table")) as f2:
        return f1.read(), f2.read()


def _swap_random(text: str, spec, new: int) -> list[str]:
    out = []
    for line in text.splitlines():
        r = compare.parse_line(line)
        if r is not None and spec.matches(r.l4, dict(r.orig)):
            v = compare._rand_value(r, spec)
            line = _swap_reply(line + "\n", spec.key(), v, new).rstrip("\n")
        out.append(line)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel-out", help="a run_diff.py --kernel-only --out directory")
    ap.add_argument("--only", help="comma-separated scenario names")
    a = ap.parse_args(argv)
    synthetic()
    if a.kernel_out:
        recorded(a.kernel_out, set(a.only.split(",")) if a.only else None)
    print(f"{COUNT[0] - len(FAILS)} passed, {len(FAILS)} failed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
