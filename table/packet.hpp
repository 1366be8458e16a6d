#pragma once
// Parsing of one IP datagram into what the tracker needs. No I/O, no allocation: the result
// points into the caller's buffer, which must outlive it.
#include <cstddef>
#include <cstdint>

#include "table/tuple.hpp"
#include "table/types.hpp"

namespace ctsync::table {

struct ParseOptions {
  // As the kernel's nf_conntrack_checksum=1: TCP, UDP, UDP-Lite, ICMP and ICMPv6 checksums are
  // verified and a wrong one makes the packet INVALID. The IPv4 header checksum is always checked
  // (the kernel's IP input drops such packets before conntrack sees them).
  bool verifyChecksums = true;
};

struct Packet {
  Tuple tuple;                  // zone is not part of it: the table adds it
  const uint8_t* l3 = nullptr;  // the IP header
  uint32_t ipLen = 0;           // bytes of the datagram per its header (what byte counters add)
  const uint8_t* l4 = nullptr;  // the L4 header; for the generic tracker, whatever follows
  uint32_t l4Len = 0;           // L4 header + payload as the IP header says (padding excluded)
  // ICMP/ICMPv6 errors (unreachable, time exceeded, parameter problem, packet too big, and for
  // IPv4 source quench/redirect): the tuple of the embedded packet as it was sent, not
  // inverted. l4 still points at the outer ICMP header.
  bool icmpError = false;
  Tuple inner;
  uint16_t innerL4 = 0;  // ICMP errors: where the embedded L4 header starts, from its IP header
};

enum class ParseKind : uint8_t {
  kPacket,    // `packet` is valid
  kFragment,  // an IPv4 or IPv6 fragment: hand the datagram to the Reassembler
  kInvalid,   // `reason` says why; nothing else is meaningful
};

struct ParseResult {
  ParseKind kind = ParseKind::kInvalid;
  InvalidReason reason = InvalidReason::kNone;
  Packet packet;
};

// Parses an IPv4 (with options) or IPv6 (with extension headers) datagram of `len` captured
// bytes. Never reads outside [data, data+len); a datagram whose header claims more than `len`
// is INVALID (kTruncated). Trailing bytes beyond the IP total length (Ethernet padding) are
// ignored.
ParseResult parseIp(const uint8_t* data, size_t len, const ParseOptions& options);

// The same, writing into `out` (which may hold a previous packet's result) instead of building
// a new result: the tracker's per-packet path uses this to avoid a large temporary.
void parseIpInto(const uint8_t* data, size_t len, const ParseOptions& options, ParseResult& out);

}  // namespace ctsync::table
