#pragma once
// Full recomputation of every checksum in a datagram, written for the tests apart from the
// production code's incremental updates: a rewritten packet is checked against this.
#include <cstdint>
#include <string>
#include <vector>

#include "tests/support/packet_builder.hpp"

namespace ctsync::testing {

inline uint16_t get16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

// The one's complement sum of a correct message with its checksum folds to 0xffff; a result
// of 0 from fold() here means "correct".
inline bool sumsToZero(uint32_t acc) {
  return fold(acc) == 0;
}

// Why the checksums of the datagram at `p` are wrong ("" when all are right). Checks the IPv4
// header, TCP, UDP (zero = none, IPv4 only), UDP-Lite (full coverage), ICMP and ICMPv6; for
// an ICMP error also the embedded IPv4 header and, when the embedded datagram is quoted whole,
// its L4 checksum. No IPv6 extension headers.
inline std::string checksumProblems(const uint8_t* p, size_t len, bool inner = false) {
  const bool v4 = (p[0] >> 4) == 4;
  size_t hl, total;
  uint8_t proto;
  uint32_t pseudo = 0;
  if (v4) {
    hl = size_t{p[0] & 0xfu} * 4;
    total = get16(p + 2);
    proto = p[9];
    if (!sumsToZero(sum16(p, hl))) return "IPv4 header checksum";
    pseudo = sum16(p + 12, 8);
  } else {
    hl = 40;
    total = 40 + get16(p + 4);
    proto = p[6];
    pseudo = sum16(p + 8, 32);
  }
  if (total > len) {
    // A truncated embedded datagram: only its IP header can be checked.
    return inner ? "" : "datagram shorter than its header says";
  }
  const uint8_t* l4 = p + hl;
  const size_t l4len = total - hl;
  pseudo += static_cast<uint32_t>(l4len) + proto;
  switch (proto) {
    case 6:
      if (!sumsToZero(sum16(l4, l4len, pseudo))) return "TCP checksum";
      break;
    case 17:
      if ((v4 && get16(l4 + 6) == 0)) break;
      if (get16(l4 + 6) == 0) return "zero UDP checksum over IPv6";
      if (!sumsToZero(sum16(l4, l4len, pseudo))) return "UDP checksum";
      break;
    case 136:
      // Summed with protocol 17 in the pseudo header, as Linux conntrack checks UDP-Lite.
      if (get16(l4 + 6) == 0) return "zero UDP-Lite checksum";
      if (!sumsToZero(sum16(l4, l4len, pseudo - 136 + 17))) return "UDP-Lite checksum";
      break;
    case 1:
    case 58: {
      if (!sumsToZero(sum16(l4, l4len, proto == 58 ? pseudo : 0))) return "ICMP checksum";
      const uint8_t type = l4[0];
      const bool error = proto == 1
                             ? (type == 3 || type == 4 || type == 5 || type == 11 || type == 12)
                             : type < 128;
      if (error && !inner && l4len > 8) {
        const std::string in = checksumProblems(l4 + 8, l4len - 8, true);
        if (!in.empty()) return "embedded " + in;
      }
      break;
    }
    default:
      break;
  }
  return "";
}

inline std::string checksumProblems(const std::vector<uint8_t>& p) {
  return checksumProblems(p.data(), p.size());
}

}  // namespace ctsync::testing
