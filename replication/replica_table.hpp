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
// Expectations sit beside the flows (expect_table.hpp has their rules): last writer wins with
// tombstones, swept by bulks and compared by digests as flows are, and removed when their
// master flow stops being live here.
//
// Local decisions are outside the set rule: timeouts age on the local clock from the arrival
// of the base, tombstones expire after Settings::tombstoneTtl, and expiry and bulk sweeps
// forget a flow entirely (no tombstone: the owner may still resend the same version).
//
// Layout: entries sit in a slab (stable ids, never moved); flat indexes map the key, and the
// reply tuple of each live flow, to entry ids; a timer wheel holds (deadline, id) items, removed
// lazily. apply() costs about one cache miss per index it touches plus the entry's own lines.
//
// One instance per thread; no locks.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "replication/flat_map.hpp"
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

// A replicated expectation as the table holds it.
struct ReplicaExpect {
  ExpectRecord record;  // record.version.node is the owner
  Nanos received = 0;   // local time the record arrived: the timeout runs from here
  // Its master flow is live here: only then may it be committed to a kernel.
  bool masterLive = false;

  // Time left of record.timeoutSec at local time `now`, never negative.
  Nanos remaining(Nanos now) const;
};

// Total order on expectation contents (all but key and version), for tie-breaks.
bool expectContentLess(const ExpectRecord& a, const ExpectRecord& b);

struct ReplicaSettings {
  Nanos tombstoneTtl = table::seconds(120);  // longer than any reordering/resend delay
  uint32_t digestRanges = 256;               // 1 .. 65536
};

struct ReplicaStats {
  uint64_t natConflicts = 0;  // times a live flow lost a NAT conflict
  uint64_t flowsExpired = 0;  // live flows whose timeout ran out
  uint64_t tombstonesExpired = 0;
  uint64_t swept = 0;  // flows removed by bulk sweeps
  uint64_t expectsExpired = 0;
  uint64_t expectTombstonesExpired = 0;
  uint64_t expectsSwept = 0;
  uint64_t expectsDiedWithMaster = 0;  // removed because their master flow stopped being live
};

struct ExpireResult {
  size_t flows = 0;
  size_t tombstones = 0;
};

// What a peer needs to repair one digest range: its live flows and expectations and their
// tombstones.
struct RangeContents {
  std::vector<FlowRecord> flows;
  std::vector<FlowDelete> tombstones;
  std::vector<ExpectRecord> expects;
  std::vector<ExpectDelete> expectTombstones;
};

class ExpectTable;

class ReplicaTable {
 public:
  explicit ReplicaTable(const ReplicaSettings& settings);
  ~ReplicaTable();
  ReplicaTable(const ReplicaTable&) = delete;
  ReplicaTable& operator=(const ReplicaTable&) = delete;

  // Sizes the indexes and the entry slab for `flows` flows (the cluster's table limit) so that
  // a bulk does not rehash on the way up. Takes address space, not memory: pages are backed
  // when first written. Optional.
  void reserve(size_t flows);

  // `fromWriter`: the record came from the node that wrote it (version.node), so it counts for
  // that node's open bulk (see beginBulk); a record relayed by another node (in its bulk, or a
  // digest repair) is merged the same way but is no proof that the writer still has the flow.
  ApplyResult apply(const FlowRecord& record, Nanos now, bool fromWriter = true);
  ApplyResult apply(const FlowDelete& del, Nanos now);
  // The results of apply(record, now) for each record, in order. Faster on a large table: the
  // lookups of the records ahead start before the current one is applied, so their cache misses
  // overlap instead of following one another (a receiver applies a datagram's records so).
  std::vector<ApplyResult> applyBatch(std::span<const FlowRecord> records, Nanos now,
                                      bool fromWriter = true);

  // Expectations (expect_table.hpp). `fromWriter` as for flows. The outcomes mean what they
  // mean for flows; kMerged does not occur.
  ApplyOutcome apply(const ExpectRecord& record, Nanos now, bool fromWriter = true);
  ApplyOutcome apply(const ExpectDelete& del, Nanos now);
  std::optional<ReplicaExpect> getExpect(const ExpectKey& key) const;
  std::optional<Version> expectTombstone(const ExpectKey& key) const;  // when not live
  // Calls f for every live expectation (masterLive or not), in no particular order. `f` must
  // not change the table.
  void forEachExpect(const std::function<void(const ReplicaExpect&)>& f) const;
  size_t expectCount() const;
  size_t expectTombstoneCount() const;
  // Expectations whose live state or masterLive changed since the last call, whatever the cause
  // (apply, expiry, sweep, their master's life); a key may repeat.
  std::vector<ExpectKey> takeExpectChanges();
  // Live expectations forgotten without a tombstone (expired, swept, died with their master)
  // since the last call, with the version they had.
  std::vector<ExpectDelete> takeExpectsForgotten();

  // Removes live flows whose timeout ran out and tombstones past their TTL. Amortised O(1) per
  // removal, plus a scan of the timers of the current tick (about a second) per call.
  // `expiredFlows`, when given, receives each expired live flow's key and version.
  ExpireResult expire(Nanos now, std::vector<FlowDelete>* expiredFlows = nullptr);

  // Bulk sweep. Between beginBulk and endBulk, every upsert written by `node` (version.node)
  // and applied with fromWriter marks its flow, whatever its outcome. endBulk removes the live
  // flows owned by `node` that were not marked and were written before `startHlc` (the sender's
  // clock when it took the bulk's snapshot: a later flow may simply have arrived before the bulk
  // opened here), and returns how many; nullopt (nothing removed) when `bulkId` is not the bulk
  // open for `node` (a newer bulk began, or none did). A beginBulk with another bulkId abandons
  // that node's open bulk; one with the bulkId already open does nothing, so the marks made so far
  // count: the sender repeats BulkBegin in every datagram of a bulk, so that the bulk opens even
  // when its first datagram is lost.
  void beginBulk(uint16_t node, uint32_t bulkId, uint64_t startHlc = UINT64_MAX);
  // `removed`, when given, receives each swept flow's key and version. Expectations written by
  // `node` are swept by the same rule (takeExpectsForgotten() tells which).
  std::optional<size_t> endBulk(uint16_t node, uint32_t bulkId,
                                std::vector<FlowDelete>* removed = nullptr);

  // Anti-entropy. Range r holds the keys whose 32-bit hash (top half of flowKeyHash) h has
  // (h * ranges) >> 32 == r. The digest hash is the sum of a 64-bit hash of (key, version,
  // merged status, merged tcpState, the rest of the content) over the range's live flows
  // (NAT-shadowed included, tombstones not: they expire on local time), kept up to date in O(1) per
  // change; plus the same over the live expectations whose expectKeyHash falls in the range.
  // Digest::flows counts both.
  uint32_t rangeCount() const { return static_cast<uint32_t>(ranges_.size()); }
  uint32_t rangeOf(const FlowKey& key) const;
  Digest digest(uint32_t range) const;
  std::vector<Digest> digests() const;
  RangeContents flowsInRange(uint32_t range) const;  // O(size() + expectations): a scan

  // Live flows only (NAT-shadowed included, flagged).
  std::optional<ReplicaFlow> get(const FlowKey& key) const;
  std::optional<Version> tombstone(const FlowKey& key) const;  // when the flow is not live
  // Calls f(const ReplicaFlow&) for every live flow, in no particular order. `f` must not
  // change the table.
  template <typename F>
  void forEach(F&& f) const {
    entries_.forEach([&f](uint32_t, const Entry& e) {
      if (e.inUse && e.live) f(e.flow);
    });
  }
  size_t size() const { return live_; }
  size_t tombstoneCount() const { return entries_.size() - live_; }
  size_t natShadowedCount() const { return shadowed_; }
  // Flows whose NAT shadow was lifted (the conflict's winner left) since the last call: they
  // became committable again. The engine reports them as replica changes.
  std::vector<FlowKey> takeShadowLifted() { return std::exchange(shadowLifted_, {}); }
  const ReplicaStats& stats() const { return stats_; }
  // Bytes the table's structures hold (address space reserved but never written included).
  size_t memoryBytes() const;

 private:
  struct Entry {
    ReplicaFlow flow;         // record.key is always set; the rest is valid when hasUpsert
    uint64_t keyHash = 0;     // flowKeyHash(key)
    uint64_t digestItem = 0;  // contribution to its range's digest while live
    Nanos tombstoneUntil = 0;
    Nanos scheduled = 0;        // deadline of this entry's current timer in expiry_
    uint64_t tombstoneHlc = 0;  // the tombstone is {generation, tombstoneHlc, tombstoneNode}
    uint32_t generation = 0;    // the only generation that counts (rule 1)
    uint32_t sweepMark = 0;
    uint32_t replyHash = 0;  // where byReply_ holds the entry while live
    uint16_t tombstoneNode = 0;
    bool inUse = false;  // false: a free slab slot
    bool hasUpsert = false;
    bool hasTombstone = false;
    bool live = false;

    Version tombstone() const { return {generation, tombstoneHlc, tombstoneNode}; }
  };
  struct RangeSum {
    uint64_t hash = 0;
    uint32_t flows = 0;
  };
  struct OpenBulk {
    uint32_t bulkId;
    uint32_t mark;
    uint64_t startHlc;
  };
  // What the digest, the NAT index and the expiry timers saw of an entry before a change.
  struct Before {
    bool live;
    table::Tuple reply;
    uint64_t createdHlc;
    uint16_t createdNode;
  };

  ApplyResult applyHashed(const FlowRecord& r, uint32_t keyIndexHash, Nanos now, bool fromWriter);
  void prefetchEntry(uint32_t id) const;
  uint32_t find(const FlowKey& key, uint32_t keyIndexHash) const;  // id, or FlatIndex::kNone
  uint32_t createEntry(const FlowKey& key, uint32_t keyIndexHash);
  void removeEntry(uint32_t id);
  static Before before(const Entry& e) {
    return {e.live, e.flow.record.reply, e.flow.createdHlc, e.flow.createdNode};
  }
  std::optional<FlowKey> settle(uint32_t id, const Before& b, Nanos now);
  uint32_t rangeOfHash(uint64_t keyHash) const;
  void unlink(uint32_t id);
  std::optional<FlowKey> resolveNat(const table::Tuple& reply, uint16_t zone, uint32_t hash);
  void markBulk(Entry& e, uint16_t writer);
  Nanos deadline(const Entry& e) const;
  void rebuildExpiry(Nanos now);
  static uint64_t digestItem(const Entry& e);

  ReplicaSettings settings_;
  flat::Slab<Entry> entries_;
  flat::FlatIndex byKey_;    // index hash of the key -> entry
  flat::FlatIndex byReply_;  // index hash of (reply, zone) -> the live entries with that reply
  std::vector<RangeSum> ranges_;
  flat::DeadlineWheel
      expiry_;  // (deadline, id): current iff the entry is in use and scheduled there
  std::unordered_map<uint16_t, OpenBulk> bulks_;
  uint32_t nextBulkMark_ = 1;
  size_t live_ = 0;
  std::vector<FlowKey> shadowLifted_;
  size_t shadowed_ = 0;
  ReplicaStats stats_;
  std::unique_ptr<ExpectTable> expects_;
};

}  // namespace ctsync::replication
