#pragma once
// Hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks", 2014) packed in a
// uint64_t: the high 48 bits are milliseconds, the low 16 bits a logical counter. Packed values
// compare as the paper's (l, c) pairs, so the max/+1 rules below are the paper's rules.
//
// Time is injected: the caller passes its physical clock in milliseconds (wall clock, so that
// nodes roughly agree). Values never decrease, even when physical time goes backwards; they
// strictly increase on every now() and observe(), so two events of one node never share a
// value. When the logical counter overflows (65536 events in one millisecond, or physical time
// stuck far behind) the carry moves the millisecond field ahead: the clock runs a little ahead
// of physical time instead of wrapping, which keeps it monotonic.
// One instance per node, used from one thread.
#include <algorithm>
#include <cstdint>

namespace ctsync::replication {

class HybridClock {
 public:
  static constexpr int kLogicalBits = 16;
  static constexpr uint64_t kMaxMs = (uint64_t{1} << 48) - 1;

  // `maxForwardMs`: a remote value more than this far ahead of our physical time is not adopted
  // by observe() (a peer with a broken clock would otherwise drag every node's clock into the
  // future for good). 0 adopts anything.
  explicit HybridClock(uint64_t maxForwardMs = 0) : maxForwardMs_(maxForwardMs) {}

  static constexpr uint64_t pack(uint64_t ms, uint16_t logical) {
    return (std::min(ms, kMaxMs) << kLogicalBits) | logical;
  }
  static constexpr uint64_t millis(uint64_t hlc) { return hlc >> kLogicalBits; }
  static constexpr uint16_t logical(uint64_t hlc) { return static_cast<uint16_t>(hlc); }

  // A local event (a flow record written) at physical time `physicalMs`.
  uint64_t now(uint64_t physicalMs) {
    advance(pack(physicalMs, 0), last_);
    return last_;
  }

  // A record stamped `remote` by a peer arrived at physical time `physicalMs`. Returns the new
  // clock value (greater than both `remote` and every earlier value), unless `remote` is beyond
  // the forward limit: then it is left out (counted in rejected()) and this acts as now().
  uint64_t observe(uint64_t remote, uint64_t physicalMs) {
    if (maxForwardMs_ != 0 && millis(remote) > physicalMs + maxForwardMs_) {
      ++rejected_;
      return now(physicalMs);
    }
    advance(pack(physicalMs, 0), std::max(last_, remote));
    return last_;
  }

  uint64_t last() const { return last_; }
  uint64_t rejected() const { return rejected_; }

 private:
  // Packed form of the paper's update: physical time wins when strictly ahead (counter 0),
  // otherwise the largest known value plus one; +1 on a full counter carries into the
  // milliseconds. Saturates at the largest value (unreachable: 8900 years of milliseconds).
  void advance(uint64_t physical, uint64_t known) {
    if (physical > known) {
      last_ = physical;
    } else if (known != UINT64_MAX) {
      last_ = known + 1;
    } else {
      last_ = known;
    }
  }

  uint64_t maxForwardMs_;
  uint64_t last_ = 0;
  uint64_t rejected_ = 0;
};

}  // namespace ctsync::replication
