#include "table/rewrite.hpp"

#include <cstring>

#include "table/checksum.hpp"

namespace ctsync::table {
namespace {

using csum::load16;
using csum::store16;

constexpr size_t kIcmpHeader = 8;

bool isIcmpv4Query(uint8_t type) {
  switch (type) {
    case 0:   // echo reply
    case 8:   // echo
    case 13:  // timestamp
    case 14:
    case 15:  // information
    case 16:
    case 17:  // address mask
    case 18:
      return true;
    default:
      return false;
  }
}

// Where the address a manip changes sits in an IP header.
uint8_t* addrField(uint8_t* ip, L3 l3, bool src) {
  if (l3 == L3::kIpv4) return ip + (src ? 12 : 16);
  return ip + (src ? 8 : 24);
}
size_t addrLen(L3 l3) {
  return l3 == L3::kIpv4 ? 4 : 16;
}

// One manip (l4proto_manip_pkt then the address) on the IP header at `ip` whose L4 header
// starts at `l4` with `avail` bytes up to the datagram's end. `port` is the new source or
// destination port, or for ICMP the new query id. False when the L4 header is too short to
// rewrite (the kernel drops the packet then).
bool manip(L3 l3, uint8_t proto, uint8_t* ip, uint8_t* l4, size_t avail, const uint8_t* addr,
           uint16_t port, bool src) {
  uint8_t* field = addrField(ip, l3, src);
  const size_t alen = addrLen(l3);
  switch (proto) {
    case proto::kTcp: {
      if (avail < 8) return false;
      uint8_t* pp = l4 + (src ? 0 : 2);
      const uint16_t old = load16(pp);
      store16(pp, port);
      // An embedded header may stop short of the checksum: then only the port changes.
      if (avail >= 20) {
        csum::replace(l4 + 16, field, addr, alen);
        csum::replace16(l4 + 16, old, port);
      }
      break;
    }
    case proto::kUdp:
    case proto::kUdplite: {
      if (avail < 8) return false;
      uint8_t* pp = l4 + (src ? 0 : 2);
      const uint16_t old = load16(pp);
      // UDP over IPv4 may go without a checksum (zero): it stays without one. UDP-Lite's is
      // mandatory.
      if (proto == proto::kUdplite || load16(l4 + 6) != 0) {
        csum::replace(l4 + 6, field, addr, alen);
        csum::replace16(l4 + 6, old, port);
        if (load16(l4 + 6) == 0) store16(l4 + 6, 0xffff);  // CSUM_MANGLED_0
      }
      store16(pp, port);
      break;
    }
    case proto::kIcmp:
      if (avail < kIcmpHeader) return false;
      if (isIcmpv4Query(l4[0])) {
        csum::replace16(l4 + 2, load16(l4 + 4), port);
        store16(l4 + 4, port);
      }
      break;
    case proto::kIcmpv6:
      if (avail < kIcmpHeader) return false;
      csum::replace(l4 + 2, field, addr, alen);  // the pseudo-header
      if (l4[0] == 128 || l4[0] == 129) {
        csum::replace16(l4 + 2, load16(l4 + 4), port);
        store16(l4 + 4, port);
      }
      break;
    default:
      break;  // an unknown protocol passes with only its addresses changed
  }
  if (l3 == L3::kIpv4) csum::replace(ip + 10, field, addr, 4);
  std::memcpy(field, addr, alen);
  return true;
}

// The addresses and ports of one direction's tuple, as raw packet bytes.
struct Side {
  uint8_t src[16];
  uint8_t dst[16];
  uint16_t sport;
  uint16_t dport;
};

Side sideOf(const ConnTable& table, const Entry& e, Dir d) {
  Side s;
  if (e.l3 == L3::kIpv4) {
    const int i = index(d) * 2;
    std::memcpy(s.src, &e.addr[i], 4);
    std::memcpy(s.dst, &e.addr[i + 1], 4);
    s.sport = e.port[i];
    s.dport = e.port[i + 1];
    return s;
  }
  const Tuple t = table.tuple(e, d);
  std::memcpy(s.src, t.src.bytes.data(), 16);
  std::memcpy(s.dst, t.dst.bytes.data(), 16);
  s.sport = t.sport;
  s.dport = t.dport;
  return s;
}

bool isIcmp(uint8_t proto) {
  return proto == proto::kIcmp || proto == proto::kIcmpv6;
}

// The IPv4 fast path (most of a NAT's packets): addresses and ports straight from the entry,
// every checksum change summed first and applied once per checksum. One's complement sums do
// not depend on byte order, so all words are taken as the machine reads them.
inline uint32_t raw16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline void putRaw16(uint8_t* p, uint32_t v) {
  const auto w = static_cast<uint16_t>(v);
  std::memcpy(p, &w, 2);
}
// ~old + new for a 32-bit field, as raw words.
inline uint32_t delta32(uint32_t oldRaw, uint32_t newRaw) {
  return (~oldRaw & 0xffff) + (~oldRaw >> 16) + (newRaw & 0xffff) + (newRaw >> 16);
}
inline uint32_t delta16(uint32_t oldRaw, uint32_t newRaw) {
  return (~oldRaw & 0xffff) + newRaw;
}
// check' = ~(~check + delta), never 0xffff (see csum::replace).
inline void apply(uint8_t* check, uint32_t delta) {
  uint64_t acc = 0xffff0000u + (~raw16(check) & 0xffff) + uint64_t{delta};
  acc = (acc & 0xffff) + (acc >> 16);
  acc = (acc & 0xffff) + (acc >> 16);
  acc = (acc & 0xffff) + (acc >> 16);
  putRaw16(check, ~static_cast<uint32_t>(acc));
}
inline uint32_t bswap16(uint16_t v) {
  return __builtin_bswap16(v);
}

bool rewrite4(const Entry& e, Dir dir, uint8_t* ip, uint8_t* l4, size_t avail) {
  const bool orig = dir == Dir::kOriginal;
  const bool dstManip = (e.status & (orig ? status::kDstNat : status::kSrcNat)) != 0;
  const bool srcManip = (e.status & (orig ? status::kSrcNat : status::kDstNat)) != 0;
  // The target is the other direction inverted.
  const int o = index(opposite(dir)) * 2;
  const uint8_t proto = e.l4;
  const bool ports = proto == proto::kTcp || proto == proto::kUdp || proto == proto::kUdplite;
  const bool icmp = proto == proto::kIcmp && avail >= kIcmpHeader && isIcmpv4Query(l4[0]);
  uint32_t addrDelta = 0, portDelta = 0;
  bool changed = false;
  auto addr = [&](int off, uint32_t target) {
    uint32_t old;
    std::memcpy(&old, ip + off, 4);
    if (old == target) return;
    addrDelta += delta32(old, target);
    std::memcpy(ip + off, &target, 4);
    changed = true;
  };
  auto port = [&](uint8_t* at, uint16_t target) {
    const uint32_t old = raw16(at), want = bswap16(target);
    if (old == want) return;
    portDelta += delta16(old, want);
    putRaw16(at, want);
    changed = true;
  };
  if (dstManip) {
    addr(16, e.addr[o]);
    if (ports) port(l4 + 2, e.port[o]);
  }
  if (srcManip) {
    addr(12, e.addr[o + 1]);
    if (ports) port(l4, e.port[o + 1]);
  }
  if (icmp && (dstManip || srcManip)) port(l4 + 4, e.port[o]);  // the id, both directions
  if (!changed) return false;
  if (addrDelta != 0) apply(ip + 10, addrDelta);
  switch (proto) {
    case proto::kTcp:
      if (avail >= 20) apply(l4 + 16, addrDelta + portDelta);
      break;
    case proto::kUdp:
    case proto::kUdplite:
      if (proto == proto::kUdplite || raw16(l4 + 6) != 0) {
        apply(l4 + 6, addrDelta + portDelta);
        if (raw16(l4 + 6) == 0) putRaw16(l4 + 6, 0xffff);  // CSUM_MANGLED_0
      }
      break;
    case proto::kIcmp:
      if (icmp) apply(l4 + 2, portDelta);  // no pseudo-header
      break;
    default:
      break;
  }
  return true;
}

}  // namespace

bool natRewrite(const ConnTable& table, uint32_t index, Dir dir, uint8_t* ip, const Packet& p) {
  const Entry& e = table.entry(index);
  const uint32_t nat = e.status & (status::kSrcNat | status::kDstNat);
  if (nat == 0) return false;
  // Headers too short for the protocol were refused by the parser; TCP and UDP have 8 bytes.
  if (e.l3 == L3::kIpv4) return rewrite4(e, dir, ip, ip + (p.l4 - p.l3), p.l4Len);
  // A packet of one direction is made to look like the inverse of the other direction.
  const bool orig = dir == Dir::kOriginal;
  const bool dstManip = (e.status & (orig ? status::kDstNat : status::kSrcNat)) != 0;
  const bool srcManip = (e.status & (orig ? status::kSrcNat : status::kDstNat)) != 0;
  const Side other = sideOf(table, e, opposite(dir));
  uint8_t* l4 = ip + (p.l4 - p.l3);
  const uint8_t proto = e.l4;
  const size_t alen = addrLen(e.l3);
  // The target is the other direction inverted: its destination is our new source, its
  // source our new destination. An ICMP id is the same in both directions: both manips set it.
  const bool icmp = isIcmp(proto);
  const uint16_t newSport = icmp ? other.sport : other.dport;
  const uint16_t newDport = other.sport;
  bool changed = false;
  if (dstManip) {
    changed |= std::memcmp(addrField(ip, e.l3, false), other.src, alen) != 0 ||
               newDport != (icmp ? p.tuple.sport : p.tuple.dport);
    manip(e.l3, proto, ip, l4, p.l4Len, other.src, newDport, false);
  }
  if (srcManip) {
    changed |=
        std::memcmp(addrField(ip, e.l3, true), other.dst, alen) != 0 || newSport != p.tuple.sport;
    manip(e.l3, proto, ip, l4, p.l4Len, other.dst, newSport, true);
  }
  return changed;
}

IcmpRewrite natRewriteIcmpError(const ConnTable& table, uint32_t index, Dir dir, uint8_t* ip,
                                const Packet& p) {
  IcmpRewrite r;
  const Entry& e = table.entry(index);
  uint8_t* l4 = ip + (p.l4 - p.l3);
  if (e.l3 == L3::kIpv4 && l4[0] == 5) {  // redirect
    constexpr uint32_t kDone = status::kSrcNatDone | status::kDstNatDone;
    if ((e.status & kDone) != kDone || (e.status & (status::kSrcNat | status::kDstNat)) != 0) {
      r.drop = InvalidReason::kNatIcmpRedirect;
      return r;
    }
  }
  const bool orig = dir == Dir::kOriginal;
  const bool pre = (e.status & (orig ? status::kDstNat : status::kSrcNat)) != 0;
  const bool post = (e.status & (orig ? status::kSrcNat : status::kDstNat)) != 0;
  if (!pre && !post) return r;

  // The embedded packet travelled the other way: it is translated with the other
  // direction's tuple as it stands (not inverted), by the opposite manip.
  const Side other = sideOf(table, e, opposite(dir));
  uint8_t* inner = l4 + kIcmpHeader;
  uint8_t* innerL4 = inner + p.innerL4;
  uint8_t* end = ip + p.ipLen;
  const size_t avail = innerL4 <= end ? static_cast<size_t>(end - innerL4) : 0;
  const uint8_t innerProto = p.inner.l4;
  const bool icmpInner = isIcmp(innerProto);
  if (pre) {
    if (!manip(e.l3, innerProto, inner, innerL4, avail, other.src, other.sport, true)) {
      r.drop = InvalidReason::kIcmpErrorBad;
      return r;
    }
    // The outer destination becomes the flow's endpoint behind the NAT.
    uint8_t* field = addrField(ip, e.l3, false);
    if (e.l3 == L3::kIpv4) csum::replace(ip + 10, field, other.src, 4);
    std::memcpy(field, other.src, addrLen(e.l3));
  }
  if (post) {
    const uint16_t port = icmpInner ? other.sport : other.dport;
    if (!manip(e.l3, innerProto, inner, innerL4, avail, other.dst, port, false)) {
      r.drop = InvalidReason::kIcmpErrorBad;
      return r;
    }
    uint8_t* field = addrField(ip, e.l3, true);
    if (e.l3 == L3::kIpv4) csum::replace(ip + 10, field, other.dst, 4);
    std::memcpy(field, other.dst, addrLen(e.l3));
  }
  // The ICMP checksum covers the embedded packet: computed again over the whole message (for
  // ICMPv6 with the final outer addresses in its pseudo-header).
  const size_t icmpLen = static_cast<size_t>(end - l4);
  store16(l4 + 2, 0);
  uint32_t pseudo = 0;
  if (e.l3 == L3::kIpv6) {
    pseudo = csum::addWords(0, ip + 8, 32);
    pseudo += static_cast<uint32_t>(icmpLen >> 16) + static_cast<uint32_t>(icmpLen & 0xffff);
    pseudo += proto::kIcmpv6;
  }
  store16(l4 + 2, csum::compute(l4, icmpLen, pseudo));
  r.changed = true;
  return r;
}

}  // namespace ctsync::table
