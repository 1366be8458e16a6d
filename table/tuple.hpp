#pragma once
// A connection tuple: what the kernel calls struct nf_conntrack_tuple, in host byte order.
#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

namespace ctsync::table {

// Address family numbers as conntrack prints them ("ipv4     2", "ipv6     10").
enum class L3 : uint8_t { kIpv4 = 2, kIpv6 = 10 };

// IP protocol numbers the tracker knows by name.
namespace proto {
inline constexpr uint8_t kIcmp = 1;
inline constexpr uint8_t kTcp = 6;
inline constexpr uint8_t kUdp = 17;
inline constexpr uint8_t kIcmpv6 = 58;
inline constexpr uint8_t kUdplite = 136;
// IPv6 extension headers, as next-header values.
inline constexpr uint8_t kHopByHop = 0;
inline constexpr uint8_t kRouting = 43;
inline constexpr uint8_t kFragment = 44;
inline constexpr uint8_t kAuth = 51;
inline constexpr uint8_t kNoNext = 59;
inline constexpr uint8_t kDestOpts = 60;
}  // namespace proto

// An IPv4 address sits in bytes[0..3] with the rest zero; an IPv6 address uses all 16.
struct Addr {
  std::array<uint8_t, 16> bytes{};

  static Addr v4(uint32_t hostOrder) {
    Addr a;
    a.bytes[0] = static_cast<uint8_t>(hostOrder >> 24);
    a.bytes[1] = static_cast<uint8_t>(hostOrder >> 16);
    a.bytes[2] = static_cast<uint8_t>(hostOrder >> 8);
    a.bytes[3] = static_cast<uint8_t>(hostOrder);
    return a;
  }
  static Addr fromBytes(const uint8_t* p, int len) {
    Addr a;
    std::memcpy(a.bytes.data(), p, static_cast<size_t>(len));
    return a;
  }
  uint32_t v4HostOrder() const {
    return (uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) | (uint32_t{bytes[2]} << 8) |
           uint32_t{bytes[3]};
  }
  friend bool operator==(const Addr&, const Addr&) = default;
};

// Protocol-specific part of a tuple. TCP, UDP, UDP-Lite: ports. ICMP/ICMPv6: `src` is the
// query id, `dst` is (type << 8 | code). Generic protocols: both zero.
struct Tuple {
  Addr src;
  Addr dst;
  uint16_t sport = 0;
  uint16_t dport = 0;
  L3 l3 = L3::kIpv4;
  uint8_t l4 = 0;

  uint8_t icmpType() const { return static_cast<uint8_t>(dport >> 8); }
  uint8_t icmpCode() const { return static_cast<uint8_t>(dport & 0xff); }
  friend bool operator==(const Tuple&, const Tuple&) = default;
};

// The tuple of the other direction, as the kernel's nf_ct_invert_tuple computes it. For ICMP
// queries the type becomes the reply type (echo request -> echo reply, ...). Empty for ICMP
// types that have no inverse (errors, unknown types).
std::optional<Tuple> invertTuple(const Tuple& in);

// True for ICMP/ICMPv6 query types that may create an entry.
bool isIcmpQuery(L3 l3, uint8_t type);

std::string formatAddr(L3 l3, const Addr& a);

}  // namespace ctsync::table
