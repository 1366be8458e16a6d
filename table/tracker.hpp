#pragma once
// The tracker: packets in, verdicts and events out. Composes the parser, fragment reassembly,
// the L4 trackers and the table. Single-threaded; time comes from the caller.
#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "table/conn_table.hpp"
#include "table/nat.hpp"
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
  uint32_t index = kNil;   // the entry, for kNew/kEstablished/kRelated (kNil if it was killed)
  bool rewritten = false;  // NAT changed the packet's bytes (mutable packets only)
  // A fragment that completed its datagram: the whole datagram, tracked and (for mutable
  // packets) rewritten, in the tracker's memory until the next process*() call. The kernel
  // would send this datagram on, fragmented again to fit the link. Empty otherwise.
  std::span<uint8_t> datagram;
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

// One IP datagram the tracker may rewrite (NAT), with what the caller knows about it.
struct MutablePacket {
  uint8_t* data;
  uint32_t len;
  const PacketContext* context = nullptr;  // null: no interfaces, zone 0
};

class Tracker {
 public:
  static constexpr size_t kMaxBatch = 32;

  // `addresses` (not owned, may be null) answers masquerade and redirect; see nat.hpp.
  Tracker(const TrackerSettings& settings, uint64_t hashSeed,
          const InterfaceAddresses* addresses = nullptr);

  // Not owned; may be null.
  void setEventSink(EventSink* sink) { table_.setEventSink(sink); }

  // Tracks one IP datagram seen at `now` (times going backwards are treated as `now` = the
  // latest time seen). Entries that expired by `now` are destroyed first. New entries get
  // their NAT mapping from the rules as usual, but the packet is not rewritten.
  Verdict process(const uint8_t* data, size_t len, Nanos now, uint16_t zone = 0);

  // The same, and NAT rewrites the packet in place (addresses, ports or ids, checksums; ICMP
  // errors inside too). `context` gives the interfaces the rules match and the zone.
  Verdict process(uint8_t* data, size_t len, Nanos now, const PacketContext& context);

  // Same result as calling process() for each packet in order, but parses, hashes and
  // prefetches packets ahead of tracking them, so that table misses overlap. `out` must be at
  // least as long as `pkts`. All packets are taken to arrive at `now`.
  void processBatch(std::span<const RawPacket> pkts, Nanos now, std::span<Verdict> out,
                    uint16_t zone = 0);
  // The batch form of process(mutable): each packet rewritten in place.
  void processBatch(std::span<const MutablePacket> pkts, Nanos now, std::span<Verdict> out);

  // Moves time forward without a packet: expiry and reassembly timeouts.
  void advance(Nanos now);

  ConnTable& table() { return table_; }
  const ConnTable& table() const { return table_; }
  const TrackerCounters& counters() const { return counters_; }
  const ReassemblyCounters& reassemblyCounters() const { return reassembler_.counters(); }
  const NatCounters& natCounters() const { return nat_.counters(); }
  const TrackerSettings& settings() const { return settings_; }

 private:
  // `writable` is the packet's own bytes when NAT may rewrite them, else null; `slot` says
  // where in the batch a completed datagram is kept.
  Verdict track(const uint8_t* data, size_t len, uint8_t* writable, ParseResult& parsed,
                uint64_t hash, bool hashed, Nanos now, const PacketContext& ctx, size_t slot);
  Verdict related(const Packet& p, uint8_t* writable, uint16_t zone);
  Verdict create(const Packet& p, uint8_t* writable, uint64_t hash, Nanos now,
                 const PacketContext& ctx);
  Verdict update(const Packet& p, uint8_t* writable, ConnTable::Hit hit, uint64_t hash, Nanos now,
                 const PacketContext& ctx);
  template <typename P, typename Ctx>
  void pipeline(std::span<const P> pkts, Nanos now, std::span<Verdict> out, Ctx&& ctxOf);
  L4Outcome l4Packet(uint32_t index, Dir dir, const Packet& p, Nanos now);
  Verdict invalid(InvalidReason r);
  Nanos clampTime(Nanos now);

  TrackerSettings settings_;
  ParseOptions parseOptions_;
  ConnTable table_;
  Reassembler reassembler_;
  Nat nat_;
  TrackerCounters counters_;
  Nanos lastNow_ = 0;
  // Batch scratch, kept between calls so a batch does not re-initialise it.
  std::array<ParseResult, kMaxBatch> batchParsed_;
  std::array<uint64_t, kMaxBatch> batchHashes_{};
  std::vector<std::vector<uint8_t>> wholeDatagrams_;  // per batch position, see Verdict
};

}  // namespace ctsync::table
