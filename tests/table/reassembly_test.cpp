#include "table/reassembly.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "table/packet.hpp"

namespace ctsync::table {
namespace {

using Bytes = std::vector<uint8_t>;

void put16(Bytes& b, size_t off, size_t v) {
  b[off] = static_cast<uint8_t>(v >> 8);
  b[off + 1] = static_cast<uint8_t>(v);
}

uint16_t checksum(const uint8_t* p, size_t n, uint64_t acc = 0) {
  for (size_t i = 0; i < n; ++i) acc += (i % 2 == 0) ? uint64_t{p[i]} << 8 : uint64_t{p[i]};
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(~acc & 0xffff);
}

void fixIpv4Header(Bytes& p) {
  const size_t ihl = size_t{p[0] & 0x0fu} * 4;
  put16(p, 10, 0);
  put16(p, 10, checksum(p.data(), ihl));
}

// A UDP payload of `n` bytes with a recognisable pattern.
Bytes udpBody(uint16_t sport, uint16_t dport, size_t n) {
  Bytes b(8 + n);
  put16(b, 0, sport);
  put16(b, 2, dport);
  put16(b, 4, b.size());
  for (size_t i = 0; i < n; ++i) b[8 + i] = static_cast<uint8_t>(i * 13 + 5);
  return b;
}

// A whole IPv4 UDP datagram with correct checksums. `id` and `src` vary the key.
Bytes ipv4Udp(size_t payload, uint16_t id = 0x4321, uint8_t srcLast = 1, uint8_t proto = 17) {
  const Bytes l4 = udpBody(1111, 2222, payload);
  Bytes p(20 + l4.size());
  p[0] = 0x45;
  put16(p, 2, p.size());
  put16(p, 4, id);
  p[8] = 64;
  p[9] = proto;
  const uint8_t addrs[8] = {10, 1, 1, srcLast, 10, 2, 2, 2};
  std::memcpy(&p[12], addrs, 8);
  std::memcpy(&p[20], l4.data(), l4.size());
  uint64_t pseudo = 0;
  for (size_t i = 12; i < 20; i += 2) pseudo += (uint64_t{p[i]} << 8) | p[i + 1];
  pseudo += l4.size() + proto;
  const uint16_t c = checksum(&p[20], l4.size(), pseudo);
  put16(p, 26, c == 0 ? 0xffff : c);
  fixIpv4Header(p);
  return p;
}

// The fragment of an unfragmented IPv4 datagram covering payload [from, to).
Bytes ipv4Frag(const Bytes& whole, size_t from, size_t to, bool more) {
  const size_t ihl = size_t{whole[0] & 0x0fu} * 4;
  Bytes f(whole.begin(), whole.begin() + static_cast<long>(ihl));
  f.insert(f.end(), whole.begin() + static_cast<long>(ihl + from),
           whole.begin() + static_cast<long>(ihl + to));
  put16(f, 2, f.size());
  put16(f, 6, (from / 8) | (more ? 0x2000 : 0));
  fixIpv4Header(f);
  return f;
}

// An IPv6 UDP datagram, optionally with a destination-options header before the UDP header.
Bytes ipv6Udp(size_t payload, bool destOpts) {
  const Bytes l4 = udpBody(3333, 4444, payload);
  Bytes p(40);
  p[0] = 0x60;
  p[7] = 64;
  p[8] = 0x20;
  p[9] = 0x01;
  p[23] = 1;
  p[24] = 0x20;
  p[25] = 0x01;
  p[39] = 2;
  if (destOpts) {
    p[6] = 60;
    const Bytes opts = {17, 0, 1, 4, 0, 0, 0, 0};  // next UDP, PadN
    p.insert(p.end(), opts.begin(), opts.end());
  } else {
    p[6] = 17;
  }
  const size_t l4Off = p.size();
  p.insert(p.end(), l4.begin(), l4.end());
  put16(p, 4, p.size() - 40);
  uint64_t pseudo = 0;
  for (size_t i = 8; i < 40; i += 2) pseudo += (uint64_t{p[i]} << 8) | p[i + 1];
  pseudo += l4.size() + 17;
  const uint16_t c = checksum(&p[l4Off], l4.size(), pseudo);
  put16(p, l4Off + 6, c == 0 ? 0xffff : c);
  return p;
}

// Fragment of an IPv6 datagram whose unfragmentable part is `unfrag` bytes long (the last
// next-header field in it is at `prevNh`). Covers fragmentable bytes [from, to).
Bytes ipv6Frag(const Bytes& whole, size_t unfrag, size_t prevNh, size_t from, size_t to, bool more,
               uint32_t id = 0xabcdef01) {
  Bytes f(whole.begin(), whole.begin() + static_cast<long>(unfrag));
  const uint8_t fragNext = f[prevNh];
  f[prevNh] = 44;
  const Bytes fh = {fragNext,
                    0,
                    static_cast<uint8_t>(from >> 8),
                    static_cast<uint8_t>((from & 0xf8) | (more ? 1 : 0)),
                    static_cast<uint8_t>(id >> 24),
                    static_cast<uint8_t>(id >> 16),
                    static_cast<uint8_t>(id >> 8),
                    static_cast<uint8_t>(id)};
  f.insert(f.end(), fh.begin(), fh.end());
  f.insert(f.end(), whole.begin() + static_cast<long>(unfrag + from),
           whole.begin() + static_cast<long>(unfrag + to));
  put16(f, 4, f.size() - 40);
  return f;
}

FragResult add(Reassembler& r, const Bytes& f, Nanos now = 0) {
  return r.add(f.data(), f.size(), now);
}

Bytes bytesOf(const FragResult& r) {
  return Bytes(r.datagram.begin(), r.datagram.end());
}

void expectParsesAsWhole(const FragResult& r, uint8_t l4) {
  ASSERT_EQ(r.status, FragStatus::kComplete);
  const ParseResult p = parseIp(r.datagram.data(), r.datagram.size(), {});
  ASSERT_EQ(p.kind, ParseKind::kPacket) << invalidReasonName(p.reason);
  EXPECT_EQ(p.packet.tuple.l4, l4);
  EXPECT_EQ(p.packet.ipLen, r.datagram.size());
}

TEST(ReassemblyTest, Ipv4InOrder) {
  Reassembler r({});
  const Bytes whole = ipv4Udp(1000);  // 1008 bytes of UDP
  ASSERT_EQ(parseIp(ipv4Frag(whole, 0, 400, true).data(), 420, {}).kind, ParseKind::kFragment);
  EXPECT_EQ(add(r, ipv4Frag(whole, 0, 400, true)).status, FragStatus::kIncomplete);
  EXPECT_EQ(add(r, ipv4Frag(whole, 400, 800, true)).status, FragStatus::kIncomplete);
  EXPECT_GT(r.bytesHeld(), 800u);
  const FragResult done = add(r, ipv4Frag(whole, 800, 1008, false));
  expectParsesAsWhole(done, 17);
  EXPECT_EQ(bytesOf(done), whole);  // header fields restored exactly
  EXPECT_EQ(r.counters().fragments, 3u);
  EXPECT_EQ(r.counters().reassembled, 1u);
  EXPECT_EQ(r.bytesHeld(), 0u);
}

TEST(ReassemblyTest, Ipv4OutOfOrder) {
  Reassembler r({});
  const Bytes whole = ipv4Udp(3000);
  const std::vector<Bytes> frags = {
      ipv4Frag(whole, 2400, 3008, false), ipv4Frag(whole, 800, 1600, true),
      ipv4Frag(whole, 1600, 2400, true), ipv4Frag(whole, 0, 800, true)};
  for (size_t i = 0; i + 1 < frags.size(); ++i) {
    EXPECT_EQ(add(r, frags[i]).status, FragStatus::kIncomplete);
  }
  const FragResult done = add(r, frags.back());
  expectParsesAsWhole(done, 17);
  EXPECT_EQ(bytesOf(done), whole);
}

TEST(ReassemblyTest, DuplicatesAreIgnored) {
  Reassembler r({});
  const Bytes whole = ipv4Udp(600);
  EXPECT_EQ(add(r, ipv4Frag(whole, 0, 304, true)).status, FragStatus::kIncomplete);
  EXPECT_EQ(add(r, ipv4Frag(whole, 0, 304, true)).status, FragStatus::kIncomplete);
  // Wholly inside what is held: a duplicate too, not an overlap.
  EXPECT_EQ(add(r, ipv4Frag(whole, 8, 104, true)).status, FragStatus::kIncomplete);
  const FragResult done = add(r, ipv4Frag(whole, 304, 608, false));
  EXPECT_EQ(bytesOf(done), whole);
  EXPECT_EQ(r.counters().fragments, 2u);
  EXPECT_EQ(r.counters().invalid, 0u);
}

TEST(ReassemblyTest, OverlapDropsDatagram) {
  Reassembler r({});
  const Bytes whole = ipv4Udp(600);
  EXPECT_EQ(add(r, ipv4Frag(whole, 0, 304, true)).status, FragStatus::kIncomplete);
  const FragResult bad = add(r, ipv4Frag(whole, 296, 608, false));
  EXPECT_EQ(bad.status, FragStatus::kInvalid);
  EXPECT_EQ(bad.reason, InvalidReason::kFragment);
  EXPECT_EQ(r.counters().invalid, 1u);
  EXPECT_EQ(r.bytesHeld(), 0u);
  // The old pieces are gone: the missing first part alone cannot complete anything.
  EXPECT_EQ(add(r, ipv4Frag(whole, 304, 608, false)).status, FragStatus::kIncomplete);

  // Overlap from the front (a fragment that starts earlier and runs into held data).
  Reassembler r2({});
  EXPECT_EQ(add(r2, ipv4Frag(whole, 304, 608, false)).status, FragStatus::kIncomplete);
  EXPECT_EQ(add(r2, ipv4Frag(whole, 0, 312, true)).status, FragStatus::kInvalid);
}

TEST(ReassemblyTest, LengthContradictionsAreInvalid) {
  Reassembler r({});
  const Bytes whole = ipv4Udp(600);
  EXPECT_EQ(add(r, ipv4Frag(whole, 304, 608, false)).status, FragStatus::kIncomplete);
  // A second "last" fragment ending elsewhere.
  EXPECT_EQ(add(r, ipv4Frag(whole, 8, 400, false)).status, FragStatus::kInvalid);
  // Data beyond the end set by the last fragment.
  EXPECT_EQ(add(r, ipv4Frag(whole, 304, 400, false)).status, FragStatus::kIncomplete);
  EXPECT_EQ(add(r, ipv4Frag(whole, 400, 608, true)).status, FragStatus::kInvalid);
  // A zero-length fragment.
  EXPECT_EQ(add(r, ipv4Frag(whole, 304, 400, false)).status, FragStatus::kIncomplete);
  EXPECT_EQ(add(r, ipv4Frag(whole, 304, 304, true)).status, FragStatus::kInvalid);
  EXPECT_EQ(r.counters().invalid, 3u);
  EXPECT_EQ(r.bytesHeld(), 0u);
}

TEST(ReassemblyTest, KeyIncludesIdAndProtocol) {
  Reassembler r({});
  const Bytes a = ipv4Udp(100, 1);
  const Bytes b = ipv4Udp(100, 2);
  const Bytes c = ipv4Udp(100, 1, 1, 136);  // same id, other protocol
  EXPECT_EQ(add(r, ipv4Frag(a, 0, 56, true)).status, FragStatus::kIncomplete);
  EXPECT_EQ(add(r, ipv4Frag(b, 56, 108, false)).status, FragStatus::kIncomplete);
  EXPECT_EQ(add(r, ipv4Frag(c, 56, 108, false)).status, FragStatus::kIncomplete);
  EXPECT_EQ(bytesOf(add(r, ipv4Frag(b, 0, 56, true))), b);
  EXPECT_EQ(bytesOf(add(r, ipv4Frag(a, 56, 108, false))), a);
}

TEST(ReassemblyTest, TimeoutDropsIncomplete) {
  ReassemblyLimits limits;
  limits.timeout = seconds(30);
  Reassembler r(limits);
  const Bytes whole = ipv4Udp(600);
  EXPECT_EQ(add(r, ipv4Frag(whole, 0, 304, true), seconds(1)).status, FragStatus::kIncomplete);
  r.expire(seconds(30));
  EXPECT_EQ(r.counters().timedOut, 0u);
  r.expire(seconds(31));
  EXPECT_EQ(r.counters().timedOut, 1u);
  EXPECT_EQ(r.bytesHeld(), 0u);
  // The rest arriving late starts a new, incomplete datagram.
  EXPECT_EQ(add(r, ipv4Frag(whole, 304, 608, false), seconds(32)).status, FragStatus::kIncomplete);
  // add() expires lazily too.
  EXPECT_EQ(add(r, ipv4Frag(whole, 0, 304, true), seconds(100)).status, FragStatus::kIncomplete);
  EXPECT_EQ(r.counters().timedOut, 2u);
}

TEST(ReassemblyTest, DatagramLimit) {
  ReassemblyLimits limits;
  limits.maxDatagrams = 2;
  Reassembler r(limits);
  const Bytes a = ipv4Udp(100, 1);
  const Bytes b = ipv4Udp(100, 2);
  const Bytes c = ipv4Udp(100, 3);
  EXPECT_EQ(add(r, ipv4Frag(a, 0, 56, true)).status, FragStatus::kIncomplete);
  EXPECT_EQ(add(r, ipv4Frag(b, 0, 56, true)).status, FragStatus::kIncomplete);
  const FragResult full = add(r, ipv4Frag(c, 0, 56, true));
  EXPECT_EQ(full.status, FragStatus::kInvalid);
  EXPECT_EQ(full.reason, InvalidReason::kFragment);
  EXPECT_EQ(r.counters().overLimit, 1u);
  // Datagrams already in progress still complete, and free their slot.
  EXPECT_EQ(bytesOf(add(r, ipv4Frag(a, 56, 108, false))), a);
  EXPECT_EQ(add(r, ipv4Frag(c, 0, 56, true)).status, FragStatus::kIncomplete);
}

TEST(ReassemblyTest, ByteLimit) {
  ReassemblyLimits limits;
  limits.maxBytes = 1000;
  Reassembler r(limits);
  const Bytes a = ipv4Udp(2000, 1);
  EXPECT_EQ(add(r, ipv4Frag(a, 0, 800, true)).status, FragStatus::kIncomplete);
  EXPECT_LE(r.bytesHeld(), 1000u);
  EXPECT_EQ(add(r, ipv4Frag(a, 800, 1600, true)).status, FragStatus::kInvalid);
  EXPECT_EQ(r.counters().overLimit, 1u);
  EXPECT_LE(r.bytesHeld(), 1000u);
}

TEST(ReassemblyTest, OversizedIsInvalid) {
  Reassembler r({});
  // 65528 bytes of payload at offsets 0..65520 plus 16 more: 20 + 65536 > 65535.
  const Bytes whole = ipv4Udp(65515 - 8);  // the largest legal datagram
  ASSERT_EQ(whole.size(), 65535u);
  const size_t chunk = 8000;
  for (size_t off = 0; off < 65512; off += chunk) {
    EXPECT_EQ(add(r, ipv4Frag(whole, off, std::min(off + chunk, size_t{65512}), true)).status,
              FragStatus::kIncomplete);
  }
  // The legal end would be 65515; this last fragment claims 65520.
  Bytes last = ipv4Frag(whole, 65512, 65515, false);
  last.insert(last.end(), 5, 0);
  put16(last, 2, last.size());
  fixIpv4Header(last);
  const FragResult res = add(r, last);
  EXPECT_EQ(res.status, FragStatus::kInvalid);
  EXPECT_EQ(r.counters().invalid, 1u);
  EXPECT_EQ(r.bytesHeld(), 0u);
}

TEST(ReassemblyTest, LargestDatagramReassembles) {
  Reassembler r({});
  const Bytes whole = ipv4Udp(65515 - 8);
  FragResult res;
  for (size_t off = 0; off < 65515; off += 1480) {
    const size_t end = std::min(off + 1480, size_t{65515});
    res = add(r, ipv4Frag(whole, off, end, end != 65515));
  }
  expectParsesAsWhole(res, 17);
  EXPECT_EQ(bytesOf(res), whole);
}

TEST(ReassemblyTest, Ipv6WithExtensionHeaderBeforeFragmentHeader) {
  Reassembler r({});
  const Bytes whole = ipv6Udp(2000, true);  // 40 + 8 (dest opts) + 2008
  ASSERT_EQ(parseIp(whole.data(), whole.size(), {}).kind, ParseKind::kPacket);
  const size_t unfrag = 48;  // IPv6 header + destination options
  const size_t prevNh = 40;  // the destination options' next-header byte
  const Bytes f1 = ipv6Frag(whole, unfrag, prevNh, 0, 1000, true);
  const Bytes f2 = ipv6Frag(whole, unfrag, prevNh, 1000, 2008, false);
  ASSERT_EQ(parseIp(f2.data(), f2.size(), {}).kind, ParseKind::kFragment);
  EXPECT_EQ(add(r, f2).status, FragStatus::kIncomplete);
  const FragResult done = add(r, f1);
  expectParsesAsWhole(done, 17);
  EXPECT_EQ(bytesOf(done), whole);  // fragment header gone, next header and length fixed
}

TEST(ReassemblyTest, Ipv6PlainAndAtomic) {
  Reassembler r({});
  const Bytes whole = ipv6Udp(500, false);
  const Bytes f1 = ipv6Frag(whole, 40, 6, 0, 256, true);
  const Bytes f2 = ipv6Frag(whole, 40, 6, 256, 508, false);
  EXPECT_EQ(add(r, f1).status, FragStatus::kIncomplete);
  EXPECT_EQ(bytesOf(add(r, f2)), whole);
  // An atomic fragment (offset 0, no more fragments) completes at once.
  const FragResult atomic = add(r, ipv6Frag(whole, 40, 6, 0, 508, false, 7));
  expectParsesAsWhole(atomic, 17);
  EXPECT_EQ(bytesOf(atomic), whole);
}

TEST(ReassemblyTest, Ipv6Rules) {
  const Bytes whole = ipv6Udp(500, false);
  {
    // A non-last fragment whose length is not a multiple of 8 kills the datagram.
    Reassembler r({});
    EXPECT_EQ(add(r, ipv6Frag(whole, 40, 6, 256, 508, false)).status, FragStatus::kIncomplete);
    EXPECT_EQ(add(r, ipv6Frag(whole, 40, 6, 0, 250, true)).status, FragStatus::kInvalid);
    EXPECT_EQ(r.bytesHeld(), 0u);
  }
  {
    // The first fragment must hold the whole UDP header (RFC 8200 4.5).
    Reassembler r({});
    EXPECT_EQ(add(r, ipv6Frag(whole, 40, 6, 0, 4, true)).status, FragStatus::kInvalid);
    EXPECT_EQ(r.counters().invalid, 1u);
  }
  {
    // An offset that would end past 65535.
    Reassembler r({});
    Bytes far = ipv6Frag(whole, 40, 6, 0, 16, true);
    far[42] = 0xff;
    far[43] = 0xf9;  // offset 65528, M
    EXPECT_EQ(add(r, far).status, FragStatus::kInvalid);
  }
  {
    // Keyed by (src, dst, id): other ids do not mix.
    Reassembler r({});
    EXPECT_EQ(add(r, ipv6Frag(whole, 40, 6, 0, 256, true, 1)).status, FragStatus::kIncomplete);
    EXPECT_EQ(add(r, ipv6Frag(whole, 40, 6, 256, 508, false, 2)).status, FragStatus::kIncomplete);
    EXPECT_EQ(add(r, ipv6Frag(whole, 40, 6, 256, 508, false, 1)).status, FragStatus::kComplete);
  }
}

TEST(ReassemblyTest, EcnMixIsInvalid) {
  Reassembler r({});
  const Bytes whole = ipv4Udp(600);
  Bytes f1 = ipv4Frag(whole, 0, 304, true);
  Bytes f2 = ipv4Frag(whole, 304, 608, false);
  f1[1] = 0x03;  // CE
  fixIpv4Header(f1);
  EXPECT_EQ(add(r, f1).status, FragStatus::kIncomplete);
  EXPECT_EQ(add(r, f2).status, FragStatus::kInvalid);  // Not-ECT with CE
}

TEST(ReassemblyTest, MalformedInputIsInvalid) {
  Reassembler r({});
  const Bytes whole = ipv4Udp(100);
  EXPECT_EQ(r.add(whole.data(), 10, 0).status, FragStatus::kInvalid);
  EXPECT_EQ(add(r, whole).status, FragStatus::kInvalid);  // not a fragment
  EXPECT_EQ(r.add(nullptr, 0, 0).status, FragStatus::kInvalid);
  Bytes bad = ipv4Frag(whole, 0, 56, true);
  bad[8] ^= 1;  // header checksum now wrong
  EXPECT_EQ(add(r, bad).status, FragStatus::kInvalid);
  EXPECT_EQ(r.counters().invalid, 4u);
  EXPECT_EQ(r.counters().fragments, 0u);
}

TEST(ReassemblyTest, RandomFragmentsNeverCrash) {
  ReassemblyLimits limits;
  limits.maxBytes = 20000;
  limits.maxDatagrams = 8;
  limits.timeout = seconds(5);
  Reassembler r(limits);
  std::mt19937 rng(7);
  const Bytes v4 = ipv4Udp(3000, 9);
  const Bytes v6 = ipv6Udp(3000, true);
  int complete = 0;
  for (int i = 0; i < 5000; ++i) {
    const size_t from = (rng() % 376) * 8;
    const size_t to = std::min<size_t>(from + 8 + (rng() % 64) * 8, 3008);
    const bool last = to == 3008;
    Bytes f = rng() % 2 ? ipv4Frag(v4, from, to, !last)
                        : ipv6Frag(v6, 48, 40, from, to, !last, rng() % 3);
    if (rng() % 3 == 0) f[rng() % f.size()] = static_cast<uint8_t>(rng());
    if (rng() % 5 == 0) f.resize(rng() % f.size());
    // An exact-size heap copy, so ASan sees any read past the end.
    std::unique_ptr<uint8_t[]> copy(new uint8_t[f.size() + 1]);
    std::copy(f.begin(), f.end(), copy.get());
    const FragResult res = r.add(copy.get(), f.size(), i * (kSecond / 100));
    EXPECT_LE(r.bytesHeld(), limits.maxBytes);
    if (res.status == FragStatus::kComplete) {
      ++complete;
      ASSERT_LE(res.datagram.size(), 65535u);
      const ParseResult p = parseIp(res.datagram.data(), res.datagram.size(), {});
      EXPECT_NE(p.kind, ParseKind::kFragment);
    }
  }
  const ReassemblyCounters& c = r.counters();
  EXPECT_GT(c.fragments, 100u);
  EXPECT_GT(c.invalid, 100u);
  EXPECT_GE(c.reassembled, static_cast<uint64_t>(complete));
}

}  // namespace
}  // namespace ctsync::table
