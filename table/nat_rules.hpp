#pragma once
// NAT rules as plain data: what `[[nat.rule]]` in the config says, with nft's and iptables'
// meaning. The NAT engine (table/nat.hpp) applies them when an entry is created: DNAT and
// redirect as at prerouting, SNAT and masquerade as at postrouting; first match wins in each.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "table/tuple.hpp"

namespace ctsync::table {

// One address of a given family ("10.0.0.1", "fd00::1").
struct IpAddress {
  L3 l3 = L3::kIpv4;
  Addr addr;
  friend bool operator==(const IpAddress&, const IpAddress&) = default;
};

// An address prefix ("10.0.0.0/8"); length 0 matches every address of the family.
struct Prefix {
  L3 l3 = L3::kIpv4;
  Addr addr;  // bits beyond `length` are ignored
  uint8_t length = 0;

  bool contains(L3 family, const Addr& a) const;
  friend bool operator==(const Prefix&, const Prefix&) = default;
};

// An inclusive range of ports (or ICMP ids for a translation target); min <= max.
struct PortRange {
  uint16_t min = 0;
  uint16_t max = 65535;
  bool contains(uint16_t p) const { return p >= min && p <= max; }
  friend bool operator==(const PortRange&, const PortRange&) = default;
};

// An inclusive range of addresses of one family, compared as big-endian numbers; min <= max.
struct AddrRange {
  L3 l3 = L3::kIpv4;
  Addr min;
  Addr max;
  friend bool operator==(const AddrRange&, const AddrRange&) = default;
};

enum class NatType : uint8_t {
  kSnat,        // source to `toAddress` (and `toPort`), decided as at postrouting
  kDnat,        // destination to `toAddress` (and `toPort`), decided as at prerouting
  kMasquerade,  // source to the output interface's address (InterfaceAddresses), postrouting
  kRedirect,    // destination to the input interface's address (and `toPort`), prerouting
};
const char* natTypeName(NatType t);  // "snat", "dnat", "masquerade", "redirect"

// nft's nat flags (iptables' --persistent, --random, --random-fully).
namespace natflag {
// The same source address maps to the same address of a range whatever the destination
// (NF_NAT_RANGE_PERSISTENT: the address choice hashes the source only).
inline constexpr uint8_t kPersistent = 1u << 0;
// The port is always chosen at random from the range, never kept (NF_NAT_RANGE_PROTO_RANDOM).
inline constexpr uint8_t kRandom = 1u << 1;
// As kRandom (NF_NAT_RANGE_PROTO_RANDOM_FULLY; Linux 6.x draws both the same way).
inline constexpr uint8_t kFullyRandom = 1u << 2;
}  // namespace natflag

// Protocols whose tuple has ports a rule can match and a translation can map.
inline bool hasPorts(uint8_t l4) {
  return l4 == proto::kTcp || l4 == proto::kUdp || l4 == proto::kUdplite || l4 == 132 /* sctp */ ||
         l4 == 33 /* dccp */;
}

struct NatRule {
  NatType type = NatType::kSnat;
  // Match. An empty optional or string matches everything.
  std::optional<L3> family;
  std::optional<uint8_t> protocol;  // IP protocol number
  std::optional<Prefix> source;
  std::optional<Prefix> destination;
  std::optional<PortRange> sport;  // only with a protocol that has ports
  std::optional<PortRange> dport;
  // Interface names as the caller gives them with each packet; a trailing '*' matches any
  // name that starts with what precedes it (nft's "eth*"). out_interface is unknown at
  // prerouting, so dnat and redirect rules never carry one (the config refuses it).
  std::string inInterface;
  std::string outInterface;
  std::optional<uint16_t> zone;
  // Action. snat and dnat need `toAddress`; masquerade and redirect take the interface's.
  std::optional<AddrRange> toAddress;
  std::optional<PortRange> toPort;  // only with a protocol that has ports
  uint8_t flags = 0;                // natflag::*

  friend bool operator==(const NatRule&, const NatRule&) = default;
};

struct NatSettings {
  std::vector<NatRule> rules;  // in order; first match wins at each hook
};

// True when `name` matches the rule's interface pattern (empty pattern: any).
bool interfaceMatches(std::string_view pattern, std::string_view name);

}  // namespace ctsync::table
