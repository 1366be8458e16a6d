#pragma once
// The replica's expectations (helpers' announced connections, records.hpp ExpectRecord), beside
// the flows of ReplicaTable, which owns one of these and drives it. Expectations are few (a
// helper makes one per control command), so plain hash maps do.
//
// Merge: last writer wins. An entry holds the record, upsert or delete, with the greatest
// Version seen for its key (a delete wins a tie with an upsert; two upserts of equal versions
// but other contents, which only duplicate node ids make, keep the larger by
// expectContentLess). The expectation is live iff that record is an upsert, so a delete leaves
// a tombstone (kept for the flows' tombstoneTtl) that blocks every older upsert. No generations
// or sticky fields as flows have: a helper never changes an expectation in place, it makes a
// new one or removes it, so nothing partial needs folding in.
//
// Masters: an expectation lives no longer than its master, the flow FlowKey{record.master,
// key.zone}. When the master stops being live in the replica (deleted, expired, swept) its
// live expectations are removed (no tombstone, like an expired flow) and reported. One that
// arrives while its master is not live is kept, since the master may follow (later in the same
// bulk, or in a resend), but is not committable (ReplicaExpect::masterLive is false) until the
// master is live; if the master never comes, its own timeout removes it.
//
// Local decisions, as for flows: timeouts age on the local clock from the arrival of the held
// upsert; expiry and sweeps forget an entry entirely. One instance per thread; no locks.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <queue>
#include <unordered_map>
#include <utility>
#include <vector>

#include "replication/records.hpp"
#include "replication/replica_table.hpp"

namespace ctsync::replication {

class ExpectTable {
 public:
  // `ranges`: the flows' digest range count (expectations share the ranges, by expectKeyHash).
  ExpectTable(Nanos tombstoneTtl, uint32_t ranges, ReplicaStats& stats);

  // `bulkMark`: the mark of the writer's open bulk when the record counts for it, else 0.
  ApplyOutcome apply(const ExpectRecord& r, Nanos now, uint32_t bulkMark, bool masterLive);
  ApplyOutcome apply(const ExpectDelete& d, Nanos now);

  // The flow `master` became live, or stopped being live, in the replica. Only needed while
  // some expectation is live (watchesAny).
  bool watchesAny() const { return !byMaster_.empty(); }
  void masterUp(const FlowKey& master);
  void masterDown(const FlowKey& master);

  // Live expectations whose timeout ran out are forgotten, tombstones past their TTL dropped.
  void expire(Nanos now);
  // Forgets the live expectations written by `node` before `startHlc` and not marked `mark`.
  size_t sweep(uint16_t node, uint32_t mark, uint64_t startHlc);

  // Digest contribution of range r: (sum of items, live expectations).
  std::pair<uint64_t, uint32_t> rangeSum(uint32_t range) const { return ranges_[range]; }
  void collectRange(uint32_t range, RangeContents& out) const;

  std::optional<ReplicaExpect> get(const ExpectKey& key) const;
  std::optional<Version> tombstone(const ExpectKey& key) const;
  template <typename F>
  void forEach(F&& f) const {
    for (const auto& [key, e] : entries_) {
      if (e.live) f(e.expect);
    }
  }
  size_t size() const { return live_; }
  size_t tombstoneCount() const { return entries_.size() - live_; }

  // Keys whose live or committable state changed since the last call (may repeat a key).
  std::vector<ExpectKey> takeChanges() { return std::exchange(changes_, {}); }
  // Live expectations removed without a tombstone (expired, swept, died with their master)
  // since the last call, with the version they had.
  std::vector<ExpectDelete> takeForgotten() { return std::exchange(forgotten_, {}); }

 private:
  struct Entry {
    ReplicaExpect expect;  // the held upsert while live; key always set
    Version version;       // of the held record, upsert or delete
    bool live = false;
    Nanos deadline = 0;  // live: end of the timeout; else: end of the tombstone
    uint32_t sweepMark = 0;
    uint64_t digestItem = 0;
  };
  using Map = std::unordered_map<ExpectKey, Entry, ExpectKeyHasher>;

  void take(Entry& e, const ExpectRecord& r, Nanos now, bool masterLive);
  void leave(Entry& e);  // the live expectation stops being live: out of digest and index
  void forget(Map::iterator it);
  void schedule(const ExpectKey& key, Nanos at);
  uint32_t rangeOf(const ExpectKey& key) const;

  Nanos tombstoneTtl_;
  ReplicaStats& stats_;
  Map entries_;
  // Masters of the live expectations -> their keys.
  std::unordered_map<FlowKey, std::vector<ExpectKey>, FlowKeyHasher> byMaster_;
  // (deadline, key), current iff the key's entry has that deadline; others are skipped.
  using Timer = std::pair<Nanos, ExpectKey>;
  struct Later {
    bool operator()(const Timer& a, const Timer& b) const { return a.first > b.first; }
  };
  std::priority_queue<Timer, std::vector<Timer>, Later> timers_;
  std::vector<std::pair<uint64_t, uint32_t>> ranges_;
  size_t live_ = 0;
  std::vector<ExpectKey> changes_;
  std::vector<ExpectDelete> forgotten_;
};

}  // namespace ctsync::replication
