#pragma once
// The replica: peers' flows as merged from the records they send. Not on the per-packet path.
//
// Merge rules. A flow's state is a function of the *set* of records received for its key, so
// replicas that received the same records agree whatever the order or duplication:
//  1. Only the highest generation seen (upserts and deletes alike) counts; records of lower
//     generations are ignored, a higher one starts the flow's life afresh.
//  2. Within that generation the *base* is the upsert with the greatest Version (generation,
//     hlc, node). Every field comes from the base (reply tuple, timeout, mark, labels, helper,
//     master, TCP flags and scale, status bits other than those below, version) except:
//     - status bits in kStickyStatus are the OR over all upserts of the generation;
//     - tcpState is the most advanced over all upserts of the generation, by tcpProgress().
//     So an older record arriving late can add ASSURED or move CLOSE_WAIT to TIME_WAIT, but
//     never brings its timeout back; a newer record with a lower TCP state keeps the higher
//     state and brings its own timeout. Two upserts with equal versions but different content
//     (only a misconfigured cluster with duplicate node ids makes them) are a version clash:
//     the larger content by contentLess() wins, so every node still picks the same one.
//  3. The tombstone is the greatest delete Version of the generation. The flow is live iff its
//     base is newer than the tombstone: an upsert not newer cannot resurrect it (its sticky bits
//     and TCP progress are still folded in, so the order of arrival does not matter), a newer
//     one (a higher generation, or split-brain writes after the delete) does.
//  4. Creator of a flow = the smallest (hlc, node) over the upserts of its generation seen.
//     Live flows with the same (zone, reply tuple) conflict: the one with the smallest
//     (creator, key) wins and the others are NAT-shadowed — kept (they come back if the winner
//     goes) but marked, so they are never committed to a kernel.
// Local decisions are outside the set rule: timeouts age on the local clock from the arrival
// of the base, tombstones expire after Settings::tombstoneTtl, and expiry and bulk sweeps
// forget a flow entirely (no tombstone: the owner may still resend the same version).
//
// One instance per thread; no locks.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <queue>
#include <unordered_map>
#include <vector>

#include "replication/records.hpp"
#include "table/types.hpp"

namespace ctsync::replication {

using table::Nanos;

// Status bits the kernel only ever sets on a live entry.
inline constexpr uint32_t kStickyStatus =
    table::status::kExpected | table::status::kSeenReply | table::status::kAssured |
    table::status::kConfirmed | table::status::kSrcNat | table::status::kDstNat |
    table::status::kSeqAdjust | table::status::kSrcNatDone | table::status::kDstNatDone;

// Rank of a TCP state in a connection's life: NONE < SYN_SENT < SYN_SENT2 < SYN_RECV <
// ESTABLISHED < FIN_WAIT < CLOSE_WAIT < LAST_ACK < TIME_WAIT < CLOSE; unknown values rank above
// all, by value (the map is one-to-one, so the maximum is a single state). A kernel that
// reopens a closed flow bumps the generation, so progress only needs to hold within one.
int tcpProgress(uint8_t tcpState);

// Total order on record contents used for deterministic tie-breaks (ignores sticky bits and
// tcpState).
bool contentLess(const FlowRecord& a, const FlowRecord& b);

// What one apply() did, for the caller's counters.
enum class ApplyOutcome : uint8_t {
  kInserted,             // a flow became live (new key, new generation, or newer than tombstone)
  kUpdated,              // a newer version replaced a live flow's state
  kMerged,               // older or equal version: only its sticky bits / TCP progress were new
  kIgnoredOlder,         // older than what is held (or older generation): nothing changed
  kIgnoredDuplicate,     // same version and content as held
  kVersionClash,         // same version, different content: tie-broken (duplicate node ids?)
  kDeleted,              // a live flow became a tombstone
  kTombstoned,           // a delete for a flow not live here: tombstone recorded or raised
  kResurrectionBlocked,  // an upsert not newer than the tombstone
  kCount
};
const char* applyOutcomeName(ApplyOutcome o);

struct ApplyResult {
  ApplyOutcome outcome;
  // Set when this apply made a live flow lose a NAT conflict (the applied flow itself or the
  // previous holder of the reply tuple), so the caller can log it.
  std::optional<FlowKey> natLoser;
};

// A replicated flow as the table holds it.
struct ReplicaFlow {
  FlowRecord record;   // merged state (rules above); record.version.node is the owner
  Nanos received = 0;  // local time the base record arrived: the timeout runs from here
  uint64_t createdHlc = 0;
  uint16_t createdNode = 0;
  bool natShadowed = false;  // lost a NAT conflict: keep, but do not commit

  // Time left of record.timeoutSec at local time `now`, never negative.
  Nanos remaining(Nanos now) const;
};

struct ReplicaSettings {
  Nanos tombstoneTtl = table::seconds(120);  // longer than any reordering/resend delay
  uint32_t digestRanges = 256;               // 1 .. 65536
};

struct ReplicaStats {
  uint64_t natConflicts = 0;  // times a live flow lost a NAT conflict
  uint64_t flowsExpired = 0;  // live flows whose timeout ran out
  uint64_t tombstonesExpired = 0;
  uint64_t swept = 0;  // flows removed by bulk sweeps
};

struct ExpireResult {
  size_t flows = 0;
  size_t tombstones = 0;
};

// What a peer needs to repair one digest range: its live flows and its tombstones.
struct RangeContents {
  std::vector<FlowRecord> flows;
  std::vector<FlowDelete> tombstones;
};

class ReplicaTable {
 public:
  explicit ReplicaTable(const ReplicaSettings& settings);

  // Sizes the indexes for `flows` live flows (the cluster's table limit) so that a bulk does
  // not rehash them on the way up. Optional.
  void reserve(size_t flows);

  ApplyResult apply(const FlowRecord& record, Nanos now);
  ApplyResult apply(const FlowDelete& del, Nanos now);

  // Removes live flows whose timeout ran out and tombstones past their TTL. Amortised
  // O(expired + log n) per removal.
  ExpireResult expire(Nanos now);

  // Bulk sweep. Between beginBulk and endBulk, every upsert written by `node` (version.node)
  // marks its flow, whatever its outcome. endBulk removes the live flows owned by `node` that
  // were not marked and returns how many; nullopt (nothing removed) when `bulkId` is not the
  // bulk open for `node` (a newer bulk began, or none did). A new beginBulk for a node
  // abandons that node's open bulk.
  void beginBulk(uint16_t node, uint32_t bulkId);
  std::optional<size_t> endBulk(uint16_t node, uint32_t bulkId);

  // Anti-entropy. Range r holds the keys whose 32-bit hash (top half of flowKeyHash) h has
  // (h * ranges) >> 32 == r. The digest hash is the sum of a 64-bit hash of (key, version,
  // merged status, merged tcpState) over the range's live flows (NAT-shadowed included,
  // tombstones not: they expire on local time), kept up to date in O(1) per change.
  uint32_t rangeCount() const { return static_cast<uint32_t>(ranges_.size()); }
  uint32_t rangeOf(const FlowKey& key) const;
  Digest digest(uint32_t range) const;
  std::vector<Digest> digests() const;
  RangeContents flowsInRange(uint32_t range) const;  // O(size()): a scan

  // Live flows only (NAT-shadowed included, flagged).
  std::optional<ReplicaFlow> get(const FlowKey& key) const;
  std::optional<Version> tombstone(const FlowKey& key) const;  // when the flow is not live
  // Calls f(const ReplicaFlow&) for every live flow, in no particular order. `f` must not
  // change the table.
  template <typename F>
  void forEach(F&& f) const {
    for (const auto& [key, e] : entries_) {
      if (e.live) f(e.flow);
    }
  }
  size_t size() const { return live_; }
  size_t tombstoneCount() const { return entries_.size() - live_; }
  size_t natShadowedCount() const { return shadowed_; }
  const ReplicaStats& stats() const { return stats_; }

 private:
  struct Entry {
    ReplicaFlow flow;         // record.key is always set; the rest is valid when hasUpsert
    uint32_t generation = 0;  // the only generation that counts (rule 1)
    bool hasUpsert = false;
    bool hasTombstone = false;
    bool live = false;
    Version tombstone;
    Nanos tombstoneUntil = 0;
    Nanos scheduled = 0;  // time of this entry's earliest item in expiry_
    uint64_t keyHash = 0;
    uint64_t digestItem = 0;  // contribution to its range's digest while live
    uint64_t sweepMark = 0;
  };
  struct NatKey {
    table::Tuple reply;
    uint16_t zone = 0;
    friend bool operator==(const NatKey&, const NatKey&) = default;
  };
  struct NatKeyHasher {
    size_t operator()(const NatKey& k) const;
  };
  struct RangeSum {
    uint64_t hash = 0;
    uint32_t flows = 0;
  };
  struct Timer {
    Nanos at;
    FlowKey key;
    bool operator>(const Timer& o) const { return at > o.at; }
  };
  struct OpenBulk {
    uint32_t bulkId;
    uint64_t mark;
  };
  // What the digest, the NAT index and the expiry queue saw of an entry before a change.
  struct Before {
    bool live;
    table::Tuple reply;
    uint64_t createdHlc;
    uint16_t createdNode;
  };

  Entry& createEntry(const FlowKey& key);
  Before before(const Entry& e) const {
    return {e.live, e.flow.record.reply, e.flow.createdHlc, e.flow.createdNode};
  }
  std::optional<FlowKey> settle(Entry& e, const Before& b);
  uint32_t rangeOfHash(uint64_t keyHash) const;
  void unlink(Entry& e);
  std::optional<FlowKey> resolveNat(const NatKey& nk);
  void markBulk(Entry& e, uint16_t writer);
  Nanos deadline(const Entry& e) const;
  static uint64_t digestItem(const Entry& e);

  ReplicaSettings settings_;
  std::unordered_map<FlowKey, Entry, FlowKeyHasher> entries_;
  std::unordered_map<NatKey, std::vector<FlowKey>, NatKeyHasher> byReply_;
  std::vector<RangeSum> ranges_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> expiry_;
  std::unordered_map<uint16_t, OpenBulk> bulks_;
  uint64_t nextBulkMark_ = 1;
  size_t live_ = 0;
  size_t shadowed_ = 0;
  ReplicaStats stats_;
};

}  // namespace ctsync::replication
