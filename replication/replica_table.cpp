#include "replication/replica_table.hpp"

#include <algorithm>
#include <cassert>
#include <limits>
#include <tuple>

#include "table/tcp.hpp"

namespace ctsync::replication {
namespace {

// Mixing with fixed constants (murmur3's finaliser): the key hash must be the same on every
// node and in every build, which std::hash does not promise.
uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

uint64_t mixIn(uint64_t h, uint64_t word) {
  return fmix64(h ^ (word * 0x9e3779b97f4a7c15ULL)) + 0x632be59bd9b4e019ULL;
}

// Little-endian load from bytes, so the hash does not depend on the host's byte order.
uint64_t load64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

uint64_t hashTuple(uint64_t h, const table::Tuple& t) {
  h = mixIn(h, uint64_t{static_cast<uint8_t>(t.l3)} | (uint64_t{t.l4} << 8) |
                   (uint64_t{t.sport} << 16) | (uint64_t{t.dport} << 32));
  h = mixIn(h, load64(t.src.bytes.data()));
  h = mixIn(h, load64(t.src.bytes.data() + 8));
  h = mixIn(h, load64(t.dst.bytes.data()));
  return mixIn(h, load64(t.dst.bytes.data() + 8));
}

auto tupleView(const table::Tuple& t) {
  return std::make_tuple(t.src.bytes, t.dst.bytes, t.sport, t.dport, t.l3, t.l4);
}

// The fields rule 2 takes from the base record (all but key, version, sticky bits, tcpState).
auto contentView(const FlowRecord& r) {
  static const table::Tuple kNoMaster{};
  return std::make_tuple(tupleView(r.reply), r.status & ~kStickyStatus, r.tcpFlags[0],
                         r.tcpFlags[1], r.tcpScale[0], r.tcpScale[1], r.timeoutSec, r.mark,
                         r.labels, r.helper, r.master.has_value(),
                         tupleView(r.master ? *r.master : kNoMaster));
}

uint8_t moreAdvanced(uint8_t a, uint8_t b) {
  return tcpProgress(a) >= tcpProgress(b) ? a : b;
}

}  // namespace

int tcpProgress(uint8_t tcpState) {
  using table::TcpState;
  switch (static_cast<TcpState>(tcpState)) {
    case TcpState::kNone:
      return 0;
    case TcpState::kSynSent:
      return 1;
    case TcpState::kSynSent2:  // simultaneous open: both SYNs seen, SYN_RECV comes next
      return 2;
    case TcpState::kSynRecv:
      return 3;
    case TcpState::kEstablished:
      return 4;
    case TcpState::kFinWait:
      return 5;
    case TcpState::kCloseWait:
      return 6;
    case TcpState::kLastAck:
      return 7;
    case TcpState::kTimeWait:
      return 8;
    case TcpState::kClose:
      return 9;
    default:
      return tcpState;  // >= kCount (10): above every known state, still one-to-one
  }
}

uint64_t flowKeyHash(const FlowKey& key) {
  return hashTuple(mixIn(0x243f6a8885a308d3ULL, key.zone), key.orig);
}

bool flowKeyLess(const FlowKey& a, const FlowKey& b) {
  return std::make_tuple(a.zone, tupleView(a.orig)) < std::make_tuple(b.zone, tupleView(b.orig));
}

bool contentLess(const FlowRecord& a, const FlowRecord& b) {
  return contentView(a) < contentView(b);
}

const char* applyOutcomeName(ApplyOutcome o) {
  switch (o) {
    case ApplyOutcome::kInserted:
      return "inserted";
    case ApplyOutcome::kUpdated:
      return "updated";
    case ApplyOutcome::kMerged:
      return "merged";
    case ApplyOutcome::kIgnoredOlder:
      return "ignored_older";
    case ApplyOutcome::kIgnoredDuplicate:
      return "ignored_duplicate";
    case ApplyOutcome::kVersionClash:
      return "version_clash";
    case ApplyOutcome::kDeleted:
      return "deleted";
    case ApplyOutcome::kTombstoned:
      return "tombstoned";
    case ApplyOutcome::kResurrectionBlocked:
      return "resurrection_blocked";
    case ApplyOutcome::kCount:
      break;
  }
  return "unknown";
}

Nanos ReplicaFlow::remaining(Nanos now) const {
  const Nanos end = received + static_cast<Nanos>(record.timeoutSec) * table::kSecond;
  return std::max<Nanos>(0, end - now);
}

size_t ReplicaTable::NatKeyHasher::operator()(const NatKey& k) const {
  return static_cast<size_t>(flowKeyHash(FlowKey{k.reply, k.zone}));
}

ReplicaTable::ReplicaTable(const ReplicaSettings& settings)
    : settings_(settings), ranges_(settings.digestRanges) {
  assert(settings.digestRanges >= 1 && settings.digestRanges <= 65536);
  assert(settings.tombstoneTtl >= 0);
}

void ReplicaTable::reserve(size_t flows) {
  entries_.reserve(flows);
  byReply_.reserve(flows);
}

ReplicaTable::Entry& ReplicaTable::createEntry(const FlowKey& key) {
  Entry& e = entries_[key];
  e.flow.record.key = key;
  e.keyHash = flowKeyHash(key);
  e.scheduled = std::numeric_limits<Nanos>::max();
  return e;
}

ApplyResult ReplicaTable::apply(const FlowRecord& r, Nanos now) {
  const auto it = entries_.find(r.key);
  const bool fresh = it == entries_.end();
  Entry& e = fresh ? createEntry(r.key) : it->second;
  const Before b = before(e);
  FlowRecord& cur = e.flow.record;
  const Version& v = r.version;

  // Takes `r` as the base; `keep` folds in what older records of the generation contributed.
  auto takeBase = [&](bool keep) {
    const uint32_t sticky = keep ? cur.status & kStickyStatus : 0;
    const uint8_t tcp = keep ? moreAdvanced(cur.tcpState, r.tcpState) : r.tcpState;
    cur = r;
    cur.status |= sticky;
    cur.tcpState = tcp;
    e.flow.received = now;
  };

  ApplyOutcome out;
  if (!fresh && v.generation < e.generation) {
    out = ApplyOutcome::kIgnoredOlder;
  } else if (fresh || v.generation > e.generation || !e.hasUpsert) {
    if (fresh || v.generation > e.generation) {
      e.generation = v.generation;
      e.hasTombstone = false;
    }
    takeBase(false);
    e.hasUpsert = true;
    e.flow.createdHlc = v.hlc;
    e.flow.createdNode = v.node;
    out = e.hasTombstone && v <= e.tombstone
              ? ApplyOutcome::kResurrectionBlocked
              : (b.live ? ApplyOutcome::kUpdated : ApplyOutcome::kInserted);
  } else {
    const uint32_t oldStatus = cur.status;
    const uint8_t oldTcp = cur.tcpState;
    if (std::tie(v.hlc, v.node) < std::tie(e.flow.createdHlc, e.flow.createdNode)) {
      e.flow.createdHlc = v.hlc;
      e.flow.createdNode = v.node;
    }
    const bool newer = v > cur.version;
    const bool same = v == cur.version;
    const bool clash = same && (contentLess(cur, r) || contentLess(r, cur));
    if (newer || (clash && contentLess(cur, r))) {
      takeBase(true);
    } else {
      cur.status |= r.status & kStickyStatus;
      cur.tcpState = moreAdvanced(cur.tcpState, r.tcpState);
    }
    if (e.hasTombstone && cur.version <= e.tombstone) {  // still dead, whatever r brought
      out = ApplyOutcome::kResurrectionBlocked;
    } else if (newer) {
      out = b.live ? ApplyOutcome::kUpdated : ApplyOutcome::kInserted;
    } else if (clash) {
      out = ApplyOutcome::kVersionClash;
    } else if (cur.status != oldStatus || cur.tcpState != oldTcp) {
      out = ApplyOutcome::kMerged;
    } else {
      out = same ? ApplyOutcome::kIgnoredDuplicate : ApplyOutcome::kIgnoredOlder;
    }
  }
  markBulk(e, v.node);
  return {out, settle(e, b)};
}

ApplyResult ReplicaTable::apply(const FlowDelete& d, Nanos now) {
  const auto it = entries_.find(d.key);
  const bool fresh = it == entries_.end();
  Entry& e = fresh ? createEntry(d.key) : it->second;
  const Before b = before(e);
  const Version& v = d.version;

  auto raise = [&] {
    e.hasTombstone = true;
    e.tombstone = v;
    e.tombstoneUntil = now + settings_.tombstoneTtl;
  };
  ApplyOutcome out;
  if (!fresh && v.generation < e.generation) {
    out = ApplyOutcome::kIgnoredOlder;
  } else if (fresh || v.generation > e.generation) {
    e.generation = v.generation;
    e.hasUpsert = false;
    raise();
    out = b.live ? ApplyOutcome::kDeleted : ApplyOutcome::kTombstoned;
  } else if (e.hasTombstone && v <= e.tombstone) {
    out = v == e.tombstone ? ApplyOutcome::kIgnoredDuplicate : ApplyOutcome::kIgnoredOlder;
  } else {
    raise();
    const bool stillLive = e.hasUpsert && e.flow.record.version > v;
    out = !b.live     ? ApplyOutcome::kTombstoned
          : stillLive ? ApplyOutcome::kIgnoredOlder
                      : ApplyOutcome::kDeleted;
  }
  return {out, settle(e, b)};
}

// Brings the derived state (liveness, digest, NAT index, expiry queue) in line with the
// entry's merge state after a change; returns a flow that newly lost a NAT conflict.
std::optional<FlowKey> ReplicaTable::settle(Entry& e, const Before& b) {
  const FlowRecord& r = e.flow.record;
  e.live = e.hasUpsert && (!e.hasTombstone || r.version > e.tombstone);

  RangeSum& sum = ranges_[rangeOfHash(e.keyHash)];
  if (b.live) {
    sum.hash -= e.digestItem;
    --sum.flows;
    --live_;
  }
  if (e.live) {
    e.digestItem = digestItem(e);
    sum.hash += e.digestItem;
    ++sum.flows;
    ++live_;
  }

  std::optional<FlowKey> loser;
  const bool left = b.live && (!e.live || !(b.reply == r.reply));
  if (left) {
    const NatKey old{b.reply, r.key.zone};
    auto& holders = byReply_[old];
    std::erase(holders, r.key);
    if (e.flow.natShadowed) {
      e.flow.natShadowed = false;
      --shadowed_;
    }
    resolveNat(old);  // may only lift a shadow: a holder left
  }
  if (e.live) {
    const NatKey nk{r.reply, r.key.zone};
    if (!b.live || left) {
      std::vector<FlowKey>& holders = byReply_[nk];
      holders.push_back(r.key);
      if (holders.size() > 1) loser = resolveNat(nk);
    } else if (b.createdHlc != e.flow.createdHlc || b.createdNode != e.flow.createdNode) {
      loser = resolveNat(nk);  // an earlier record of this flow arrived: it may win now
    }
  }

  const Nanos d = deadline(e);
  if (d < e.scheduled) {
    e.scheduled = d;
    expiry_.push({d, r.key});
  }
  return loser;
}

std::optional<FlowKey> ReplicaTable::resolveNat(const NatKey& nk) {
  const auto git = byReply_.find(nk);
  if (git == byReply_.end()) return std::nullopt;
  const std::vector<FlowKey>& holders = git->second;
  if (holders.empty()) {
    byReply_.erase(git);
    return std::nullopt;
  }
  auto earlier = [this](const FlowKey& a, const FlowKey& b) {
    const ReplicaFlow& fa = entries_.find(a)->second.flow;
    const ReplicaFlow& fb = entries_.find(b)->second.flow;
    if (fa.createdHlc != fb.createdHlc) return fa.createdHlc < fb.createdHlc;
    if (fa.createdNode != fb.createdNode) return fa.createdNode < fb.createdNode;
    return flowKeyLess(a, b);
  };
  const FlowKey winner = *std::min_element(holders.begin(), holders.end(), earlier);
  std::optional<FlowKey> loser;
  for (const FlowKey& k : holders) {
    ReplicaFlow& f = entries_.find(k)->second.flow;
    const bool shadow = !(k == winner);
    if (shadow && !f.natShadowed) {
      ++shadowed_;
      ++stats_.natConflicts;
      if (!loser) loser = k;
    } else if (!shadow && f.natShadowed) {
      --shadowed_;
    }
    f.natShadowed = shadow;
  }
  return loser;
}

void ReplicaTable::unlink(Entry& e) {
  Before b = before(e);
  e.hasUpsert = false;
  e.hasTombstone = false;
  e.tombstoneUntil = std::numeric_limits<Nanos>::max();  // about to be erased: no timer
  settle(e, b);
}

void ReplicaTable::markBulk(Entry& e, uint16_t writer) {
  const auto it = bulks_.find(writer);
  if (it != bulks_.end()) e.sweepMark = it->second.mark;
}

Nanos ReplicaTable::deadline(const Entry& e) const {
  if (e.live) {
    return e.flow.received + static_cast<Nanos>(e.flow.record.timeoutSec) * table::kSecond;
  }
  return e.tombstoneUntil;
}

uint64_t ReplicaTable::digestItem(const Entry& e) {
  const FlowRecord& r = e.flow.record;
  uint64_t h = mixIn(e.keyHash, r.version.generation);
  h = mixIn(h, r.version.hlc);
  h = mixIn(h, r.version.node);
  return mixIn(h, uint64_t{r.status} | (uint64_t{r.tcpState} << 32));
}

ExpireResult ReplicaTable::expire(Nanos now) {
  ExpireResult res;
  while (!expiry_.empty() && expiry_.top().at <= now) {
    const Timer t = expiry_.top();
    expiry_.pop();
    const auto it = entries_.find(t.key);
    if (it == entries_.end() || it->second.scheduled != t.at) continue;  // stale item
    Entry& e = it->second;
    const Nanos d = deadline(e);
    if (d > now) {  // pushed back since: wait for the new deadline
      e.scheduled = d;
      expiry_.push({d, t.key});
      continue;
    }
    if (e.live) {
      ++res.flows;
      ++stats_.flowsExpired;
    } else {
      ++res.tombstones;
      ++stats_.tombstonesExpired;
    }
    unlink(e);
    entries_.erase(it);
  }
  return res;
}

void ReplicaTable::beginBulk(uint16_t node, uint32_t bulkId) {
  bulks_[node] = OpenBulk{bulkId, nextBulkMark_++};
}

std::optional<size_t> ReplicaTable::endBulk(uint16_t node, uint32_t bulkId) {
  const auto bit = bulks_.find(node);
  if (bit == bulks_.end() || bit->second.bulkId != bulkId) return std::nullopt;
  const uint64_t mark = bit->second.mark;
  bulks_.erase(bit);
  std::vector<FlowKey> stale;
  for (const auto& [key, e] : entries_) {
    if (e.live && e.flow.record.version.node == node && e.sweepMark != mark) stale.push_back(key);
  }
  for (const FlowKey& k : stale) {
    const auto it = entries_.find(k);
    unlink(it->second);
    entries_.erase(it);
  }
  stats_.swept += stale.size();
  return stale.size();
}

uint32_t ReplicaTable::rangeOf(const FlowKey& key) const {
  return rangeOfHash(flowKeyHash(key));
}

uint32_t ReplicaTable::rangeOfHash(uint64_t keyHash) const {
  return static_cast<uint32_t>(((keyHash >> 32) * ranges_.size()) >> 32);
}

Digest ReplicaTable::digest(uint32_t range) const {
  assert(range < ranges_.size());
  // Range r holds h with r * 2^32 <= h * R < (r + 1) * 2^32.
  const uint64_t count = ranges_.size();
  auto firstOf = [count](uint64_t r) { return ((r << 32) + count - 1) / count; };
  Digest d;
  d.rangeFirst = static_cast<uint32_t>(firstOf(range));
  d.rangeLast = static_cast<uint32_t>(firstOf(uint64_t{range} + 1) - 1);
  d.hash = ranges_[range].hash;
  d.flows = ranges_[range].flows;
  return d;
}

std::vector<Digest> ReplicaTable::digests() const {
  std::vector<Digest> all;
  all.reserve(ranges_.size());
  for (uint32_t r = 0; r < ranges_.size(); ++r) all.push_back(digest(r));
  return all;
}

RangeContents ReplicaTable::flowsInRange(uint32_t range) const {
  RangeContents out;
  for (const auto& [key, e] : entries_) {
    if (rangeOfHash(e.keyHash) != range) continue;
    if (e.live) {
      out.flows.push_back(e.flow.record);
    } else if (e.hasTombstone) {
      out.tombstones.push_back(FlowDelete{key, e.tombstone});
    }
  }
  return out;
}

std::optional<ReplicaFlow> ReplicaTable::get(const FlowKey& key) const {
  const auto it = entries_.find(key);
  if (it == entries_.end() || !it->second.live) return std::nullopt;
  return it->second.flow;
}

std::optional<Version> ReplicaTable::tombstone(const FlowKey& key) const {
  const auto it = entries_.find(key);
  if (it == entries_.end() || it->second.live || !it->second.hasTombstone) return std::nullopt;
  return it->second.tombstone;
}

}  // namespace ctsync::replication
