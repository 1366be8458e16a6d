#pragma once
// Packet rewriting for NAT, as the kernel's nf_nat_proto.c does it: addresses and ports or
// ICMP ids in both directions, with incremental checksum updates (RFC 1624) for the IPv4
// header, TCP, UDP (a zero IPv4 UDP checksum stays zero), UDP-Lite, ICMP, and ICMPv6 with its
// pseudo-header; and ICMP errors about NATed flows, inner header and all. No allocation: the
// packet is changed in place.
#include <cstdint>

#include "table/conn_table.hpp"
#include "table/packet.hpp"

namespace ctsync::table {

// Rewrites the tracked datagram at `ip` (parsed as `p`, belonging to entry `index` in
// direction `dir`) to what NAT makes of it: the destination manip of prerouting, then the
// source manip of postrouting, each only where the entry's SRC_NAT/DST_NAT bits call for it.
// Returns true when bytes changed.
bool natRewrite(const ConnTable& table, uint32_t index, Dir dir, uint8_t* ip, const Packet& p);

// The same for an ICMP or ICMPv6 error RELATED to entry `index` (`dir` is the direction the
// error travels in): the embedded packet is translated as the flow's packets are, with its IP
// and L4 checksums, the ICMP checksum is recomputed, and the outer addresses are made to look
// like the flow's (nf_nat_icmp_reply_translation). Returns kNone, or why the kernel would drop
// the error (kNatIcmpRedirect for a redirect about a NATed flow, kIcmpErrorBad when the
// embedded header is too short to rewrite), and whether bytes changed.
struct IcmpRewrite {
  InvalidReason drop = InvalidReason::kNone;
  bool changed = false;
};
IcmpRewrite natRewriteIcmpError(const ConnTable& table, uint32_t index, Dir dir, uint8_t* ip,
                                const Packet& p);

}  // namespace ctsync::table
