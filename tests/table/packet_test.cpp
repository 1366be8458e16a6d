#include "table/packet.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

namespace ctsync::table {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr uint8_t kProtoGre = 47;
constexpr uint8_t kProtoEsp = 50;

void put16(Bytes& b, size_t off, uint16_t v) {
  b[off] = static_cast<uint8_t>(v >> 8);
  b[off + 1] = static_cast<uint8_t>(v);
}

uint64_t sum(const uint8_t* p, size_t n, uint64_t acc = 0) {
  for (size_t i = 0; i < n; ++i) acc += (i % 2 == 0) ? uint64_t{p[i]} << 8 : uint64_t{p[i]};
  return acc;
}

uint16_t finish(uint64_t acc) {
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(~acc & 0xffff);
}

// Where the checksum of each protocol sits inside its header; -1 for none.
int checksumOffset(uint8_t proto) {
  switch (proto) {
    case proto::kTcp:
      return 16;
    case proto::kUdp:
    case proto::kUdplite:
      return 6;
    case proto::kIcmp:
    case proto::kIcmpv6:
      return 2;
    default:
      return -1;
  }
}

// Fills in the L4 checksum of a finished packet (l4 at `l4Off`, `l4Len` bytes).
void fixL4Checksum(Bytes& pkt, bool v6, size_t l4Off, size_t l4Len, uint8_t proto,
                   size_t coverage = 0) {
  const int off = checksumOffset(proto);
  if (off < 0 || l4Len < static_cast<size_t>(off) + 2) return;
  put16(pkt, l4Off + static_cast<size_t>(off), 0);
  uint64_t acc = 0;
  if (proto != proto::kIcmp) {
    acc = v6 ? sum(pkt.data() + 8, 32) : sum(pkt.data() + 12, 8);
    // UDP-Lite is summed with protocol 17, as Linux conntrack checks it (see packet.cpp).
    acc += l4Len + (proto == proto::kUdplite ? proto::kUdp : proto);
  }
  const size_t n = coverage != 0 ? coverage : l4Len;
  uint16_t c = finish(sum(pkt.data() + l4Off, n, acc));
  if (proto == proto::kUdp && c == 0) c = 0xffff;
  put16(pkt, l4Off + static_cast<size_t>(off), c);
}

struct V4 {
  uint8_t src[4] = {10, 0, 0, 1};
  uint8_t dst[4] = {10, 0, 0, 2};
  uint16_t id = 0x1234;
  uint16_t frag = 0;
  Bytes options;
  bool fixL4 = true;
};

Bytes ipv4(uint8_t proto, const Bytes& l4, const V4& h = {}) {
  const size_t ihl = 20 + h.options.size();
  Bytes p(ihl + l4.size());
  p[0] = static_cast<uint8_t>(0x40 | (ihl / 4));
  put16(p, 2, static_cast<uint16_t>(p.size()));
  put16(p, 4, h.id);
  put16(p, 6, h.frag);
  p[8] = 64;
  p[9] = proto;
  std::memcpy(&p[12], h.src, 4);
  std::memcpy(&p[16], h.dst, 4);
  std::copy(h.options.begin(), h.options.end(), p.begin() + 20);
  std::copy(l4.begin(), l4.end(), p.begin() + static_cast<long>(ihl));
  put16(p, 10, finish(sum(p.data(), ihl)));
  if (h.fixL4) fixL4Checksum(p, false, ihl, l4.size(), proto);
  return p;
}

void refreshIpv4Checksum(Bytes& p) {
  const size_t ihl = size_t{p[0] & 0x0fu} * 4;
  put16(p, 10, 0);
  put16(p, 10, finish(sum(p.data(), ihl)));
}

struct V6 {
  uint8_t src[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  uint8_t dst[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
  // Extension headers as (type, bytes) in order; each `bytes` has its next-header byte
  // filled in by the builder.
  std::vector<std::pair<uint8_t, Bytes>> exts;
  bool fixL4 = true;
};

// An options-style extension header of 8 * (units + 1) bytes.
Bytes extHeader(uint8_t units) {
  Bytes b(size_t{units + 1u} * 8);
  b[1] = units;
  if (b.size() > 2) {
    b[2] = 1;  // PadN covering the rest
    b[3] = static_cast<uint8_t>(b.size() - 4);
  }
  return b;
}

Bytes ipv6(uint8_t proto, const Bytes& l4, const V6& h = {}) {
  Bytes p(40);
  p[0] = 0x60;
  p[7] = 64;
  std::memcpy(&p[8], h.src, 16);
  std::memcpy(&p[24], h.dst, 16);
  size_t prev = 6;
  for (const auto& [type, bytes] : h.exts) {
    p[prev] = type;
    prev = p.size();
    p.insert(p.end(), bytes.begin(), bytes.end());
  }
  p[prev] = proto;
  const size_t l4Off = p.size();
  p.insert(p.end(), l4.begin(), l4.end());
  put16(p, 4, static_cast<uint16_t>(p.size() - 40));
  if (h.fixL4) fixL4Checksum(p, true, l4Off, l4.size(), proto);
  return p;
}

Bytes tcp(uint16_t sport, uint16_t dport) {
  Bytes b(20);
  put16(b, 0, sport);
  put16(b, 2, dport);
  b[12] = 0x50;
  b[13] = 0x02;  // SYN
  put16(b, 14, 65535);
  return b;
}

Bytes udp(uint16_t sport, uint16_t dport, size_t payload = 4) {
  Bytes b(8 + payload);
  put16(b, 0, sport);
  put16(b, 2, dport);
  put16(b, 4, static_cast<uint16_t>(b.size()));
  for (size_t i = 0; i < payload; ++i) b[8 + i] = static_cast<uint8_t>(i * 7 + 1);
  return b;
}

Bytes icmp(uint8_t type, uint8_t code, uint16_t id, const Bytes& rest = {0, 1, 'h', 'i'}) {
  Bytes b(4);
  b[0] = type;
  b[1] = code;
  Bytes idSeq(2);
  put16(idSeq, 0, id);
  b.insert(b.end(), idSeq.begin(), idSeq.end());
  b.insert(b.end(), rest.begin(), rest.end());
  return b;
}

// An ICMP error body: 4 unused bytes, then the offending datagram (cut to `keep` bytes).
Bytes icmpError(uint8_t type, uint8_t code, const Bytes& inner, size_t keep) {
  Bytes b = {type, code, 0, 0, 0, 0, 0, 0};
  b.insert(b.end(), inner.begin(), inner.begin() + static_cast<long>(std::min(keep, inner.size())));
  return b;
}

ParseResult parse(const Bytes& p, bool verify = true) {
  ParseOptions o;
  o.verifyChecksums = verify;
  return parseIp(p.data(), p.size(), o);
}

Addr v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return Addr::v4((uint32_t{a} << 24) | (uint32_t{b} << 16) | (uint32_t{c} << 8) | d);
}

// --- IPv4 -----------------------------------------------------------------------------------

TEST(PacketTest, Ipv4TcpTuple) {
  const Bytes p = ipv4(proto::kTcp, tcp(40000, 80));
  const ParseResult r = parse(p);
  ASSERT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
  EXPECT_EQ(r.packet.tuple.l3, L3::kIpv4);
  EXPECT_EQ(r.packet.tuple.l4, proto::kTcp);
  EXPECT_EQ(r.packet.tuple.src, v4(10, 0, 0, 1));
  EXPECT_EQ(r.packet.tuple.dst, v4(10, 0, 0, 2));
  EXPECT_EQ(r.packet.tuple.sport, 40000);
  EXPECT_EQ(r.packet.tuple.dport, 80);
  EXPECT_EQ(r.packet.l3, p.data());
  EXPECT_EQ(r.packet.ipLen, 40u);
  EXPECT_EQ(r.packet.l4, p.data() + 20);
  EXPECT_EQ(r.packet.l4Len, 20u);
  EXPECT_FALSE(r.packet.icmpError);
}

TEST(PacketTest, Ipv4EthernetPaddingIgnored) {
  Bytes p = ipv4(proto::kUdp, udp(5353, 53, 2));  // 30 bytes: Ethernet pads to 46
  p.resize(46, 0xAA);
  const ParseResult r = parse(p);
  ASSERT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
  EXPECT_EQ(r.packet.ipLen, 30u);
  EXPECT_EQ(r.packet.l4Len, 10u);
}

TEST(PacketTest, Ipv4OptionsSkipped) {
  V4 h;
  h.options = {1, 1, 0x44, 8, 5, 0, 0, 0, 0, 0, 1, 0};  // NOP NOP timestamp(8) ... EOL pad
  const Bytes p = ipv4(proto::kUdp, udp(1000, 2000), h);
  const ParseResult r = parse(p);
  ASSERT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
  EXPECT_EQ(r.packet.l4, p.data() + 32);
  EXPECT_EQ(r.packet.tuple.sport, 1000);
}

TEST(PacketTest, Ipv4MalformedOptions) {
  for (const Bytes& opts :
       {Bytes{0x44, 12, 0, 0}, Bytes{1, 1, 1, 0x44}, Bytes{0x83, 1, 0, 0}, Bytes{0x83, 0, 0, 0}}) {
    V4 h;
    h.options = opts;
    const ParseResult r = parse(ipv4(proto::kUdp, udp(1, 2), h));
    EXPECT_EQ(r.kind, ParseKind::kInvalid);
    EXPECT_EQ(r.reason, InvalidReason::kBadIpHeader);
  }
}

TEST(PacketTest, Ipv4HeaderErrors) {
  const Bytes good = ipv4(proto::kTcp, tcp(1, 2));
  {
    Bytes p = good;
    p[0] = 0x44;  // IHL 4
    refreshIpv4Checksum(p);
    EXPECT_EQ(parse(p).reason, InvalidReason::kBadIpHeader);
  }
  {
    Bytes p = good;
    p[0] = 0x55;
    EXPECT_EQ(parse(p).reason, InvalidReason::kBadIpVersion);
  }
  {
    Bytes p = good;
    p[8] ^= 1;  // TTL changed, checksum not
    EXPECT_EQ(parse(p).reason, InvalidReason::kBadIpChecksum);
  }
  {
    Bytes p = good;
    put16(p, 2, 41);  // claims one byte more than captured
    refreshIpv4Checksum(p);
    EXPECT_EQ(parse(p).reason, InvalidReason::kTruncated);
  }
  {
    Bytes p = good;
    put16(p, 2, 19);  // shorter than the header
    refreshIpv4Checksum(p);
    EXPECT_EQ(parse(p).reason, InvalidReason::kBadIpHeader);
  }
  {
    Bytes p = good;
    p[0] = 0x4f;  // IHL 60 > captured (checked before the checksum)
    EXPECT_EQ(parse(p).reason, InvalidReason::kTruncated);
  }
  EXPECT_EQ(parseIp(good.data(), 0, {}).reason, InvalidReason::kTruncated);
  EXPECT_EQ(parseIp(nullptr, 0, {}).reason, InvalidReason::kTruncated);
}

TEST(PacketTest, Ipv4FragmentsReported) {
  for (uint16_t frag : {uint16_t{0x2000}, uint16_t{0x0001}, uint16_t{0x2010}}) {
    V4 h;
    h.frag = frag;
    const ParseResult r = parse(ipv4(proto::kUdp, udp(1, 2), h));
    EXPECT_EQ(r.kind, ParseKind::kFragment) << frag;
    EXPECT_EQ(r.packet.ipLen, 32u);
  }
  V4 df;
  df.frag = 0x4000;  // DF alone is not a fragment
  EXPECT_EQ(parse(ipv4(proto::kUdp, udp(1, 2), df)).kind, ParseKind::kPacket);
}

// --- L4 ---------------------------------------------------------------------------------------

TEST(PacketTest, TcpNeedsEightBytesAndChecksum) {
  EXPECT_EQ(parse(ipv4(proto::kTcp, Bytes(7))).reason, InvalidReason::kTruncated);
  // Eight bytes give the ports; the rest of the header is the TCP tracker's business.
  Bytes eight(8);
  put16(eight, 0, 7);
  put16(eight, 2, 9);
  V4 h;
  h.fixL4 = false;  // the checksum offset (16) is beyond the bytes
  const Bytes p = ipv4(proto::kTcp, eight, h);
  EXPECT_EQ(parse(p, false).kind, ParseKind::kPacket);
  EXPECT_EQ(parse(p, false).packet.tuple.dport, 9);

  Bytes bad = ipv4(proto::kTcp, tcp(1, 2));
  bad[20 + 16] ^= 0x40;
  EXPECT_EQ(parse(bad).reason, InvalidReason::kBadL4Checksum);
  EXPECT_EQ(parse(bad, false).kind, ParseKind::kPacket);
}

TEST(PacketTest, UdpLengthAndChecksum) {
  // Length field shorter than the IP payload is fine; checksum covers the whole payload.
  Bytes shortLen = udp(1, 2, 8);
  put16(shortLen, 4, 12);
  EXPECT_EQ(parse(ipv4(proto::kUdp, shortLen)).kind, ParseKind::kPacket);

  Bytes tooLong = udp(1, 2, 8);
  put16(tooLong, 4, 17);
  EXPECT_EQ(parse(ipv4(proto::kUdp, tooLong)).reason, InvalidReason::kBadL4Header);
  Bytes tooShort = udp(1, 2, 8);
  put16(tooShort, 4, 7);
  EXPECT_EQ(parse(ipv4(proto::kUdp, tooShort)).reason, InvalidReason::kBadL4Header);
  EXPECT_EQ(parse(ipv4(proto::kUdp, Bytes(7))).reason, InvalidReason::kTruncated);

  Bytes bad = ipv4(proto::kUdp, udp(1, 2));
  bad.back() ^= 1;
  EXPECT_EQ(parse(bad).reason, InvalidReason::kBadL4Checksum);

  // Zero means "no checksum" (udp_error makes no difference between IPv4 and IPv6).
  Bytes none = ipv4(proto::kUdp, udp(1, 2));
  put16(none, 26, 0);
  EXPECT_EQ(parse(none).kind, ParseKind::kPacket);
  Bytes none6 = ipv6(proto::kUdp, udp(1, 2));
  put16(none6, 46, 0);
  EXPECT_EQ(parse(none6).kind, ParseKind::kPacket);
}

TEST(PacketTest, UdpLiteCoverage) {
  auto lite = [](uint16_t coverage, size_t payload) {
    Bytes l4 = udp(3000, 4000, payload);
    put16(l4, 4, coverage);
    V4 h;
    h.fixL4 = false;
    Bytes p = ipv4(proto::kUdplite, l4, h);
    const size_t cov = coverage == 0 ? l4.size() : std::min<size_t>(coverage, l4.size());
    fixL4Checksum(p, false, 20, l4.size(), proto::kUdplite, std::max<size_t>(cov, 8));
    return p;
  };
  EXPECT_EQ(parse(lite(0, 12)).kind, ParseKind::kPacket);
  {
    // Summed as RFC 3828 says (protocol 136 in the pseudo header): Linux conntrack, which
    // sums with 17, calls it a bad checksum, and so does the parser.
    Bytes rfc = lite(0, 12);
    put16(rfc, 26, 0);
    const uint64_t acc = sum(rfc.data() + 12, 8) + (rfc.size() - 20) + proto::kUdplite;
    put16(rfc, 26, finish(sum(rfc.data() + 20, rfc.size() - 20, acc)));
    EXPECT_EQ(parse(rfc).reason, InvalidReason::kBadL4Checksum);
  }
  EXPECT_EQ(parse(lite(8, 12)).kind, ParseKind::kPacket);
  EXPECT_EQ(parse(lite(13, 12)).kind, ParseKind::kPacket);
  EXPECT_EQ(parse(lite(20, 12)).kind, ParseKind::kPacket);
  EXPECT_EQ(parse(lite(0, 12)).packet.tuple.sport, 3000);
  EXPECT_EQ(parse(lite(4, 12)).reason, InvalidReason::kBadL4Header);
  EXPECT_EQ(parse(lite(21, 12)).reason, InvalidReason::kBadL4Header);

  // Bytes beyond the coverage are not checksummed.
  Bytes partial = lite(8, 12);
  partial.back() ^= 0xff;
  EXPECT_EQ(parse(partial).kind, ParseKind::kPacket);
  Bytes full = lite(0, 12);
  full.back() ^= 0xff;
  EXPECT_EQ(parse(full).reason, InvalidReason::kBadL4Checksum);

  Bytes missing = lite(0, 12);
  put16(missing, 26, 0);  // UDP-Lite mandates a checksum
  EXPECT_EQ(parse(missing, false).reason, InvalidReason::kBadL4Checksum);
}

TEST(PacketTest, IcmpEchoTuple) {
  const Bytes p = ipv4(proto::kIcmp, icmp(8, 0, 0xbeef));
  const ParseResult r = parse(p);
  ASSERT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
  EXPECT_EQ(r.packet.tuple.l4, proto::kIcmp);
  EXPECT_EQ(r.packet.tuple.sport, 0xbeef);
  EXPECT_EQ(r.packet.tuple.icmpType(), 8);
  EXPECT_EQ(r.packet.tuple.icmpCode(), 0);
  EXPECT_FALSE(r.packet.icmpError);

  Bytes bad = p;
  bad.back() ^= 1;
  EXPECT_EQ(parse(bad).reason, InvalidReason::kBadL4Checksum);
  EXPECT_EQ(parse(ipv4(proto::kIcmp, Bytes{8, 0, 0, 0, 0, 1, 0})).reason,
            InvalidReason::kTruncated);
  // NR_ICMP_TYPES is 18: anything above is INVALID in the kernel.
  EXPECT_EQ(parse(ipv4(proto::kIcmp, icmp(19, 0, 1))).reason, InvalidReason::kBadL4Header);
  EXPECT_EQ(parse(ipv4(proto::kIcmp, icmp(18, 0, 1))).kind, ParseKind::kPacket);
}

TEST(PacketTest, IcmpErrorCarriesInnerTuple) {
  V4 in;
  in.src[3] = 2;  // inner: 10.0.0.2 -> 192.0.2.9, as the original sender sent it
  in.dst[0] = 192;
  in.dst[1] = 0;
  in.dst[2] = 2;
  in.dst[3] = 9;
  const Bytes inner = ipv4(proto::kUdp, udp(33000, 53, 40), in);
  for (uint8_t type : {uint8_t{3}, uint8_t{4}, uint8_t{5}, uint8_t{11}, uint8_t{12}}) {
    const Bytes p = ipv4(proto::kIcmp, icmpError(type, 1, inner, 28));
    const ParseResult r = parse(p);
    ASSERT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
    EXPECT_TRUE(r.packet.icmpError);
    EXPECT_EQ(r.packet.tuple.icmpType(), type);
    EXPECT_EQ(r.packet.inner.l3, L3::kIpv4);
    EXPECT_EQ(r.packet.inner.l4, proto::kUdp);
    EXPECT_EQ(r.packet.inner.src, v4(10, 0, 0, 2));
    EXPECT_EQ(r.packet.inner.dst, v4(192, 0, 2, 9));
    EXPECT_EQ(r.packet.inner.sport, 33000);
    EXPECT_EQ(r.packet.inner.dport, 53);
    EXPECT_EQ(r.packet.l4, p.data() + 20);  // still the outer ICMP header
  }
}

TEST(PacketTest, IcmpErrorInnerChecks) {
  const Bytes innerTcp = ipv4(proto::kTcp, tcp(1234, 80));
  // The kernel reads only the ports of the inner L4 header (nf_ct_get_tuple_ports).
  EXPECT_EQ(parse(ipv4(proto::kIcmp, icmpError(3, 3, innerTcp, 24))).kind, ParseKind::kPacket);
  EXPECT_EQ(parse(ipv4(proto::kIcmp, icmpError(3, 3, innerTcp, 23))).reason,
            InvalidReason::kIcmpErrorBad);
  EXPECT_EQ(parse(ipv4(proto::kIcmp, icmpError(3, 3, innerTcp, 19))).reason,
            InvalidReason::kIcmpErrorBad);

  // A non-first fragment has no L4 header to read; a first fragment does.
  V4 later;
  later.frag = 0x0003;
  const Bytes innerLater = ipv4(proto::kUdp, udp(1, 2), later);
  EXPECT_EQ(parse(ipv4(proto::kIcmp, icmpError(11, 1, innerLater, 28))).reason,
            InvalidReason::kIcmpErrorBad);
  V4 first;
  first.frag = 0x2000;
  const Bytes innerFirst = ipv4(proto::kUdp, udp(1, 2), first);
  EXPECT_EQ(parse(ipv4(proto::kIcmp, icmpError(11, 1, innerFirst, 28))).kind, ParseKind::kPacket);

  // Inner header nonsense.
  Bytes badIhl = innerTcp;
  badIhl[0] = 0x43;
  EXPECT_EQ(parse(ipv4(proto::kIcmp, icmpError(3, 3, badIhl, 28))).reason,
            InvalidReason::kIcmpErrorBad);

  // Inner ICMP gives id and type/code the same way; the inner checksum is not looked at.
  Bytes innerEcho = ipv4(proto::kIcmp, icmp(8, 0, 77, Bytes(32, 1)));
  innerEcho[20 + 2] ^= 0xff;
  const ParseResult r = parse(ipv4(proto::kIcmp, icmpError(3, 1, innerEcho, 28)));
  ASSERT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
  EXPECT_EQ(r.packet.inner.l4, proto::kIcmp);
  EXPECT_EQ(r.packet.inner.sport, 77);
  EXPECT_EQ(r.packet.inner.icmpType(), 8);

  // The outer ICMP checksum is checked.
  Bytes bad = ipv4(proto::kIcmp, icmpError(3, 3, innerTcp, 28));
  bad[21] ^= 1;
  EXPECT_EQ(parse(bad).reason, InvalidReason::kBadL4Checksum);
}

TEST(PacketTest, GenericProtocolHasNoPorts) {
  const ParseResult r = parse(ipv4(kProtoGre, Bytes{0, 0, 0x08, 0, 1, 2, 3, 4}));
  ASSERT_EQ(r.kind, ParseKind::kPacket);
  EXPECT_EQ(r.packet.tuple.l4, kProtoGre);
  EXPECT_EQ(r.packet.tuple.sport, 0);
  EXPECT_EQ(r.packet.tuple.dport, 0);
  EXPECT_EQ(r.packet.l4Len, 8u);
  // Even an empty payload is tracked by the generic tracker.
  EXPECT_EQ(parse(ipv4(kProtoGre, Bytes{})).kind, ParseKind::kPacket);
}

TEST(PacketTest, IcmpOverWrongFamilyIsInvalid) {
  EXPECT_EQ(parse(ipv6(proto::kIcmp, icmp(8, 0, 1))).kind, ParseKind::kInvalid);
  EXPECT_EQ(parse(ipv4(proto::kIcmpv6, icmp(128, 0, 1))).kind, ParseKind::kInvalid);
}

// --- IPv6 ---------------------------------------------------------------------------------

TEST(PacketTest, Ipv6UdpTuple) {
  const Bytes p = ipv6(proto::kUdp, udp(546, 547));
  const ParseResult r = parse(p);
  ASSERT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
  EXPECT_EQ(r.packet.tuple.l3, L3::kIpv6);
  EXPECT_EQ(r.packet.tuple.src.bytes[0], 0x20);
  EXPECT_EQ(r.packet.tuple.src.bytes[15], 1);
  EXPECT_EQ(r.packet.tuple.dst.bytes[15], 2);
  EXPECT_EQ(r.packet.tuple.sport, 546);
  EXPECT_EQ(r.packet.tuple.dport, 547);
  EXPECT_EQ(r.packet.ipLen, 52u);
  EXPECT_EQ(r.packet.l4Len, 12u);
}

TEST(PacketTest, Ipv6ExtensionHeadersWalked) {
  V6 h;
  h.exts = {{0, extHeader(0)}, {43, extHeader(1)}, {60, extHeader(2)}};
  Bytes ah(16);  // AH: length counts 4-byte words minus 2 -> (2 + 2) * 4 = 16
  ah[1] = 2;
  h.exts.emplace_back(51, ah);
  const Bytes p = ipv6(proto::kTcp, tcp(22, 50000), h);
  const ParseResult r = parse(p);
  ASSERT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
  EXPECT_EQ(r.packet.tuple.l4, proto::kTcp);
  EXPECT_EQ(r.packet.l4, p.data() + 40 + 8 + 16 + 24 + 16);
  EXPECT_EQ(r.packet.l4Len, 20u);
  EXPECT_EQ(r.packet.tuple.sport, 22);
}

TEST(PacketTest, Ipv6FragmentHeaderMeansFragment) {
  V6 h;
  Bytes frag(8);
  frag[3] = 1;  // offset 0, M set
  h.exts = {{0, extHeader(0)}, {44, frag}};
  EXPECT_EQ(parse(ipv6(proto::kUdp, udp(1, 2), h)).kind, ParseKind::kFragment);
  h.exts = {{44, Bytes(8)}};  // an atomic fragment still goes through reassembly
  EXPECT_EQ(parse(ipv6(proto::kUdp, udp(1, 2), h)).kind, ParseKind::kFragment);
}

TEST(PacketTest, Ipv6EspAndNoNextHeader) {
  const ParseResult esp = parse(ipv6(kProtoEsp, Bytes{0, 0, 1, 0, 0, 0, 0, 1, 9, 9}));
  ASSERT_EQ(esp.kind, ParseKind::kPacket);
  EXPECT_EQ(esp.packet.tuple.l4, kProtoEsp);
  EXPECT_EQ(esp.packet.tuple.sport, 0);
  // ipv6_skip_exthdr gives up on "no next header", so the kernel counts it INVALID.
  const ParseResult none = parse(ipv6(59, Bytes{}));
  EXPECT_EQ(none.kind, ParseKind::kInvalid);
  EXPECT_EQ(none.reason, InvalidReason::kBadExtHeader);
}

TEST(PacketTest, Ipv6HeaderErrors) {
  Bytes p = ipv6(proto::kUdp, udp(1, 2));
  Bytes longer = p;
  put16(longer, 4, 13);
  EXPECT_EQ(parse(longer).reason, InvalidReason::kTruncated);
  EXPECT_EQ(parseIp(p.data(), 39, {}).reason, InvalidReason::kTruncated);

  V6 hop;
  hop.exts = {{0, extHeader(0)}};
  Bytes jumbo = ipv6(proto::kUdp, udp(1, 2), hop);
  put16(jumbo, 4, 0);
  EXPECT_EQ(parse(jumbo).kind, ParseKind::kInvalid);

  // An extension header running past the payload.
  V6 h;
  h.exts = {{60, extHeader(0)}};
  Bytes overrun = ipv6(proto::kUdp, udp(1, 2), h);
  overrun[41] = 3;  // now claims 32 bytes
  EXPECT_EQ(parse(overrun).reason, InvalidReason::kBadExtHeader);
  // A chain cut off before the next header's first two bytes.
  Bytes cut = ipv6(60, Bytes{});
  EXPECT_EQ(parse(cut).reason, InvalidReason::kBadExtHeader);
}

TEST(PacketTest, Icmpv6EchoAndChecksum) {
  const Bytes p = ipv6(proto::kIcmpv6, icmp(128, 0, 0x4242));
  const ParseResult r = parse(p);
  ASSERT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
  EXPECT_EQ(r.packet.tuple.l4, proto::kIcmpv6);
  EXPECT_EQ(r.packet.tuple.sport, 0x4242);
  EXPECT_EQ(r.packet.tuple.icmpType(), 128);
  EXPECT_FALSE(r.packet.icmpError);
  Bytes bad = p;
  bad[20] ^= 1;  // an address byte: the pseudo header is covered
  EXPECT_EQ(parse(bad).reason, InvalidReason::kBadL4Checksum);
}

TEST(PacketTest, Icmpv6ErrorCarriesInnerTuple) {
  V6 in;
  in.exts = {{60, extHeader(0)}};
  std::swap(in.src, in.dst);
  const Bytes inner = ipv6(proto::kTcp, tcp(443, 51000), in);
  for (uint8_t type : {uint8_t{1}, uint8_t{2}, uint8_t{3}, uint8_t{4}}) {
    const Bytes p = ipv6(proto::kIcmpv6, icmpError(type, 0, inner, inner.size()));
    const ParseResult r = parse(p);
    ASSERT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
    EXPECT_TRUE(r.packet.icmpError);
    EXPECT_EQ(r.packet.inner.l3, L3::kIpv6);
    EXPECT_EQ(r.packet.inner.l4, proto::kTcp);
    EXPECT_EQ(r.packet.inner.src.bytes[15], 2);
    EXPECT_EQ(r.packet.inner.sport, 443);
    EXPECT_EQ(r.packet.inner.dport, 51000);
  }
  // Non-first inner fragment, and an inner chain ending in "no next header".
  V6 fragIn;
  Bytes frag(8);
  frag[2] = 0x01;  // offset 256
  fragIn.exts = {{44, frag}};
  const Bytes innerFrag = ipv6(proto::kUdp, udp(1, 2), fragIn);
  EXPECT_EQ(parse(ipv6(proto::kIcmpv6, icmpError(1, 0, innerFrag, innerFrag.size()))).reason,
            InvalidReason::kIcmpErrorBad);
  fragIn.exts = {{44, Bytes{0, 0, 0, 1, 0, 0, 0, 7}}};  // first fragment: stepped over
  const Bytes innerFirst = ipv6(proto::kUdp, udp(5, 6), fragIn);
  const ParseResult first =
      parse(ipv6(proto::kIcmpv6, icmpError(1, 0, innerFirst, innerFirst.size())));
  ASSERT_EQ(first.kind, ParseKind::kPacket) << invalidReasonName(first.reason);
  EXPECT_EQ(first.packet.inner.sport, 5);
  const Bytes innerNone = ipv6(59, Bytes{});
  EXPECT_EQ(parse(ipv6(proto::kIcmpv6, icmpError(1, 0, innerNone, 40))).reason,
            InvalidReason::kIcmpErrorBad);
  EXPECT_EQ(parse(ipv6(proto::kIcmpv6, icmpError(1, 0, inner, 39))).reason,
            InvalidReason::kIcmpErrorBad);
}

// --- robustness --------------------------------------------------------------------------------

std::vector<Bytes> samples() {
  V4 opts;
  opts.options = {1, 1, 1, 0};
  V6 exts;
  exts.exts = {{0, extHeader(0)}, {60, extHeader(1)}};
  V6 frag;
  frag.exts = {{44, Bytes{0, 0, 0, 1, 0, 0, 0, 9}}};
  const Bytes innerUdp = ipv4(proto::kUdp, udp(1, 2, 20));
  const Bytes innerTcp6 = ipv6(proto::kTcp, tcp(3, 4), exts);
  return {
      ipv4(proto::kTcp, tcp(1, 2)),
      ipv4(proto::kUdp, udp(1, 2, 30), opts),
      ipv4(proto::kIcmp, icmp(8, 0, 5)),
      ipv4(proto::kIcmp, icmpError(3, 3, innerUdp, innerUdp.size())),
      ipv6(proto::kTcp, tcp(1, 2), exts),
      ipv6(proto::kUdp, udp(1, 2, 16), frag),
      ipv6(proto::kIcmpv6, icmpError(1, 4, innerTcp6, innerTcp6.size())),
      ipv6(proto::kUdplite, udp(8, 9, 12)),
  };
}

// Parses from an exact-size heap copy so that ASan sees any read past the end.
ParseResult parseExact(const uint8_t* p, size_t n, bool verify) {
  std::unique_ptr<uint8_t[]> copy(new uint8_t[n == 0 ? 1 : n]);
  if (n != 0) std::memcpy(copy.get(), p, n);
  ParseOptions o;
  o.verifyChecksums = verify;
  const ParseResult r = parseIp(copy.get(), n, o);
  switch (r.kind) {
    case ParseKind::kPacket:
      EXPECT_EQ(r.reason, InvalidReason::kNone);
      EXPECT_LE(r.packet.ipLen, n);
      EXPECT_GE(r.packet.l4, copy.get());
      EXPECT_LE(r.packet.l4 + r.packet.l4Len, copy.get() + r.packet.ipLen);
      break;
    case ParseKind::kFragment:
      EXPECT_LE(r.packet.ipLen, n);
      break;
    case ParseKind::kInvalid:
      EXPECT_NE(r.reason, InvalidReason::kNone);
      EXPECT_LT(r.reason, InvalidReason::kCount);
      break;
    default:
      ADD_FAILURE() << "unknown kind";
  }
  return r;
}

TEST(PacketTest, SamplesAreValid) {
  for (const Bytes& s : samples()) {
    const ParseResult r = parse(s);
    EXPECT_NE(r.kind, ParseKind::kInvalid) << invalidReasonName(r.reason);
  }
}

TEST(PacketTest, EveryTruncationIsInvalid) {
  for (const Bytes& s : samples()) {
    for (size_t n = 0; n < s.size(); ++n) {
      for (bool verify : {true, false}) {
        const ParseResult r = parseExact(s.data(), n, verify);
        EXPECT_EQ(r.kind, ParseKind::kInvalid) << "len " << n;
        EXPECT_EQ(r.reason, InvalidReason::kTruncated) << "len " << n;
      }
    }
  }
}

TEST(PacketTest, RandomMutationsNeverCrash) {
  std::mt19937 rng(20240611);
  const std::vector<Bytes> base = samples();
  int packets = 0;
  int invalids = 0;
  for (int iter = 0; iter < 5000; ++iter) {
    Bytes p = base[rng() % base.size()];
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < flips; ++i) p[rng() % p.size()] = static_cast<uint8_t>(rng());
    if (rng() % 4 == 0) p.resize(rng() % (p.size() + 1));
    if (rng() % 8 == 0) p.resize(p.size() + rng() % 16, static_cast<uint8_t>(rng()));
    for (bool verify : {true, false}) {
      const ParseResult r = parseExact(p.data(), p.size(), verify);
      packets += r.kind == ParseKind::kPacket;
      invalids += r.kind == ParseKind::kInvalid;
    }
  }
  // Both outcomes must be common, or the mutations are not reaching the parser's depths.
  EXPECT_GT(packets, 500);
  EXPECT_GT(invalids, 500);
}

}  // namespace
}  // namespace ctsync::table
