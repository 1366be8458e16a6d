#pragma once
// What an L4 tracker tells the table after it looked at one packet. L4 trackers see the L4
// bytes, the entry's status bits and their own per-protocol state; never the L3 protocol.
#include <cstdint>

#include "table/types.hpp"

namespace ctsync::table {

// Event causes, numbered as the kernel's enum ip_conntrack_events (IPCT_*).
namespace ev {
inline constexpr uint32_t kNew = 1u << 0;
inline constexpr uint32_t kRelated = 1u << 1;
inline constexpr uint32_t kDestroy = 1u << 2;
inline constexpr uint32_t kReply = 1u << 3;
inline constexpr uint32_t kAssured = 1u << 4;
inline constexpr uint32_t kProtoinfo = 1u << 5;
inline constexpr uint32_t kHelper = 1u << 6;
inline constexpr uint32_t kMark = 1u << 7;
inline constexpr uint32_t kSeqAdj = 1u << 8;
inline constexpr uint32_t kSecmark = 1u << 9;
inline constexpr uint32_t kLabel = 1u << 10;
inline constexpr uint32_t kSynproxy = 1u << 11;
}  // namespace ev

struct L4Outcome {
  enum class Kind : uint8_t {
    kAccept,   // packet belongs to the entry; apply the fields below
    kInvalid,  // nothing changes except what the tracker itself recorded and, when `refresh`
               // is set, the timeout (the kernel lowers it for some invalid TCP packets);
               // `reason` says why
    kKill,     // delete the entry now (e.g. RST while only a RST was ever seen in reply)
    kReopen,   // delete the entry now, then track the same packet as a brand-new flow
  };
  Kind kind = Kind::kAccept;
  InvalidReason reason = InvalidReason::kNone;
  bool refresh = false;  // set the entry's expiry to now + timeout
  Nanos timeout = 0;
  uint32_t events = 0;  // ev::* bits the tracker caused (kProtoinfo on state change, kAssured)

  static L4Outcome invalid(InvalidReason r) {
    L4Outcome o;
    o.kind = Kind::kInvalid;
    o.reason = r;
    return o;
  }
  static L4Outcome accept(Nanos t, uint32_t events = 0) {
    L4Outcome o;
    o.refresh = true;
    o.timeout = t;
    o.events = events;
    return o;
  }
};

}  // namespace ctsync::table
