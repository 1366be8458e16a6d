#include "table/nat_rules.hpp"

namespace ctsync::table {

bool Prefix::contains(L3 family, const Addr& a) const {
  if (family != l3) return false;
  const int bytes = length / 8;
  for (int i = 0; i < bytes; ++i) {
    if (a.bytes[i] != addr.bytes[i]) return false;
  }
  const int rest = length % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a.bytes[bytes] & mask) == (addr.bytes[bytes] & mask);
}

const char* natTypeName(NatType t) {
  switch (t) {
    case NatType::kSnat:
      return "snat";
    case NatType::kDnat:
      return "dnat";
    case NatType::kMasquerade:
      return "masquerade";
    case NatType::kRedirect:
      return "redirect";
  }
  return "?";
}

bool interfaceMatches(std::string_view pattern, std::string_view name) {
  if (pattern.empty()) return true;
  if (pattern.back() == '*') {
    pattern.remove_suffix(1);
    return name.substr(0, pattern.size()) == pattern;
  }
  return pattern == name;
}

}  // namespace ctsync::table
