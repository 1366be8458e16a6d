#pragma once
// The tracker: packets in, verdicts and events out. Composes the parser, fragment reassembly,
// the L4 trackers and the table. Single-threaded; time comes from the caller.
#include <array>
#include <cstdint>
#include <span>

#include "table/conn_table.hpp"
#include "table/packet.hpp"
#include "table/reassembly.hpp"
#include "table/settings.hpp"

namespace ctsync::table {

// What the kernel calls ctinfo, plus the cases where no entry is attached.
enum class CtState : uint8_t {
  kNew,          // original direction, no reply seen yet (ct state new)
  kEstablished,  // reply seen, or a reply-direction packet (ct state established)
  kRelated,      // an ICMP error about a tracked flow (ct state related)
  kInvalid,      // `reason` says why (ct state invalid)
  kHeld,         // a fragment kept for reassembly; the datagram is judged when it completes
};

struct Verdict {
  CtState state = CtState::kInvalid;
  Dir dir = Dir::kOriginal;
  InvalidReason reason = InvalidReason::kNone;
  uint32_t index = kNil;  // the entry, for kNew/kEstablished/kRelated (kNil if it was killed)
};

struct TrackerCounters {
  uint64_t packets = 0;
  std::array<uint64_t, 5> byState{};  // packets per CtState, as nft `ct state X counter` counts
  uint64_t created = 0;
  uint64_t related = 0;
  uint64_t invalidTotal = 0;
  std::array<uint64_t, static_cast<size_t>(InvalidReason::kCount)> invalid{};
};

// One captured IP datagram for batch processing.
struct RawPacket {
  const uint8_t* data;
  uint32_t len;
};

class Tracker {
 public:
  static constexpr size_t kMaxBatch = 32;

  Tracker(const TrackerSettings& settings, uint64_t hashSeed);

  // Not owned; may be null.
  void setEventSink(EventSink* sink) { table_.setEventSink(sink); }

  // Tracks one IP datagram seen at `now` (times going backwards are treated as `now` = the
  // latest time seen). Entries that expired by `now` are destroyed first.
  Verdict process(const uint8_t* data, size_t len, Nanos now, uint16_t zone = 0);

  // Same result as calling process() for each packet in order, but parses, hashes and
  // prefetches packets ahead of tracking them, so that table misses overlap. `out` must be at
  // least as long as `pkts`. All packets are taken to arrive at `now`.
  void processBatch(std::span<const RawPacket> pkts, Nanos now, std::span<Verdict> out,
                    uint16_t zone = 0);

  // Moves time forward without a packet: expiry and reassembly timeouts.
  void advance(Nanos now);

  ConnTable& table() { return table_; }
  const ConnTable& table() const { return table_; }
  const TrackerCounters& counters() const { return counters_; }
  const ReassemblyCounters& reassemblyCounters() const { return reassembler_.counters(); }
  const TrackerSettings& settings() const { return settings_; }

 private:
  Verdict track(const uint8_t* data, size_t len, ParseResult& parsed, uint64_t hash, bool hashed,
                Nanos now, uint16_t zone);
  Verdict related(const Packet& p, Nanos now, uint16_t zone);
  Verdict create(const Packet& p, uint64_t hash, Nanos now, uint16_t zone);
  Verdict update(const Packet& p, ConnTable::Hit hit, uint64_t hash, Nanos now, uint16_t zone);
  L4Outcome l4Packet(uint32_t index, Dir dir, const Packet& p, Nanos now);
  Verdict invalid(InvalidReason r);
  Nanos clampTime(Nanos now);

  TrackerSettings settings_;
  ParseOptions parseOptions_;
  ConnTable table_;
  Reassembler reassembler_;
  TrackerCounters counters_;
  Nanos lastNow_ = 0;
  // Batch scratch, kept between calls so a batch does not re-initialise it.
  std::array<ParseResult, kMaxBatch> batchParsed_;
  std::array<uint64_t, kMaxBatch> batchHashes_{};
};

}  // namespace ctsync::table
