#pragma once
// Builds well-formed IPv4/IPv6 datagrams with correct checksums for tests and benchmarks.
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace ctsync::testing {

namespace tcpf {
inline constexpr uint8_t kFin = 0x01, kSyn = 0x02, kRst = 0x04, kPsh = 0x08, kAck = 0x10;
}

struct TcpSpec {
  TcpSpec() = default;
  TcpSpec(uint8_t f, uint32_t s, uint32_t a, uint16_t w = 65535, std::vector<uint8_t> o = {},
          uint16_t p = 0)
      : flags(f), seq(s), ack(a), window(w), options(std::move(o)), payload(p) {}

  uint8_t flags = tcpf::kAck;
  uint32_t seq = 0;
  uint32_t ack = 0;
  uint16_t window = 65535;
  std::vector<uint8_t> options;  // padded to a multiple of 4 by the builder
  uint16_t payload = 0;          // bytes of zero payload
};

inline uint32_t sum16(const uint8_t* p, size_t n, uint32_t acc = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) acc += static_cast<uint32_t>((p[i] << 8) | p[i + 1]);
  if (n & 1) acc += static_cast<uint32_t>(p[n - 1] << 8);
  return acc;
}
inline uint16_t fold(uint32_t acc) {
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(~acc & 0xffff);
}
inline void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void put32(uint8_t* p, uint32_t v) {
  put16(p, static_cast<uint16_t>(v >> 16));
  put16(p + 2, static_cast<uint16_t>(v));
}

struct Addr6 {
  uint8_t b[16];
};
inline Addr6 v6(uint16_t last, uint16_t net = 1) {
  Addr6 a{};
  a.b[0] = 0xfd;
  a.b[1] = 0x00;
  put16(a.b + 4, net);
  put16(a.b + 14, last);
  return a;
}
inline uint32_t v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return (uint32_t{a} << 24) | (uint32_t{b} << 16) | (uint32_t{c} << 8) | d;
}

inline std::vector<uint8_t> tcpSegment(const TcpSpec& s, uint16_t sport, uint16_t dport) {
  std::vector<uint8_t> opt = s.options;
  while (opt.size() % 4) opt.push_back(0);
  const size_t hl = 20 + opt.size();
  std::vector<uint8_t> l4(hl + s.payload, 0);
  put16(&l4[0], sport);
  put16(&l4[2], dport);
  put32(&l4[4], s.seq);
  put32(&l4[8], s.ack);
  l4[12] = static_cast<uint8_t>((hl / 4) << 4);
  l4[13] = s.flags;
  put16(&l4[14], s.window);
  if (!opt.empty()) std::memcpy(&l4[20], opt.data(), opt.size());
  return l4;
}

// Finishes an IPv4 datagram around `l4` (checksum at `csumOff` within l4 unless < 0).
inline std::vector<uint8_t> ipv4(uint32_t src, uint32_t dst, uint8_t proto, std::vector<uint8_t> l4,
                                 int csumOff, bool pseudo = true) {
  std::vector<uint8_t> p(20 + l4.size(), 0);
  p[0] = 0x45;
  put16(&p[2], static_cast<uint16_t>(p.size()));
  p[8] = 64;
  p[9] = proto;
  put32(&p[12], src);
  put32(&p[16], dst);
  put16(&p[10], fold(sum16(p.data(), 20)));
  if (csumOff >= 0) {
    uint32_t acc = 0;
    if (pseudo) {
      acc = sum16(&p[12], 8);
      acc += proto;
      acc += static_cast<uint32_t>(l4.size());
    }
    l4[static_cast<size_t>(csumOff)] = l4[static_cast<size_t>(csumOff) + 1] = 0;
    uint16_t c = fold(sum16(l4.data(), l4.size(), acc));
    if (proto == 17 && c == 0) c = 0xffff;
    put16(&l4[static_cast<size_t>(csumOff)], c);
  }
  std::memcpy(&p[20], l4.data(), l4.size());
  return p;
}

inline std::vector<uint8_t> ipv6(const Addr6& src, const Addr6& dst, uint8_t proto,
                                 std::vector<uint8_t> l4, int csumOff) {
  std::vector<uint8_t> p(40 + l4.size(), 0);
  p[0] = 0x60;
  put16(&p[4], static_cast<uint16_t>(l4.size()));
  p[6] = proto;
  p[7] = 64;
  std::memcpy(&p[8], src.b, 16);
  std::memcpy(&p[24], dst.b, 16);
  if (csumOff >= 0) {
    uint32_t acc = sum16(&p[8], 32);
    acc += static_cast<uint32_t>(l4.size());
    acc += proto;
    l4[static_cast<size_t>(csumOff)] = l4[static_cast<size_t>(csumOff) + 1] = 0;
    uint16_t c = fold(sum16(l4.data(), l4.size(), acc));
    if (c == 0) c = 0xffff;
    put16(&l4[static_cast<size_t>(csumOff)], c);
  }
  std::memcpy(&p[40], l4.data(), l4.size());
  return p;
}

inline std::vector<uint8_t> ipv4Tcp(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                                    const TcpSpec& s) {
  return ipv4(src, dst, 6, tcpSegment(s, sport, dport), 16);
}
inline std::vector<uint8_t> ipv6Tcp(const Addr6& src, const Addr6& dst, uint16_t sport,
                                    uint16_t dport, const TcpSpec& s) {
  return ipv6(src, dst, 6, tcpSegment(s, sport, dport), 16);
}

inline std::vector<uint8_t> udpDatagram(uint16_t sport, uint16_t dport, uint16_t payload) {
  std::vector<uint8_t> l4(8 + payload, 0);
  put16(&l4[0], sport);
  put16(&l4[2], dport);
  put16(&l4[4], static_cast<uint16_t>(l4.size()));
  return l4;
}
inline std::vector<uint8_t> ipv4Udp(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                                    uint16_t payload = 8) {
  return ipv4(src, dst, 17, udpDatagram(sport, dport, payload), 6);
}
inline std::vector<uint8_t> ipv6Udp(const Addr6& src, const Addr6& dst, uint16_t sport,
                                    uint16_t dport, uint16_t payload = 8) {
  return ipv6(src, dst, 17, udpDatagram(sport, dport, payload), 6);
}

// ICMP message: type, code, then `rest` (id/seq for queries, unused+inner packet for errors).
inline std::vector<uint8_t> icmpMessage(uint8_t type, uint8_t code, uint16_t id, uint16_t seq,
                                        const std::vector<uint8_t>& inner = {}) {
  std::vector<uint8_t> l4(8, 0);
  l4[0] = type;
  l4[1] = code;
  put16(&l4[4], id);
  put16(&l4[6], seq);
  l4.insert(l4.end(), inner.begin(), inner.end());
  return l4;
}
inline std::vector<uint8_t> ipv4Icmp(uint32_t src, uint32_t dst, uint8_t type, uint8_t code,
                                     uint16_t id, uint16_t seq = 1,
                                     const std::vector<uint8_t>& inner = {}) {
  return ipv4(src, dst, 1, icmpMessage(type, code, id, seq, inner), 2, /*pseudo=*/false);
}
inline std::vector<uint8_t> ipv6Icmp(const Addr6& src, const Addr6& dst, uint8_t type, uint8_t code,
                                     uint16_t id, uint16_t seq = 1,
                                     const std::vector<uint8_t>& inner = {}) {
  return ipv6(src, dst, 58, icmpMessage(type, code, id, seq, inner), 2);
}

// A datagram of an IP protocol the tracker handles generically.
inline std::vector<uint8_t> ipv4Proto(uint32_t src, uint32_t dst, uint8_t proto,
                                      uint16_t payload = 16) {
  return ipv4(src, dst, proto, std::vector<uint8_t>(payload, 0xab), -1);
}

}  // namespace ctsync::testing
