#include "table/packet.hpp"

#include <bit>
#include <cstring>

// What this parser accepts follows what nf_conntrack_in() accepts in Linux 6.x after ip_rcv /
// ipv6_rcv have looked at the packet: ipv4_get_l4proto / ipv6_get_l4proto (ipv6_skip_exthdr),
// nf_ct_get_tuple, and the protocols' error() callbacks (udp_error, udplite_error,
// nf_conntrack_icmpv4_error, nf_conntrack_icmpv6_error). TCP header checks stay with the TCP
// tracker. Every read is bounded by the captured length; nothing allocates.

namespace ctsync::table {
namespace {

constexpr size_t kIpv4MinHeader = 20;
constexpr size_t kIpv6Header = 40;
constexpr size_t kIcmpHeader = 8;  // ICMP and ICMPv6 alike

uint16_t load16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

// One's-complement sum of `n` bytes as big-endian 16-bit words, not yet folded. Summed over
// native 64-bit words with end-around carry and byte-swapped once at the end (RFC 1071: the
// one's complement sum does not depend on byte order); this runs on every packet.
inline uint64_t sumBytes(const uint8_t* p, size_t n, uint64_t acc) {
  uint64_t native = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    native += w;
    native += native < w;  // end-around carry
  }
  // The last 0..7 bytes, in fixed-size pieces (a variable-length memcpy is a library call).
  // Their offsets keep the parity of the byte positions, so they sum like the words above.
  uint64_t tail = 0;
  if (n - i >= 4) {
    uint32_t w;
    std::memcpy(&w, p + i, 4);
    tail += w;
    i += 4;
  }
  if (n - i >= 2) {
    uint16_t w;
    std::memcpy(&w, p + i, 2);
    tail += w;
    i += 2;
  }
  if (n - i == 1) {
    const uint8_t last[2] = {p[i], 0};  // an odd byte is padded with a zero (RFC 1071)
    uint16_t w;
    std::memcpy(&w, last, 2);
    tail += w;
  }
  native += tail;
  native += native < tail;
  native = (native & 0xffffffff) + (native >> 32);
  native = (native & 0xffff) + (native >> 16);
  native = (native & 0xffff) + (native >> 16);
  native = (native & 0xffff) + (native >> 16);
  if constexpr (std::endian::native == std::endian::big) return acc + native;
  return acc + __builtin_bswap16(static_cast<uint16_t>(native));
}

uint16_t fold(uint64_t acc) {
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(acc);
}

// The sum of a correct packet including its checksum field folds to 0xffff.
bool checksumOk(uint64_t acc) {
  return fold(acc) == 0xffff;
}

bool isExtHeader(uint8_t nh) {
  return nh == proto::kHopByHop || nh == proto::kRouting || nh == proto::kFragment ||
         nh == proto::kAuth || nh == proto::kNoNext || nh == proto::kDestOpts;
}

// Length of an IPv6 extension header from its second byte (AH counts 4-byte units minus 2).
size_t extHeaderLen(uint8_t nh, uint8_t lenByte) {
  return nh == proto::kAuth ? (size_t{lenByte} + 2) * 4 : (size_t{lenByte} + 1) * 8;
}

// The IPv4 pseudo header (RFC 793/768) or the IPv6 one (RFC 8200 8.1), summed.
uint64_t pseudoSum(L3 l3, const uint8_t* ip, uint8_t proto, size_t l4Len) {
  uint64_t acc = 0;
  if (l3 == L3::kIpv4) {
    acc = sumBytes(ip + 12, 8, acc);
  } else {
    acc = sumBytes(ip + 8, 32, acc);
  }
  acc += l4Len & 0xffff;
  acc += l4Len >> 16;
  acc += proto;
  return acc;
}

bool isIcmpv4Error(uint8_t type) {
  return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

// NR_ICMP_TYPES in the kernel: types above it are "a mystery" and INVALID.
constexpr uint8_t kMaxIcmpType = 18;

bool usesPorts(uint8_t proto) {
  return proto == proto::kTcp || proto == proto::kUdp || proto == proto::kUdplite;
}

void setAddrs(Tuple& t, L3 l3, const uint8_t* ip) {
  t.l3 = l3;
  if (l3 == L3::kIpv4) {
    t.src = Addr::fromBytes(ip + 12, 4);
    t.dst = Addr::fromBytes(ip + 16, 4);
  } else {
    t.src = Addr::fromBytes(ip + 8, 16);
    t.dst = Addr::fromBytes(ip + 24, 16);
  }
}

// Where an IP header says its L4 part lies.
struct L3Result {
  InvalidReason error = InvalidReason::kNone;
  bool fragment = false;
  uint8_t proto = 0;
  size_t l4Off = 0;
  size_t ipLen = 0;
};

// IPv4 options: EOL ends the list, NOP is one byte, everything else is type/length/value with
// a length covering itself and staying inside the header.
bool ipv4OptionsOk(const uint8_t* opt, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t type = opt[i];
    if (type == 0) return true;
    if (type == 1) {
      ++i;
      continue;
    }
    if (i + 1 >= n) return false;
    const size_t optLen = opt[i + 1];
    if (optLen < 2 || optLen > n - i) return false;
    i += optLen;
  }
  return true;
}

L3Result parseIpv4Header(const uint8_t* data, size_t len) {
  L3Result r;
  if (len < kIpv4MinHeader) {
    r.error = InvalidReason::kTruncated;
    return r;
  }
  const size_t ihl = size_t{data[0] & 0x0fu} * 4;
  if (ihl < kIpv4MinHeader) {
    r.error = InvalidReason::kBadIpHeader;
    return r;
  }
  if (ihl > len) {
    r.error = InvalidReason::kTruncated;
    return r;
  }
  if (!checksumOk(sumBytes(data, ihl, 0))) {
    r.error = InvalidReason::kBadIpChecksum;
    return r;
  }
  const size_t total = load16(data + 2);
  if (total > len) {
    r.error = InvalidReason::kTruncated;
    return r;
  }
  if (total < ihl || !ipv4OptionsOk(data + kIpv4MinHeader, ihl - kIpv4MinHeader)) {
    r.error = InvalidReason::kBadIpHeader;
    return r;
  }
  r.fragment = (load16(data + 6) & 0x3fff) != 0;  // MF or a fragment offset
  r.proto = data[9];
  r.l4Off = ihl;
  r.ipLen = total;
  return r;
}

// Walks the extension headers from `off` the way ipv6_skip_exthdr does, within [0, end).
// With `skipFirstFragment` (an ICMPv6 error's inner packet) a fragment header with offset 0
// is stepped over; otherwise any fragment header ends the walk with `fragment` set.
L3Result walkIpv6Chain(const uint8_t* data, size_t end, uint8_t nh, size_t off,
                       bool skipFirstFragment) {
  L3Result r;
  while (isExtHeader(nh)) {
    if (nh == proto::kNoNext || off + 2 > end) {
      r.error = InvalidReason::kBadExtHeader;
      return r;
    }
    size_t hdrLen;
    if (nh == proto::kFragment) {
      if (off + 8 > end) {
        r.error = InvalidReason::kBadExtHeader;
        return r;
      }
      if (!skipFirstFragment || (load16(data + off + 2) & 0xfff8) != 0) {
        r.fragment = true;
        r.proto = data[off];
        r.l4Off = off;
        return r;
      }
      hdrLen = 8;
    } else {
      hdrLen = extHeaderLen(nh, data[off + 1]);
    }
    nh = data[off];
    off += hdrLen;
  }
  if (off > end) {
    r.error = InvalidReason::kBadExtHeader;
    return r;
  }
  r.proto = nh;
  r.l4Off = off;
  return r;
}

L3Result parseIpv6Header(const uint8_t* data, size_t len) {
  L3Result r;
  if (len < kIpv6Header) {
    r.error = InvalidReason::kTruncated;
    return r;
  }
  const size_t payload = load16(data + 4);
  const uint8_t nh = data[6];
  // Payload length 0 with a hop-by-hop header announces a jumbogram, which nothing here can
  // carry; without one it is an empty payload (ip6_rcv_core trims to the header).
  if (payload == 0 && nh == proto::kHopByHop) {
    r.error = InvalidReason::kBadIpHeader;
    return r;
  }
  if (kIpv6Header + payload > len) {
    r.error = InvalidReason::kTruncated;
    return r;
  }
  const size_t end = kIpv6Header + payload;
  r = walkIpv6Chain(data, end, nh, kIpv6Header, false);
  r.ipLen = end;
  return r;
}

// The datagram embedded in an ICMP error, as nf_ct_get_tuplepr reads it: only its header
// and the first bytes of its L4 header are needed, and it is usually cut short.
InvalidReason parseInner(L3 l3, const uint8_t* p, size_t n, Tuple& out, uint16_t& l4Off) {
  L3Result r;
  if (l3 == L3::kIpv4) {
    if (n < kIpv4MinHeader || (p[0] >> 4) != 4) return InvalidReason::kIcmpErrorBad;
    const size_t ihl = size_t{p[0] & 0x0fu} * 4;
    if (ihl < kIpv4MinHeader || ihl > n) return InvalidReason::kIcmpErrorBad;
    if ((load16(p + 6) & 0x1fff) != 0) return InvalidReason::kIcmpErrorBad;  // not the first
    r.proto = p[9];
    r.l4Off = ihl;
  } else {
    if (n < kIpv6Header || (p[0] >> 4) != 6) return InvalidReason::kIcmpErrorBad;
    r = walkIpv6Chain(p, n, p[6], kIpv6Header, true);
    if (r.error != InvalidReason::kNone || r.fragment) return InvalidReason::kIcmpErrorBad;
  }
  setAddrs(out, l3, p);
  out.l4 = r.proto;
  l4Off = static_cast<uint16_t>(r.l4Off);
  const uint8_t* l4 = p + r.l4Off;
  const size_t l4Len = n - r.l4Off;
  if (usesPorts(r.proto)) {
    // nf_ct_get_tuple_ports reads only the two ports.
    if (l4Len < 4) return InvalidReason::kIcmpErrorBad;
    out.sport = load16(l4);
    out.dport = load16(l4 + 2);
  } else if (r.proto == proto::kIcmp || r.proto == proto::kIcmpv6) {
    if (l4Len < kIcmpHeader) return InvalidReason::kIcmpErrorBad;
    out.sport = load16(l4 + 4);
    out.dport = load16(l4);  // type << 8 | code
  }
  return InvalidReason::kNone;
}

// L4 checks and the tuple's protocol part for the outer packet.
InvalidReason parseL4(L3 l3, const uint8_t* ip, uint8_t proto, Packet& pkt,
                      const ParseOptions& options) {
  const uint8_t* l4 = pkt.l4;
  const size_t l4Len = pkt.l4Len;
  Tuple& t = pkt.tuple;
  switch (proto) {
    case proto::kTcp: {
      if (l4Len < 8) return InvalidReason::kTruncated;
      if (options.verifyChecksums &&
          !checksumOk(sumBytes(l4, l4Len, pseudoSum(l3, ip, proto, l4Len)))) {
        return InvalidReason::kBadL4Checksum;
      }
      t.sport = load16(l4);
      t.dport = load16(l4 + 2);
      return InvalidReason::kNone;
    }
    case proto::kUdp: {
      if (l4Len < 8) return InvalidReason::kTruncated;
      const size_t udpLen = load16(l4 + 4);
      if (udpLen < 8 || udpLen > l4Len) return InvalidReason::kBadL4Header;
      // A zero checksum means "none" to udp_error for IPv4 and IPv6 alike.
      if (options.verifyChecksums && load16(l4 + 6) != 0 &&
          !checksumOk(sumBytes(l4, l4Len, pseudoSum(l3, ip, proto, l4Len)))) {
        return InvalidReason::kBadL4Checksum;
      }
      t.sport = load16(l4);
      t.dport = load16(l4 + 2);
      return InvalidReason::kNone;
    }
    case proto::kUdplite: {
      if (l4Len < 8) return InvalidReason::kTruncated;
      size_t coverage = load16(l4 + 4);
      if (coverage == 0) {
        coverage = l4Len;
      } else if (coverage < 8 || coverage > l4Len) {
        return InvalidReason::kBadL4Header;
      }
      if (load16(l4 + 6) == 0) return InvalidReason::kBadL4Checksum;  // mandatory
      // Linux's udplite_error() checks the sum with IPPROTO_UDP (17) in the pseudo header, not
      // RFC 3828's 136: a datagram summed as the RFC says is INVALID to conntrack, one summed
      // with 17 passes. The kernel is the oracle here (tests/diff nat_masq_udplite).
      if (options.verifyChecksums &&
          !checksumOk(sumBytes(l4, coverage, pseudoSum(l3, ip, proto::kUdp, l4Len)))) {
        return InvalidReason::kBadL4Checksum;
      }
      t.sport = load16(l4);
      t.dport = load16(l4 + 2);
      return InvalidReason::kNone;
    }
    case proto::kIcmp:
    case proto::kIcmpv6: {
      // ICMP over IPv6 or ICMPv6 over IPv4: the kernel's trackers refuse it (state->pf check).
      if ((proto == proto::kIcmp) != (l3 == L3::kIpv4)) return InvalidReason::kBadL4Header;
      if (l4Len < kIcmpHeader) return InvalidReason::kTruncated;
      if (options.verifyChecksums) {
        const uint64_t acc = proto == proto::kIcmp ? 0 : pseudoSum(l3, ip, proto, l4Len);
        if (!checksumOk(sumBytes(l4, l4Len, acc))) return InvalidReason::kBadL4Checksum;
      }
      const uint8_t type = l4[0];
      t.sport = load16(l4 + 4);
      t.dport = load16(l4);
      bool error;
      if (proto == proto::kIcmp) {
        if (type > kMaxIcmpType) return InvalidReason::kBadL4Header;
        error = isIcmpv4Error(type);
      } else {
        error = type < 128;  // nf_conntrack_icmpv6_error: every type below 128 is an error
      }
      if (!error) return InvalidReason::kNone;
      pkt.icmpError = true;
      pkt.inner = Tuple{};
      return parseInner(l3, l4 + kIcmpHeader, l4Len - kIcmpHeader, pkt.inner, pkt.innerL4);
    }
    default:
      return InvalidReason::kNone;  // generic tracker: no ports
  }
}

}  // namespace

void parseIpInto(const uint8_t* data, size_t len, const ParseOptions& options, ParseResult& out) {
  // Every field the result promises is written here, and nothing else: `out` is reused across
  // packets on the hot path, and building a zeroed temporary per packet costs more than the
  // parse itself.
  auto fail = [&out](InvalidReason why) {
    out.kind = ParseKind::kInvalid;
    out.reason = why;
  };
  if (data == nullptr || len == 0) return fail(InvalidReason::kTruncated);
  const uint8_t version = data[0] >> 4;
  L3 l3;
  L3Result r;
  if (version == 4) {
    l3 = L3::kIpv4;
    r = parseIpv4Header(data, len);
  } else if (version == 6) {
    l3 = L3::kIpv6;
    r = parseIpv6Header(data, len);
  } else {
    return fail(InvalidReason::kBadIpVersion);
  }
  if (r.error != InvalidReason::kNone) return fail(r.error);

  Packet& pkt = out.packet;
  pkt.l3 = data;
  pkt.ipLen = static_cast<uint32_t>(r.ipLen);
  pkt.icmpError = false;
  setAddrs(pkt.tuple, l3, data);
  pkt.tuple.sport = 0;
  pkt.tuple.dport = 0;
  out.reason = InvalidReason::kNone;
  if (r.fragment) {
    out.kind = ParseKind::kFragment;
    pkt.tuple.l4 = l3 == L3::kIpv4 ? r.proto : 0;
    pkt.l4 = nullptr;
    pkt.l4Len = 0;
    return;
  }
  pkt.tuple.l4 = r.proto;
  pkt.l4 = data + r.l4Off;
  pkt.l4Len = static_cast<uint32_t>(r.ipLen - r.l4Off);
  const InvalidReason l4Error = parseL4(l3, data, r.proto, pkt, options);
  if (l4Error != InvalidReason::kNone) return fail(l4Error);
  out.kind = ParseKind::kPacket;
}

ParseResult parseIp(const uint8_t* data, size_t len, const ParseOptions& options) {
  ParseResult res;
  parseIpInto(data, len, options, res);
  return res;
}

}  // namespace ctsync::table
