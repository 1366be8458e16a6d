#include "replication/expect_table.hpp"

#include <algorithm>
#include <cassert>
#include <tuple>

#include "replication/hash.hpp"

namespace ctsync::replication {
namespace {

using wirehash::hashTuple;
using wirehash::mixIn;

auto tupleView(const table::Tuple& t) {
  return std::make_tuple(t.src.bytes, t.dst.bytes, t.sport, t.dport, t.l3, t.l4);
}

auto contentView(const ExpectRecord& r) {
  static const table::Tuple kNone{};
  return std::make_tuple(tupleView(r.mask), tupleView(r.master), r.timeoutSec, r.flags, r.cls,
                         r.helper, r.fn, r.natTuple.has_value(),
                         tupleView(r.natTuple ? *r.natTuple : kNone), r.natDir);
}

// Covers every field but the key (the range's) and nothing local, so that replicas holding
// the same records agree, and a record changed behind the protocol's back shows.
uint64_t digestItem(const ExpectRecord& r) {
  uint64_t h = mixIn(expectKeyHash(r.key), 0x45585045435400ULL);  // "EXPECT": not a flow's
  h = mixIn(h, r.version.generation);
  h = mixIn(h, r.version.hlc);
  h = mixIn(h, r.version.node);
  h = hashTuple(h, r.mask);
  h = hashTuple(h, r.master);
  h = mixIn(h, uint64_t{r.timeoutSec} | (uint64_t{r.flags} << 32));
  h = mixIn(h, uint64_t{r.cls} | (uint64_t{r.helper} << 32) | (uint64_t{r.fn} << 40) |
                   (uint64_t{r.natDir} << 48));
  if (r.natTuple) h = hashTuple(mixIn(h, 1), *r.natTuple);
  return h;
}

FlowKey masterOf(const ExpectRecord& r) {
  return FlowKey{r.master, r.key.zone};
}

}  // namespace

bool expectContentLess(const ExpectRecord& a, const ExpectRecord& b) {
  return contentView(a) < contentView(b);
}

Nanos ReplicaExpect::remaining(Nanos now) const {
  const Nanos end = received + static_cast<Nanos>(record.timeoutSec) * table::kSecond;
  return std::max<Nanos>(0, end - now);
}

ExpectTable::ExpectTable(Nanos tombstoneTtl, uint32_t ranges, ReplicaStats& stats)
    : tombstoneTtl_(tombstoneTtl), stats_(stats), ranges_(ranges) {}

uint32_t ExpectTable::rangeOf(const ExpectKey& key) const {
  return static_cast<uint32_t>(((expectKeyHash(key) >> 32) * ranges_.size()) >> 32);
}

void ExpectTable::schedule(const ExpectKey& key, Nanos at) {
  timers_.push({at, key});
  // Timers of replaced deadlines pile up until their time: past twice the entries, start over
  // from the entries' own deadlines.
  if (timers_.size() > 2 * entries_.size() + 1024) {
    std::vector<Timer> current;
    current.reserve(entries_.size());
    for (const auto& [k, e] : entries_) current.push_back({e.deadline, k});
    timers_ = decltype(timers_)(Later{}, std::move(current));
  }
}

void ExpectTable::take(Entry& e, const ExpectRecord& r, Nanos now, bool masterLive) {
  if (e.live) leave(e);
  e.expect.record = r;
  e.expect.received = now;
  e.expect.masterLive = masterLive;
  e.version = r.version;
  e.live = true;
  ++live_;
  e.digestItem = digestItem(r);
  auto& sum = ranges_[rangeOf(r.key)];
  sum.first += e.digestItem;
  ++sum.second;
  byMaster_[masterOf(r)].push_back(r.key);
  e.deadline = now + static_cast<Nanos>(r.timeoutSec) * table::kSecond;
  schedule(r.key, e.deadline);
  changes_.push_back(r.key);
}

void ExpectTable::leave(Entry& e) {
  assert(e.live);
  const ExpectRecord& r = e.expect.record;
  e.live = false;
  --live_;
  auto& sum = ranges_[rangeOf(r.key)];
  sum.first -= e.digestItem;
  --sum.second;
  const auto it = byMaster_.find(masterOf(r));
  assert(it != byMaster_.end());
  std::vector<ExpectKey>& keys = it->second;
  keys.erase(std::find(keys.begin(), keys.end(), r.key));
  if (keys.empty()) byMaster_.erase(it);
  changes_.push_back(r.key);
}

void ExpectTable::forget(Map::iterator it) {
  Entry& e = it->second;
  if (e.live) {
    forgotten_.push_back({it->first, e.version});
    leave(e);
  }
  entries_.erase(it);
}

ApplyOutcome ExpectTable::apply(const ExpectRecord& r, Nanos now, uint32_t bulkMark,
                                bool masterLive) {
  auto [it, fresh] = entries_.try_emplace(r.key);
  Entry& e = it->second;
  if (bulkMark != 0) e.sweepMark = bulkMark;
  if (fresh) {
    e.expect.record.key = r.key;
    take(e, r, now, masterLive);
    return ApplyOutcome::kInserted;
  }
  if (r.version < e.version || (r.version == e.version && !e.live)) {
    return e.live ? ApplyOutcome::kIgnoredOlder : ApplyOutcome::kResurrectionBlocked;
  }
  if (r.version == e.version) {
    const ExpectRecord& held = e.expect.record;
    if (!expectContentLess(held, r) && !expectContentLess(r, held)) {
      return ApplyOutcome::kIgnoredDuplicate;
    }
    // Keeps its arrival time: the same write, only another copy of it.
    if (expectContentLess(held, r)) {
      const Nanos received = e.expect.received;
      take(e, r, received, masterLive);
    }
    return ApplyOutcome::kVersionClash;
  }
  const bool wasLive = e.live;
  take(e, r, now, masterLive);
  return wasLive ? ApplyOutcome::kUpdated : ApplyOutcome::kInserted;
}

ApplyOutcome ExpectTable::apply(const ExpectDelete& d, Nanos now) {
  auto [it, fresh] = entries_.try_emplace(d.key);
  Entry& e = it->second;
  if (!fresh && (d.version < e.version || (d.version == e.version && !e.live))) {
    return d.version == e.version ? ApplyOutcome::kIgnoredDuplicate : ApplyOutcome::kIgnoredOlder;
  }
  const bool wasLive = e.live;
  if (wasLive) leave(e);
  e.expect.record = ExpectRecord{};
  e.expect.record.key = d.key;
  e.version = d.version;
  e.deadline = now + tombstoneTtl_;
  schedule(d.key, e.deadline);
  return wasLive ? ApplyOutcome::kDeleted : ApplyOutcome::kTombstoned;
}

void ExpectTable::masterUp(const FlowKey& master) {
  const auto it = byMaster_.find(master);
  if (it == byMaster_.end()) return;
  for (const ExpectKey& k : it->second) {
    Entry& e = entries_.at(k);
    if (!e.expect.masterLive) {
      e.expect.masterLive = true;
      changes_.push_back(k);
    }
  }
}

void ExpectTable::masterDown(const FlowKey& master) {
  const auto it = byMaster_.find(master);
  if (it == byMaster_.end()) return;
  const std::vector<ExpectKey> keys = it->second;  // forget() edits the index
  for (const ExpectKey& k : keys) {
    ++stats_.expectsDiedWithMaster;
    forget(entries_.find(k));
  }
}

void ExpectTable::expire(Nanos now) {
  while (!timers_.empty() && timers_.top().first <= now) {
    const Timer t = timers_.top();
    timers_.pop();
    const auto it = entries_.find(t.second);
    if (it == entries_.end() || it->second.deadline != t.first) continue;  // stale
    if (it->second.live) {
      ++stats_.expectsExpired;
    } else {
      ++stats_.expectTombstonesExpired;
    }
    forget(it);
  }
}

size_t ExpectTable::sweep(uint16_t node, uint32_t mark, uint64_t startHlc) {
  std::vector<ExpectKey> doomed;
  for (const auto& [k, e] : entries_) {
    if (e.live && e.version.node == node && e.sweepMark != mark && e.version.hlc < startHlc) {
      doomed.push_back(k);
    }
  }
  for (const ExpectKey& k : doomed) forget(entries_.find(k));
  stats_.expectsSwept += doomed.size();
  return doomed.size();
}

void ExpectTable::collectRange(uint32_t range, RangeContents& out) const {
  for (const auto& [k, e] : entries_) {
    if (rangeOf(k) != range) continue;
    if (e.live) {
      out.expects.push_back(e.expect.record);
    } else {
      out.expectTombstones.push_back(ExpectDelete{k, e.version});
    }
  }
}

std::optional<ReplicaExpect> ExpectTable::get(const ExpectKey& key) const {
  const auto it = entries_.find(key);
  if (it == entries_.end() || !it->second.live) return std::nullopt;
  return it->second.expect;
}

std::optional<Version> ExpectTable::tombstone(const ExpectKey& key) const {
  const auto it = entries_.find(key);
  if (it == entries_.end() || it->second.live) return std::nullopt;
  return it->second.version;
}

}  // namespace ctsync::replication
