#pragma once
// IPv4 and IPv6 fragment reassembly before tracking, as the kernel's nf_defrag does: the
// tracker only ever sees whole datagrams. Memory is bounded (bytes held and datagrams in
// progress); incomplete datagrams time out.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "table/types.hpp"

namespace ctsync::table {

struct ReassemblyLimits {
  size_t maxBytes = 4 * 1024 * 1024;  // as ipfrag_high_thresh
  size_t maxDatagrams = 1024;
  Nanos timeout = seconds(30);  // as ipfrag_time
};

struct ReassemblyCounters {
  uint64_t fragments = 0;    // fragments accepted into a queue
  uint64_t reassembled = 0;  // datagrams completed
  uint64_t timedOut = 0;     // datagrams dropped incomplete after the timeout
  uint64_t overLimit = 0;    // fragments dropped because a limit was reached
  uint64_t invalid = 0;      // overlapping, oversized (> 65535) or malformed fragments
};

enum class FragStatus : uint8_t { kIncomplete, kComplete, kInvalid };

struct FragResult {
  FragStatus status = FragStatus::kIncomplete;
  InvalidReason reason = InvalidReason::kNone;
  // With kComplete: the whole datagram (header rewritten as unfragmented: IPv4 MF/offset
  // cleared, total length and header checksum fixed; IPv6 fragment header removed, payload
  // length fixed). Valid until the next call on this Reassembler.
  std::span<const uint8_t> datagram;
};

class Reassembler {
 public:
  explicit Reassembler(const ReassemblyLimits& limits);
  ~Reassembler();
  Reassembler(const Reassembler&) = delete;
  Reassembler& operator=(const Reassembler&) = delete;

  // Feeds one fragment (a datagram parseIp() reported as kFragment). Datagrams are keyed as
  // the kernel keys them: (src, dst, id, protocol) for IPv4; (src, dst, id) for IPv6.
  FragResult add(const uint8_t* data, size_t len, Nanos now);

  // Drops incomplete datagrams older than the timeout. add() also does this lazily.
  void expire(Nanos now);

  const ReassemblyCounters& counters() const { return counters_; }
  size_t bytesHeld() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ReassemblyCounters counters_;
};

}  // namespace ctsync::table
