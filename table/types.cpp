#include "table/types.hpp"

namespace ctsync::table {

const char* invalidReasonName(InvalidReason r) {
  switch (r) {
    case InvalidReason::kNone:
      return "none";
    case InvalidReason::kTruncated:
      return "truncated";
    case InvalidReason::kBadIpVersion:
      return "bad_ip_version";
    case InvalidReason::kBadIpHeader:
      return "bad_ip_header";
    case InvalidReason::kBadIpChecksum:
      return "bad_ip_checksum";
    case InvalidReason::kBadExtHeader:
      return "bad_ipv6_ext_header";
    case InvalidReason::kFragment:
      return "bad_fragment";
    case InvalidReason::kBadL4Header:
      return "bad_l4_header";
    case InvalidReason::kBadL4Checksum:
      return "bad_l4_checksum";
    case InvalidReason::kBadTcpFlags:
      return "bad_tcp_flags";
    case InvalidReason::kTcpState:
      return "tcp_state";
    case InvalidReason::kTcpWindow:
      return "tcp_window";
    case InvalidReason::kTcpRst:
      return "tcp_rst";
    case InvalidReason::kTcpNoNew:
      return "tcp_cannot_create";
    case InvalidReason::kIcmpNoNew:
      return "icmp_cannot_create";
    case InvalidReason::kIcmpErrorNoMatch:
      return "icmp_error_no_match";
    case InvalidReason::kIcmpErrorBad:
      return "icmp_error_malformed";
    case InvalidReason::kTableFull:
      return "table_full";
    case InvalidReason::kNatExhausted:
      return "nat_exhausted";
    case InvalidReason::kNatNoAddress:
      return "nat_no_address";
    case InvalidReason::kNatIcmpRedirect:
      return "nat_icmp_redirect";
    case InvalidReason::kCount:
      break;
  }
  return "unknown";
}

}  // namespace ctsync::table
