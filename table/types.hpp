#pragma once
// Basic vocabulary shared by every part of the tracker: time, direction, status bits.
#include <cstdint>

namespace ctsync::table {

// Nanoseconds on the caller's clock (capture time for replay, CLOCK_MONOTONIC in the daemon).
// The tracker never reads a clock itself: every call that can expire something takes `now`.
using Nanos = int64_t;
inline constexpr Nanos kSecond = 1'000'000'000;
inline constexpr Nanos kMillisecond = 1'000'000;

inline constexpr Nanos seconds(int64_t s) {
  return s * kSecond;
}

// A time left as the whole seconds conntrack prints: rounded up, never negative.
inline constexpr uint32_t secondsLeft(Nanos left) {
  return static_cast<uint32_t>(left <= 0 ? 0 : (left + kSecond - 1) / kSecond);
}

// Packet direction relative to the entry: the direction that created it is kOriginal.
enum class Dir : uint8_t { kOriginal = 0, kReply = 1 };
inline constexpr int index(Dir d) {
  return static_cast<int>(d);
}
inline constexpr Dir opposite(Dir d) {
  return d == Dir::kOriginal ? Dir::kReply : Dir::kOriginal;
}

// Entry status bits, numbered as the kernel's enum ip_conntrack_status so that values can be
// exchanged with ctnetlink and replicas without translation.
namespace status {
inline constexpr uint32_t kExpected = 1u << 0;
inline constexpr uint32_t kSeenReply = 1u << 1;
inline constexpr uint32_t kAssured = 1u << 2;
inline constexpr uint32_t kConfirmed = 1u << 3;
inline constexpr uint32_t kSrcNat = 1u << 4;
inline constexpr uint32_t kDstNat = 1u << 5;
inline constexpr uint32_t kSeqAdjust = 1u << 6;
inline constexpr uint32_t kSrcNatDone = 1u << 7;
inline constexpr uint32_t kDstNatDone = 1u << 8;
inline constexpr uint32_t kDying = 1u << 9;
inline constexpr uint32_t kFixedTimeout = 1u << 10;
inline constexpr uint32_t kTemplate = 1u << 11;
inline constexpr uint32_t kUntracked = 1u << 12;
inline constexpr uint32_t kHelper = 1u << 13;
inline constexpr uint32_t kOffload = 1u << 14;
// Not a kernel bit: the entry carries 128-bit labels in the table's side store.
inline constexpr uint32_t kHasLabels = 1u << 30;
}  // namespace status

// Why a packet was judged INVALID. Invalid packets create and change nothing; they are counted
// per reason so an operator can tell a checksum problem from an attack.
enum class InvalidReason : uint8_t {
  kNone = 0,
  kTruncated,         // shorter than its headers claim (L3 or L4)
  kBadIpVersion,      // not 4 or 6
  kBadIpHeader,       // IHL < 5, total length < header, options malformed
  kBadIpChecksum,     // IPv4 header checksum wrong
  kBadExtHeader,      // IPv6 extension header chain malformed
  kFragment,          // a fragment that could not be reassembled (overlap, too big, dropped)
  kBadL4Header,       // L4 header malformed (TCP data offset, UDP length, ...)
  kBadL4Checksum,     // L4 checksum wrong
  kBadTcpFlags,       // TCP flag combination the kernel rejects
  kTcpState,          // no valid transition from the current TCP state
  kTcpWindow,         // outside the TCP window (and not a case the kernel ignores)
  kTcpRst,            // RST not acceptable (sequence)
  kTcpNoNew,          // first packet cannot create an entry (e.g. SYN+ACK, loose pickup off)
  kIcmpNoNew,         // ICMP message type that cannot create an entry
  kIcmpErrorNoMatch,  // ICMP error whose inner packet matches no entry
  kIcmpErrorBad,      // ICMP error whose inner header is unusable
  kTableFull,         // no room and nothing could be evicted
  kNatExhausted,      // NAT found no unique mapping in the rule's range (dropped)
  kNatNoAddress,      // masquerade or redirect: the interface has no address (dropped)
  kNatIcmpRedirect,   // an ICMP redirect about a NATed flow (dropped, as the kernel does)
  kCount
};
const char* invalidReasonName(InvalidReason r);

}  // namespace ctsync::table
