// The engine's expectations: local writes, their reliable stream and resends, what arrives
// from peers, and owner authority — the counterparts of the flow code in engine.cpp.
#include <algorithm>
#include <utility>

#include "replication/engine.hpp"

namespace ctsync::replication {
namespace {

bool sameExpectContent(const ExpectRecord& a, const ExpectRecord& b) {
  return !expectContentLess(a, b) && !expectContentLess(b, a);
}

FlowKey masterOf(const ExpectRecord& e) {
  return FlowKey{e.master, e.key.zone};
}

}  // namespace

std::optional<ExpectRecord> Engine::localExpect(const ExpectKey& key) const {
  const auto it = localExpects_.find(key);
  if (it == localExpects_.end() || !it->second.live) return std::nullopt;
  return it->second.record;
}

void Engine::upsertExpect(const ExpectRecord& e, Nanos now) {
  auto [it, fresh] = localExpects_.try_emplace(e.key);
  uint32_t generation = e.version.generation;
  if (!fresh) generation = std::max(generation, it->second.record.version.generation);
  setLocalExpect(it->second, e, stamp(generation, now), now);
  reportExpects(now);
}

void Engine::removeExpect(const ExpectKey& key, Nanos now) {
  const auto it = localExpects_.find(key);
  if (it == localExpects_.end() || !it->second.live) return;
  writeLocalExpectDelete(key, stamp(it->second.record.version.generation, now), now);
  reportExpects(now);
}

void Engine::removeLocalExpectsOf(const FlowKey& master, Nanos now) {
  if (localExpectLive_ == 0) return;
  std::vector<ExpectKey> keys;
  const auto [first, last] = localExpectsByMaster_.equal_range(master);
  for (auto it = first; it != last; ++it) keys.push_back(it->second);
  for (const ExpectKey& k : keys) removeExpect(k, now);
}

void Engine::setLocalExpect(LocalExpect& l, const ExpectRecord& e, Version version, Nanos now) {
  auto unindex = [this](const ExpectRecord& r) {
    const auto [first, last] = localExpectsByMaster_.equal_range(masterOf(r));
    for (auto it = first; it != last; ++it) {
      if (it->second == r.key) {
        localExpectsByMaster_.erase(it);
        return;
      }
    }
  };
  if (l.live) {
    unindex(l.record);
  } else {
    ++localExpectLive_;
  }
  l.live = true;
  l.record = e;
  l.record.version = version;
  localExpectsByMaster_.emplace(masterOf(l.record), l.record.key);
  ++counters_.expectApplied[static_cast<size_t>(replica_.apply(l.record, now))];
  enqueueExpect(l.record.key, now);
}

void Engine::writeLocalExpectDelete(const ExpectKey& key, Version version, Nanos now) {
  LocalExpect& l = localExpects_[key];
  if (l.live) {
    const auto [first, last] = localExpectsByMaster_.equal_range(masterOf(l.record));
    for (auto it = first; it != last; ++it) {
      if (it->second == key) {
        localExpectsByMaster_.erase(it);
        break;
      }
    }
    --localExpectLive_;
  }
  l.live = false;
  l.record = ExpectRecord{};
  l.record.key = key;
  l.record.version = version;
  l.tombstoneUntil = now + settings_.replica.tombstoneTtl;
  localExpectTombstones_.emplace_back(l.tombstoneUntil, key);
  ++counters_.expectApplied[static_cast<size_t>(replica_.apply(ExpectDelete{key, version}, now))];
  enqueueExpect(key, now);
}

void Engine::expireLocalExpects(Nanos now) {
  while (!forgottenExpectsExpiry_.empty() && forgottenExpectsExpiry_.front().first <= now) {
    forgottenExpects_.erase(forgottenExpectsExpiry_.front().second);
    forgottenExpectsExpiry_.pop_front();
  }
  while (!localExpectTombstones_.empty() && localExpectTombstones_.front().first <= now) {
    const ExpectKey key = localExpectTombstones_.front().second;
    localExpectTombstones_.pop_front();
    const auto it = localExpects_.find(key);
    // A queued item finds the replica's tombstone instead, which outlives this one.
    if (it != localExpects_.end() && !it->second.live && it->second.tombstoneUntil <= now) {
      localExpects_.erase(it);
    }
  }
}

void Engine::enqueueExpect(const ExpectKey& key, Nanos now) {
  if (!queuedExpects_.insert(key).second) return;  // its current state goes out once
  if (queue_.empty()) queuedSince_ = now;
  queue_.push_back(Item{FlowKey{}, nullptr, nullptr, 0, key});
}

std::optional<Record> Engine::currentExpectState(const ExpectKey& key) const {
  if (const auto it = localExpects_.find(key); it != localExpects_.end()) {
    const LocalExpect& l = it->second;
    if (l.live) return Record{l.record};
    return Record{ExpectDelete{key, l.record.version}};
  }
  if (auto x = replica_.getExpect(key)) return Record{x->record};
  if (auto v = replica_.expectTombstone(key)) return Record{ExpectDelete{key, *v}};
  return std::nullopt;
}

void Engine::handleExpect(const ExpectRecord& r, uint16_t from, Nanos now) {
  observe(r.version, now);
  if (r.version.node != settings_.node) {
    const bool fromWriter = from == r.version.node;
    if (const auto it = forgottenExpects_.find(r.key); it != forgottenExpects_.end()) {
      if (!fromWriter && r.version <= it->second) {
        ++counters_.expectRelaysBlocked;
        return;
      }
      forgottenExpects_.erase(it);  // the writer itself, or a newer write: it lives
    }
    ++counters_.expectApplied[static_cast<size_t>(replica_.apply(r, now, fromWriter))];
    return;
  }
  // In our name. Older than our state, or our state itself: merge it.
  const auto mine = localExpects_.find(r.key);
  if (mine != localExpects_.end()) {
    const LocalExpect& l = mine->second;
    const Version& held = l.record.version;
    if (r.version < held || (r.version == held && l.live && sameExpectContent(r, l.record))) {
      ++counters_.expectApplied[static_cast<size_t>(replica_.apply(r, now))];
      return;
    }
  }
  // We never wrote it (a corrupted replica, or a previous life of ours): our state again, or
  // our delete, in a higher generation so that it wins everywhere.
  ++counters_.ownerReasserts;
  uint32_t generation = r.version.generation;
  if (mine != localExpects_.end()) {
    generation = std::max(generation, mine->second.record.version.generation);
  }
  ++generation;
  if (mine != localExpects_.end() && mine->second.live) {
    const ExpectRecord state = mine->second.record;
    setLocalExpect(mine->second, state, stamp(generation, now), now);
  } else {
    writeLocalExpectDelete(r.key, stamp(generation, now), now);
  }
}

void Engine::handleExpectDelete(const ExpectDelete& d, Nanos now) {
  observe(d.version, now);
  if (d.version.node == settings_.node) {
    const auto mine = localExpects_.find(d.key);
    if (mine != localExpects_.end() && mine->second.live &&
        mine->second.record.version < d.version) {
      // A delete in our name, newer than the expectation we hold: not ours.
      ++counters_.ownerReasserts;
      const ExpectRecord state = mine->second.record;
      const uint32_t generation =
          std::max(state.version.generation, d.version.generation) + 1;
      setLocalExpect(mine->second, state, stamp(generation, now), now);
      return;
    }
  }
  ++counters_.expectApplied[static_cast<size_t>(replica_.apply(d, now))];
}

void Engine::resendExpects(const std::vector<SeqRange>& ranges, Nanos now) {
  for (const SeqRange& r : ranges) {
    for (auto it = expectLog_.lower_bound(r.first); it != expectLog_.end() && it->first <= r.last;
         ++it) {
      for (const ExpectKey& k : it->second) enqueueExpect(k, now);
      counters_.resentRecords += it->second.size();
    }
  }
}

void Engine::pruneExpectLog() {
  uint64_t floor = log_.lastSeq();
  for (const auto& [node, p] : peers_) {
    if (p.up) floor = std::min(floor, p.acked);
  }
  while (!expectLog_.empty() && expectLog_.begin()->first <= floor) {
    expectForgotten_ = std::max(expectForgotten_, expectLog_.begin()->first);
    expectLog_.erase(expectLog_.begin());
  }
}

void Engine::reportExpects(Nanos now) {
  for (const ExpectDelete& d : replica_.takeExpectsForgotten()) {
    forgottenExpects_[d.key] = d.version;
    forgottenExpectsExpiry_.emplace_back(now + settings_.replica.tombstoneTtl, d.key);
  }
  const std::vector<ExpectKey> changes = replica_.takeExpectChanges();
  if (!onExpectChange_) return;
  for (const ExpectKey& k : changes) onExpectChange_(k);
}

}  // namespace ctsync::replication
