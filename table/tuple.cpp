#include "table/tuple.hpp"

#include <arpa/inet.h>

namespace ctsync::table {
namespace {

// Query/reply pairs the kernel inverts (icmp_invert_tuple, icmpv6_invert_tuple).
int invertIcmpType(L3 l3, uint8_t type) {
  if (l3 == L3::kIpv4) {
    switch (type) {
      case 8:
        return 0;  // echo -> echo reply
      case 0:
        return 8;
      case 13:
        return 14;  // timestamp
      case 14:
        return 13;
      case 15:
        return 16;  // information
      case 16:
        return 15;
      case 17:
        return 18;  // address mask
      case 18:
        return 17;
      default:
        return -1;
    }
  }
  switch (type) {
    case 128:
      return 129;  // echo request -> echo reply
    case 129:
      return 128;
    case 139:
      return 140;  // node information query -> reply
    case 140:
      return 139;
    default:
      return -1;
  }
}

}  // namespace

std::optional<Tuple> invertTuple(const Tuple& in) {
  Tuple out = in;
  out.src = in.dst;
  out.dst = in.src;
  if (in.l4 == proto::kIcmp || in.l4 == proto::kIcmpv6) {
    int inv = invertIcmpType(in.l3, in.icmpType());
    if (inv < 0) return std::nullopt;
    out.sport = in.sport;  // the query id stays
    out.dport = static_cast<uint16_t>((inv << 8) | in.icmpCode());
    return out;
  }
  out.sport = in.dport;
  out.dport = in.sport;
  return out;
}

bool isIcmpQuery(L3 l3, uint8_t type) {
  if (l3 == L3::kIpv4) return type == 8 || type == 13 || type == 15 || type == 17;
  return type == 128 || type == 139;
}

std::string formatAddr(L3 l3, const Addr& a) {
  char buf[INET6_ADDRSTRLEN];
  const int af = l3 == L3::kIpv4 ? AF_INET : AF_INET6;
  if (inet_ntop(af, a.bytes.data(), buf, sizeof buf) == nullptr) return "?";
  return buf;
}

}  // namespace ctsync::table
