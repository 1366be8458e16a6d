#pragma once
// TCP connection tracking with the Linux kernel's semantics (nf_conntrack_proto_tcp.c, 6.x):
// state machine, window tracking after van Rooij, loose pickup, be_liberal, retransmission and
// unacknowledged-data timeouts, RST rules, reopen from TIME_WAIT/CLOSE, ignore-and-resync.
#include <cstdint>

#include "table/l4.hpp"
#include "table/settings.hpp"
#include "table/types.hpp"

namespace ctsync::table {

enum class TcpState : uint8_t {
  kNone = 0,
  kSynSent,
  kSynRecv,
  kEstablished,
  kFinWait,
  kCloseWait,
  kLastAck,
  kTimeWait,
  kClose,
  kSynSent2,
  kCount
};
const char* tcpStateName(TcpState s);  // "SYN_SENT", ... as conntrack prints them

// Per-direction flags, numbered as the kernel's IP_CT_TCP_FLAG_* (ctnetlink carries them).
namespace tcpflag {
inline constexpr uint8_t kWindowScale = 0x01;
inline constexpr uint8_t kSackPerm = 0x02;
inline constexpr uint8_t kCloseInit = 0x04;
inline constexpr uint8_t kBeLiberal = 0x08;
inline constexpr uint8_t kDataUnacknowledged = 0x10;
inline constexpr uint8_t kMaxackSet = 0x20;
inline constexpr uint8_t kChallengeAck = 0x40;
inline constexpr uint8_t kSimultaneousOpen = 0x80;
}  // namespace tcpflag

struct TcpDirState {
  uint32_t end = 0;     // td_end: highest seq + len seen
  uint32_t maxend = 0;  // td_maxend: highest ack + window seen from the peer
  uint32_t maxwin = 0;  // td_maxwin: largest (scaled) window seen
  uint8_t scale = 0;    // td_scale
  uint8_t flags = 0;    // tcpflag::*
  // td_maxack (highest ack this side sent, valid with kMaxackSet), low half; the high half is
  // TcpConn::maxackHigh. Split so that the word fits this struct's padding and the entry does
  // not grow. Read it through tcp.cpp only.
  uint16_t maxackLow = 0;
};

// Lives inside a table entry; plain data, copied by value.
// The last_* fields are the kernel's per-entry memory of the last packet (retransmission
// detection, ignore-and-resync, RST rules); they are packed to keep the entry at 52 bytes.
struct TcpConn {
  TcpDirState seen[2];
  uint32_t lastAck = 0;
  uint32_t lastEnd = 0;
  // last_end - last_seq, mod 2^16: the kernel's last_seq only ever takes part in an equality
  // test together with last_end, so its distance from last_end is enough.
  uint16_t lastLen = 0;
  uint16_t lastWin = 0;
  uint16_t maxackHigh[2] = {0, 0};  // high halves of td_maxack, see TcpDirState::maxackLow
  TcpState state = TcpState::kNone;
  uint8_t lastFlags = 0;  // tcpflag::kWindowScale | kSackPerm | kChallengeAck | kSimultaneousOpen
  uint8_t retrans = 0;
  uint8_t lastDir : 1 = 0;
  uint8_t lastIndex : 3 = 0;  // flag class of the last packet (kernel's enum tcp_bit_set)
  uint8_t lastWscale : 4 = 0;
};

// Checks done before any lookup, as the kernel's tcp_error(): header length and flag
// combination (checksums are verified by the packet parser). kNone when the segment is usable.
// `l4` points at the TCP header, `l4Len` covers header and payload.
InvalidReason tcpError(const uint8_t* l4, uint32_t l4Len);

// Called for the first packet of a flow that has no entry. Returns kInvalid (kTcpNoNew) if
// this segment cannot create one (SYN+ACK, no SYN with loose off, ...); otherwise initialises
// `conn` as the kernel's tcp_new() does and returns kAccept (no refresh: tcpPacket follows).
L4Outcome tcpNew(const TcpSettings& settings, const uint8_t* l4, uint32_t l4Len, TcpConn& conn);

// Tracks one segment of an existing entry (and the creating segment right after tcpNew).
// `status` is the entry's status word before this packet: SEEN_REPLY is not yet set for the
// first reply (the table sets it afterwards, as nf_conntrack_in does). The tracker may set
// status::kAssured itself, reporting ev::kAssured. `remaining` is the time the entry has left
// before this packet: an assured flow whose FIN/RST exchange falls out of window gets its
// timeout lowered (kInvalid with `refresh` set), as the kernel's nf_tcp_handle_invalid does.
L4Outcome tcpPacket(const TcpSettings& settings, TcpConn& conn, uint32_t& status, Dir dir,
                    const uint8_t* l4, uint32_t l4Len, Nanos remaining);

// True when the entry is in a state the kernel's GC drops first when the table is nearly full
// (FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE).
bool tcpCanEarlyDrop(const TcpConn& conn);

}  // namespace ctsync::table
