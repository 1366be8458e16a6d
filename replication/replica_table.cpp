#include "replication/replica_table.hpp"

#include <algorithm>
#include <array>
#include <cassert>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>

#include "replication/expect_table.hpp"
#include "replication/hash.hpp"
#include "table/tcp.hpp"

namespace ctsync::replication {
namespace {

using wirehash::hashTuple;
using wirehash::load64;
using wirehash::mixIn;

auto tupleView(const table::Tuple& t) {
  return std::make_tuple(t.src.bytes, t.dst.bytes, t.sport, t.dport, t.l3, t.l4);
}

auto seqAdjView(const SeqAdjust& a) {
  return std::make_tuple(a.correctionPos, a.offsetBefore, a.offsetAfter);
}

// The fields rule 2 takes from the base record (all but key, version, sticky bits, tcpState).
auto contentView(const FlowRecord& r) {
  static const table::Tuple kNoMaster{};
  return std::make_tuple(tupleView(r.reply), r.status & ~kStickyStatus, r.tcpFlags[0],
                         r.tcpFlags[1], r.tcpScale[0], r.tcpScale[1], r.timeoutSec, r.mark,
                         r.labels, r.helper, r.master.has_value(),
                         tupleView(r.master ? *r.master : kNoMaster), seqAdjView(r.seqAdj[0]),
                         seqAdjView(r.seqAdj[1]), r.sctpState, r.sctpVtag[0], r.sctpVtag[1],
                         r.dccpState, r.dccpRole, r.dccpHandshakeSeq);
}

// Equality of N bytes in 8-byte words (GCC calls memcmp for these sizes): for types without
// padding, where equal bytes are equal values.
template <size_t N>
bool sameBytes(const void* a, const void* b) {
  static_assert(N >= 8);
  const auto* p = static_cast<const unsigned char*>(a);
  const auto* q = static_cast<const unsigned char*>(b);
  uint64_t diff = 0;
  auto word = [&](size_t off) {
    uint64_t x, y;
    std::memcpy(&x, p + off, 8);
    std::memcpy(&y, q + off, 8);
    diff |= x ^ y;
  };
  for (size_t off = 0; off + 8 <= N; off += 8) word(off);
  if (N % 8 != 0) word(N - 8);
  return diff == 0;
}
static_assert(std::has_unique_object_representations_v<FlowKey>);
static_assert(std::has_unique_object_representations_v<table::Tuple>);

bool sameKey(const FlowKey& a, const FlowKey& b) {
  return sameBytes<sizeof(FlowKey)>(&a, &b);
}
bool sameTuple(const table::Tuple& a, const table::Tuple& b) {
  return sameBytes<sizeof(table::Tuple)>(&a, &b);
}

// contentView(a) == contentView(b), spelled out: the duplicate check on every resent record.
bool sameContent(const FlowRecord& a, const FlowRecord& b) {
  return sameTuple(a.reply, b.reply) && ((a.status ^ b.status) & ~kStickyStatus) == 0 &&
         a.tcpFlags[0] == b.tcpFlags[0] && a.tcpFlags[1] == b.tcpFlags[1] &&
         a.tcpScale[0] == b.tcpScale[0] && a.tcpScale[1] == b.tcpScale[1] &&
         a.timeoutSec == b.timeoutSec && a.mark == b.mark &&
         sameBytes<sizeof(a.labels)>(a.labels.data(), b.labels.data()) && a.helper == b.helper &&
         a.master.has_value() == b.master.has_value() &&
         (!a.master || sameTuple(*a.master, *b.master)) && a.seqAdj[0] == b.seqAdj[0] &&
         a.seqAdj[1] == b.seqAdj[1] && a.sctpState == b.sctpState &&
         a.sctpVtag[0] == b.sctpVtag[0] && a.sctpVtag[1] == b.sctpVtag[1] &&
         a.dccpState == b.dccpState && a.dccpRole == b.dccpRole &&
         a.dccpHandshakeSeq == b.dccpHandshakeSeq;
}

uint8_t moreAdvanced(uint8_t a, uint8_t b) {
  return tcpProgress(a) >= tcpProgress(b) ? a : b;
}

constexpr Nanos kNever = std::numeric_limits<Nanos>::max();
constexpr uint32_t kNone = flat::FlatIndex::kNone;

// Hash for the in-memory indexes only, so it need not be flowKeyHash (six dependent rounds,
// fixed for the wire): three independent 64x64->128 multiplications and a final one.
__extension__ using Wide = unsigned __int128;
uint64_t mum(uint64_t a, uint64_t b) {
  const Wide p = static_cast<Wide>(a) * b;
  return static_cast<uint64_t>(p) ^ static_cast<uint64_t>(p >> 64);
}

uint32_t indexHash(const table::Tuple& t, uint16_t zone) {
  uint64_t w[4];
  std::memcpy(&w[0], t.src.bytes.data(), 16);
  std::memcpy(&w[2], t.dst.bytes.data(), 16);
  const uint64_t rest = uint64_t{t.sport} | (uint64_t{t.dport} << 16) |
                        (uint64_t{static_cast<uint8_t>(t.l3)} << 32) | (uint64_t{t.l4} << 40) |
                        (uint64_t{zone} << 48);
  const uint64_t h = mum(w[0] ^ 0xa0761d6478bd642fULL, w[1] ^ 0xe7037ed1a0b428dbULL) ^
                     mum(w[2] ^ 0x8ebc6af09c88c6e3ULL, w[3] ^ 0x589965cc75374cc3ULL) ^
                     mum(rest ^ 0x1d8e4e27c47d124fULL, 0x9e3779b97f4a7c15ULL);
  return static_cast<uint32_t>(mum(h, 0xd6e8feb86659fd93ULL));
}

uint32_t indexHash(const FlowKey& k) {
  return indexHash(k.orig, k.zone);
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

uint64_t expectKeyHash(const ExpectKey& key) {
  return hashTuple(mixIn(0x13198a2e03707344ULL, key.zone), key.expected);
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

ReplicaTable::ReplicaTable(const ReplicaSettings& settings)
    : settings_(settings),
      ranges_(settings.digestRanges),
      expects_(std::make_unique<ExpectTable>(settings.tombstoneTtl, settings.digestRanges,
                                             stats_)) {
  assert(settings.digestRanges >= 1 && settings.digestRanges <= 65536);
  assert(settings.tombstoneTtl >= 0);
}

ReplicaTable::~ReplicaTable() = default;

ApplyOutcome ReplicaTable::apply(const ExpectRecord& r, Nanos now, bool fromWriter) {
  uint32_t mark = 0;
  if (fromWriter && !bulks_.empty()) {
    const auto it = bulks_.find(r.version.node);
    if (it != bulks_.end()) mark = it->second.mark;
  }
  const FlowKey master{r.master, r.key.zone};
  const uint32_t id = find(master, indexHash(master));
  return expects_->apply(r, now, mark, id != kNone && entries_[id].live);
}

ApplyOutcome ReplicaTable::apply(const ExpectDelete& d, Nanos now) {
  return expects_->apply(d, now);
}

std::optional<ReplicaExpect> ReplicaTable::getExpect(const ExpectKey& key) const {
  return expects_->get(key);
}

std::optional<Version> ReplicaTable::expectTombstone(const ExpectKey& key) const {
  return expects_->tombstone(key);
}

void ReplicaTable::forEachExpect(const std::function<void(const ReplicaExpect&)>& f) const {
  expects_->forEach(f);
}

size_t ReplicaTable::expectCount() const {
  return expects_->size();
}

size_t ReplicaTable::expectTombstoneCount() const {
  return expects_->tombstoneCount();
}

std::vector<ExpectKey> ReplicaTable::takeExpectChanges() {
  return expects_->takeChanges();
}

std::vector<ExpectDelete> ReplicaTable::takeExpectsForgotten() {
  return expects_->takeForgotten();
}

void ReplicaTable::reserve(size_t flows) {
  entries_.reserve(flows);
  byKey_.reserve(flows);
  byReply_.reserve(flows);
}

uint32_t ReplicaTable::find(const FlowKey& key, uint32_t keyIndexHash) const {
  return byKey_.find(keyIndexHash,
                     [&](uint32_t id) { return sameKey(entries_[id].flow.record.key, key); });
}

uint32_t ReplicaTable::createEntry(const FlowKey& key, uint32_t keyIndexHash) {
  const uint32_t id = entries_.allocate();
  entries_.prefetchAllocation(3);  // a few inserts ahead: lines in cache when they come
  Entry& e = entries_[id];
  e.inUse = true;
  e.flow.record.key = key;
  e.keyHash = flowKeyHash(key);
  e.scheduled = kNever;
  byKey_.insert(keyIndexHash, id);
  return id;
}

// Forgets an entry entirely (expiry, sweeps): no tombstone is left. Its timers go stale.
void ReplicaTable::removeEntry(uint32_t id) {
  unlink(id);
  Entry& e = entries_[id];
  byKey_.erase(indexHash(e.flow.record.key), id);
  e.inUse = false;
  entries_.free(id);
}

ApplyResult ReplicaTable::apply(const FlowRecord& r, Nanos now, bool fromWriter) {
  return applyHashed(r, indexHash(r.key), now, fromWriter);
}

std::vector<ApplyResult> ReplicaTable::applyBatch(std::span<const FlowRecord> records, Nanos now,
                                                  bool fromWriter) {
  // Two stages run ahead of the record being applied: 2 * kAhead records ahead, the fetch of
  // its key's index slot starts; kAhead ahead, that slot (arrived by then) names the entry to
  // fetch or, for a new key, the reply index slot the insertion will need.
  constexpr size_t kAhead = 8;
  constexpr size_t kRing = 32;  // > 2 * kAhead: a hash lives from its first stage to its apply
  static_assert(kRing > 2 * kAhead);
  std::array<uint32_t, kRing> hashes;
  const size_t n = records.size();
  auto fetchSlot = [&](size_t j) {
    hashes[j % kRing] = indexHash(records[j].key);
    byKey_.prefetch(hashes[j % kRing]);
  };
  auto fetchEntry = [&](size_t j) {
    // The first id under the hash is nearly always the key's: stop there, so that the scan
    // does not run on into a slot line nobody fetched.
    const uint32_t id = byKey_.find(hashes[j % kRing], [](uint32_t) { return true; });
    if (id != kNone) {
      prefetchEntry(id);
    } else {
      byReply_.prefetch(indexHash(records[j].reply, records[j].key.zone));
    }
  };
  for (size_t j = 0; j < std::min(n, 2 * kAhead); ++j) fetchSlot(j);
  for (size_t j = 0; j < std::min(n, kAhead); ++j) fetchEntry(j);
  std::vector<ApplyResult> results;
  results.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (i + 2 * kAhead < n) fetchSlot(i + 2 * kAhead);
    if (i + kAhead < n) fetchEntry(i + kAhead);
    results.push_back(applyHashed(records[i], hashes[i % kRing], now, fromWriter));
  }
  return results;
}

void ReplicaTable::prefetchEntry(uint32_t id) const {
  flat::prefetchForWrite(&entries_[id], sizeof(Entry));
}

ApplyResult ReplicaTable::applyHashed(const FlowRecord& r, uint32_t keyIndexHash, Nanos now,
                                      bool fromWriter) {
  uint32_t id = find(r.key, keyIndexHash);
  const bool fresh = id == kNone;
  if (fresh) id = createEntry(r.key, keyIndexHash);
  Entry& e = entries_[id];
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
    out = e.hasTombstone && v <= e.tombstone()
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
    const bool clash = same && !sameContent(cur, r);
    if (newer || (clash && contentLess(cur, r))) {
      takeBase(true);
    } else {
      // Stores only when something changes: a resent record must not dirty the entry's lines.
      const uint32_t status = cur.status | (r.status & kStickyStatus);
      const uint8_t tcp = moreAdvanced(cur.tcpState, r.tcpState);
      if (status != oldStatus) cur.status = status;
      if (tcp != oldTcp) cur.tcpState = tcp;
    }
    if (e.hasTombstone && cur.version <= e.tombstone()) {  // still dead, whatever r brought
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
  if (fromWriter) markBulk(e, v.node);
  const bool unchanged =
      (out == ApplyOutcome::kIgnoredDuplicate || out == ApplyOutcome::kIgnoredOlder) &&
      b.createdHlc == e.flow.createdHlc && b.createdNode == e.flow.createdNode;
  if (unchanged) return {out, std::nullopt};  // nothing derived can have changed
  return {out, settle(id, b, now)};
}

ApplyResult ReplicaTable::apply(const FlowDelete& d, Nanos now) {
  const uint32_t keyIndexHash = indexHash(d.key);
  uint32_t id = find(d.key, keyIndexHash);
  const bool fresh = id == kNone;
  if (fresh) id = createEntry(d.key, keyIndexHash);
  Entry& e = entries_[id];
  const Before b = before(e);
  const Version& v = d.version;

  auto raise = [&] {
    e.hasTombstone = true;
    e.tombstoneHlc = v.hlc;
    e.tombstoneNode = v.node;
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
  } else if (e.hasTombstone && v <= e.tombstone()) {
    out = v == e.tombstone() ? ApplyOutcome::kIgnoredDuplicate : ApplyOutcome::kIgnoredOlder;
  } else {
    raise();
    const bool stillLive = e.hasUpsert && e.flow.record.version > v;
    out = !b.live     ? ApplyOutcome::kTombstoned
          : stillLive ? ApplyOutcome::kIgnoredOlder
                      : ApplyOutcome::kDeleted;
  }
  return {out, settle(id, b, now)};
}

// Brings the derived state (liveness, digest, NAT index, expiry timers) in line with the
// entry's merge state after a change; returns a flow that newly lost a NAT conflict.
std::optional<FlowKey> ReplicaTable::settle(uint32_t id, const Before& b, Nanos now) {
  Entry& e = entries_[id];
  const FlowRecord& r = e.flow.record;
  e.live = e.hasUpsert && (!e.hasTombstone || r.version > e.tombstone());
  // A master's expectations follow its life (one lookup, and only while there are any).
  if (b.live != e.live && expects_->watchesAny()) {
    if (e.live) {
      expects_->masterUp(r.key);
    } else {
      expects_->masterDown(r.key);
    }
  }

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
  const uint16_t zone = r.key.zone;
  const bool left = b.live && (!e.live || !sameTuple(b.reply, r.reply));
  if (left) {
    byReply_.erase(e.replyHash, id);
    if (e.flow.natShadowed) {
      e.flow.natShadowed = false;
      --shadowed_;
    }
    resolveNat(b.reply, zone, e.replyHash);  // may only lift a shadow: a holder left
  }
  if (e.live) {
    if (!b.live || left) {
      e.replyHash = indexHash(r.reply, zone);
      bool shared = false;
      byReply_.forEach(e.replyHash, [&](uint32_t other) {
        const FlowRecord& o = entries_[other].flow.record;
        shared = shared || (sameTuple(o.reply, r.reply) && o.key.zone == zone);
      });
      byReply_.insert(e.replyHash, id);
      if (shared) loser = resolveNat(r.reply, zone, e.replyHash);
    } else if (b.createdHlc != e.flow.createdHlc || b.createdNode != e.flow.createdNode) {
      loser = resolveNat(r.reply, zone, e.replyHash);  // an earlier record arrived: may win now
    }
  }

  const Nanos d = deadline(e);
  if (d < e.scheduled) {
    e.scheduled = d;
    expiry_.push({d, id}, now);
    // Timers pushed back or orphaned pile up until their time; past twice the entries, start
    // over from the entries' own deadlines.
    if (expiry_.size() > 2 * entries_.size() + 1024) rebuildExpiry(now);
  }
  return loser;
}

void ReplicaTable::rebuildExpiry(Nanos now) {
  expiry_.clear();
  entries_.forEach([&](uint32_t id, const Entry& e) {
    if (e.inUse && e.scheduled != kNever) expiry_.push({e.scheduled, id}, now);
  });
}

// Among the live flows holding (reply, zone) the one with the smallest (creator, key) wins;
// shadows the others and lifts the winner's shadow. Returns a flow that newly lost.
std::optional<FlowKey> ReplicaTable::resolveNat(const table::Tuple& reply, uint16_t zone,
                                                uint32_t hash) {
  auto holds = [&](const Entry& c) {
    return sameTuple(c.flow.record.reply, reply) && c.flow.record.key.zone == zone;
  };
  auto earlier = [](const Entry& a, const Entry& b) {
    const ReplicaFlow& fa = a.flow;
    const ReplicaFlow& fb = b.flow;
    if (fa.createdHlc != fb.createdHlc) return fa.createdHlc < fb.createdHlc;
    if (fa.createdNode != fb.createdNode) return fa.createdNode < fb.createdNode;
    return flowKeyLess(fa.record.key, fb.record.key);
  };
  uint32_t winner = kNone;
  byReply_.forEach(hash, [&](uint32_t id) {
    const Entry& c = entries_[id];
    if (holds(c) && (winner == kNone || earlier(c, entries_[winner]))) winner = id;
  });
  if (winner == kNone) return std::nullopt;
  std::optional<FlowKey> loser;
  byReply_.forEach(hash, [&](uint32_t id) {
    Entry& c = entries_[id];
    if (!holds(c)) return;
    ReplicaFlow& f = c.flow;
    const bool shadow = id != winner;
    if (shadow && !f.natShadowed) {
      ++shadowed_;
      ++stats_.natConflicts;
      if (!loser) loser = f.record.key;
    } else if (!shadow && f.natShadowed) {
      --shadowed_;
      shadowLifted_.push_back(f.record.key);
    }
    f.natShadowed = shadow;
  });
  return loser;
}

void ReplicaTable::unlink(uint32_t id) {
  Entry& e = entries_[id];
  const Before b = before(e);
  e.hasUpsert = false;
  e.hasTombstone = false;
  e.tombstoneUntil = kNever;  // about to be removed: no timer
  settle(id, b, 0);
}

void ReplicaTable::markBulk(Entry& e, uint16_t writer) {
  if (bulks_.empty()) return;
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
  h = mixIn(h, uint64_t{r.status} | (uint64_t{r.tcpState} << 32));
  // The rest of the content too: a replica whose record was changed behind the protocol's back
  // (same version, other content) must show up as different.
  h = hashTuple(h, r.reply);
  h = mixIn(h, uint64_t{r.tcpFlags[0]} | (uint64_t{r.tcpFlags[1]} << 8) |
                   (uint64_t{r.tcpScale[0]} << 16) | (uint64_t{r.tcpScale[1]} << 24) |
                   (uint64_t{r.helper} << 32));
  h = mixIn(h, uint64_t{r.timeoutSec} | (uint64_t{r.mark} << 32));
  h = mixIn(h, load64(r.labels.data()));
  h = mixIn(h, load64(r.labels.data() + 8));
  if (r.master) h = hashTuple(mixIn(h, 1), *r.master);
  // Mixed in only when set, so that the digests of flows without them stay what they were.
  for (uint64_t dir = 0; dir < 2; ++dir) {
    const SeqAdjust& a = r.seqAdj[dir];
    if (a == SeqAdjust{}) continue;
    h = mixIn(h, 2 + dir);
    h = mixIn(h, uint64_t{a.correctionPos} |
                     (uint64_t{static_cast<uint32_t>(a.offsetBefore)} << 32));
    h = mixIn(h, static_cast<uint32_t>(a.offsetAfter));
  }
  if ((r.sctpState | r.sctpVtag[0] | r.sctpVtag[1]) != 0) {
    h = mixIn(mixIn(h, 4), uint64_t{r.sctpState} << 32 | r.sctpVtag[0]);
    h = mixIn(h, r.sctpVtag[1]);
  }
  if ((r.dccpState | r.dccpRole | r.dccpHandshakeSeq) != 0) {
    h = mixIn(mixIn(h, 5), uint64_t{r.dccpState} | (uint64_t{r.dccpRole} << 8));
    h = mixIn(h, r.dccpHandshakeSeq);
  }
  return h;
}

ExpireResult ReplicaTable::expire(Nanos now, std::vector<FlowDelete>* expiredFlows) {
  ExpireResult res;
  expects_->expire(now);
  expiry_.popDue(now, [&](const flat::DeadlineWheel::Item& t) {
    // A timer is current iff its entry is in use and scheduled at its time. A stale one of an
    // earlier occupant of the slot may match too: then both are due and either does the same.
    Entry& e = entries_[t.id];
    if (!e.inUse || e.scheduled != t.at) return;
    const Nanos d = deadline(e);
    if (d > now) {  // pushed back since: wait for the new deadline
      e.scheduled = d;
      expiry_.push({d, t.id}, now);
      return;
    }
    if (e.live) {
      ++res.flows;
      ++stats_.flowsExpired;
      if (expiredFlows != nullptr) {
        expiredFlows->push_back({e.flow.record.key, e.flow.record.version});
      }
    } else {
      ++res.tombstones;
      ++stats_.tombstonesExpired;
    }
    removeEntry(t.id);
  });
  return res;
}

void ReplicaTable::beginBulk(uint16_t node, uint32_t bulkId, uint64_t startHlc) {
  const auto [it, opened] = bulks_.try_emplace(node, OpenBulk{bulkId, 0, startHlc});
  if (!opened && it->second.bulkId == bulkId) return;  // BulkBegin of the next datagram
  it->second = OpenBulk{bulkId, nextBulkMark_, startHlc};
  if (++nextBulkMark_ == 0) nextBulkMark_ = 1;  // 0 is every entry's mark before any bulk
}

std::optional<size_t> ReplicaTable::endBulk(uint16_t node, uint32_t bulkId,
                                            std::vector<FlowDelete>* removed) {
  const auto bit = bulks_.find(node);
  if (bit == bulks_.end() || bit->second.bulkId != bulkId) return std::nullopt;
  const uint32_t mark = bit->second.mark;
  const uint64_t startHlc = bit->second.startHlc;
  bulks_.erase(bit);
  // Removing frees slab slots and moves nothing, so the scan may remove as it goes.
  size_t swept = 0;
  for (uint32_t id = 0; id < entries_.end(); ++id) {
    const Entry& e = entries_[id];
    if (e.inUse && e.live && e.flow.record.version.node == node && e.sweepMark != mark &&
        e.flow.record.version.hlc < startHlc) {
      if (removed != nullptr) removed->push_back({e.flow.record.key, e.flow.record.version});
      removeEntry(id);
      ++swept;
    }
  }
  stats_.swept += swept;
  expects_->sweep(node, mark, startHlc);
  return swept;
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
  const auto [expectHash, expects] = expects_->rangeSum(range);
  d.hash = ranges_[range].hash + expectHash;
  d.flows = ranges_[range].flows + expects;
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
  entries_.forEach([&](uint32_t, const Entry& e) {
    if (!e.inUse || rangeOfHash(e.keyHash) != range) return;
    if (e.live) {
      out.flows.push_back(e.flow.record);
    } else if (e.hasTombstone) {
      out.tombstones.push_back(FlowDelete{e.flow.record.key, e.tombstone()});
    }
  });
  expects_->collectRange(range, out);
  return out;
}

std::optional<ReplicaFlow> ReplicaTable::get(const FlowKey& key) const {
  const uint32_t id = find(key, indexHash(key));
  if (id == kNone || !entries_[id].live) return std::nullopt;
  return entries_[id].flow;
}

std::optional<Version> ReplicaTable::tombstone(const FlowKey& key) const {
  const uint32_t id = find(key, indexHash(key));
  if (id == kNone || entries_[id].live || !entries_[id].hasTombstone) return std::nullopt;
  return entries_[id].tombstone();
}

size_t ReplicaTable::memoryBytes() const {
  return entries_.memoryBytes() + byKey_.memoryBytes() + byReply_.memoryBytes() +
         expiry_.memoryBytes() + ranges_.capacity() * sizeof(RangeSum) +
         bulks_.size() * (sizeof(OpenBulk) + 32);
}

}  // namespace ctsync::replication
