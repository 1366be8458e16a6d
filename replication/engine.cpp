#include "replication/engine.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <utility>

namespace ctsync::replication {
namespace {

// A queue this long fills a datagram (about 38 IPv4 flows fit in 1432 bytes): send it now.
constexpr size_t kFullQueue = 40;

// Bulk ids differ between boot epochs, so a receiver never mistakes a new life's first bulk
// for a half-received bulk of the previous one.
uint32_t firstBulkId(uint64_t epoch) {
  const auto id = static_cast<uint32_t>(epoch ^ (epoch >> 32) ^ (epoch >> 17));
  return id == 0 ? 1 : id;
}

bool sameContent(const FlowRecord& a, const FlowRecord& b) {
  return !contentLess(a, b) && !contentLess(b, a);
}

bool contains(const std::vector<SeqRange>& ranges, uint64_t seq) {
  return std::any_of(ranges.begin(), ranges.end(),
                     [seq](const SeqRange& r) { return r.first <= seq && seq <= r.last; });
}

// The parts of `ranges` above `floor`.
std::vector<SeqRange> above(const std::vector<SeqRange>& ranges, uint64_t floor) {
  std::vector<SeqRange> out;
  for (const SeqRange& r : ranges) {
    if (r.last > floor) out.push_back({std::max(r.first, floor + 1), r.last});
  }
  return out;
}

}  // namespace

Engine::Engine(const EngineSettings& settings, const Key& key, SendFn send, Nanos now)
    : settings_(settings),
      send_(std::move(send)),
      sealer_(key, settings.authMode),
      opener_(key, settings.clusterId, settings.authMode),
      hlc_(settings.hlcMaxForwardMs),
      replica_(settings.replica),
      log_(settings.resendLogFlows),
      builder_(settings.maxDatagramBytes - Sealer::overhead(settings.authMode)),
      nextBulkId_(firstBulkId(settings.bootEpoch)),
      aliveAt_(now),
      nextDigest_(now + settings.digestInterval),
      tokens_(static_cast<double>(settings.paceBurstBytes)),
      tokensAt_(now) {
  assert(settings.bootEpoch != 0);
  if (settings.expectedFlows != 0) {
    replica_.reserve(settings.expectedFlows);
    local_.reserve(settings.expectedFlows);
  }
}

// ---- Local state ------------------------------------------------------------------------

uint64_t Engine::wallMs(Nanos now) const {
  const Nanos wall = now + settings_.wallClockOffset;
  return wall <= 0 ? 0 : static_cast<uint64_t>(wall / table::kMillisecond);
}

Version Engine::stamp(uint32_t generation, Nanos now) {
  return Version{generation, hlc_.now(wallMs(now)), settings_.node};
}

std::optional<FlowRecord> Engine::local(const FlowKey& key) const {
  const Local* l = local_.find(key);
  if (l == nullptr || !l->live) return std::nullopt;
  return l->record;
}

void Engine::upsert(const FlowRecord& flow, Nanos now) {
  auto [l, fresh] = local_.tryEmplace(flow.key);
  uint32_t generation = flow.version.generation;
  if (!fresh) {
    const uint32_t held = l->record.version.generation;
    // A flow created again after its delete is a new life: its sticky flags start afresh.
    generation = std::max(generation, l->live ? held : held + 1);
  }
  setLocal(*l, flow, stamp(generation, now), now);
  reportExpects(now);  // a master came: its expectations may be committed now
}

void Engine::remove(const FlowKey& key, Nanos now) {
  const Local* l = local_.find(key);
  if (l == nullptr || !l->live) return;
  // Its expectations go first, as deletes of their own: every replica drops them with the
  // master anyway, but a delete is what stops them for a node that missed the master's.
  removeLocalExpectsOf(key, now);
  writeLocalDelete(key, stamp(l->record.version.generation, now), now);
  reportExpects(now);
}

void Engine::adoptAll(Nanos now) {
  std::vector<FlowRecord> foreign;
  replica_.forEach([&](const ReplicaFlow& f) {
    if (f.record.version.node != settings_.node && !f.natShadowed) foreign.push_back(f.record);
  });
  for (FlowRecord& r : foreign) {
    r.version = stamp(r.version.generation, now);
    writeLocal(std::move(r), now);
  }
  std::vector<ExpectRecord> expects;
  replica_.forEachExpect([&](const ReplicaExpect& x) {
    if (x.record.version.node != settings_.node) expects.push_back(x.record);
  });
  for (const ExpectRecord& e : expects) {
    setLocalExpect(localExpects_[e.key], e, stamp(e.version.generation, now), now);
  }
  reportExpects(now);
}

void Engine::writeLocal(FlowRecord record, Nanos now) {
  const Version version = record.version;
  setLocal(*local_.tryEmplace(record.key).first, record, version, now);
}

void Engine::setLocal(Local& l, const FlowRecord& record, Version version, Nanos now) {
  if (!l.live) ++localLive_;
  l.live = true;
  l.record = record;
  l.record.version = version;
  countApply(l.record.key, replica_.apply(l.record, now));
  enqueueLocal(l, now);
}

void Engine::writeLocalDelete(const FlowKey& key, Version version, Nanos now) {
  Local& l = *local_.tryEmplace(key).first;
  if (l.live) --localLive_;
  l.live = false;
  l.record = FlowRecord{};
  l.record.key = key;
  l.record.version = version;
  l.tombstoneUntil = now + settings_.replica.tombstoneTtl;
  localTombstones_.emplace_back(l.tombstoneUntil, key);
  countApply(key, replica_.apply(FlowDelete{key, version}, now));
  enqueueLocal(l, now);
}

void Engine::forget(const std::vector<FlowDelete>& removed, Nanos now) {
  for (const FlowKey& k : replica_.takeShadowLifted()) {
    if (onReplicaChange_) onReplicaChange_(k);
  }
  for (const FlowDelete& d : removed) {
    if (onReplicaChange_) onReplicaChange_(d.key);
    swept_[d.key] = d.version;
    sweptExpiry_.emplace_back(now + settings_.replica.tombstoneTtl, d.key);
  }
}

void Engine::expireLocal(Nanos now) {
  while (!sweptExpiry_.empty() && sweptExpiry_.front().first <= now) {
    swept_.erase(sweptExpiry_.front().second);
    sweptExpiry_.pop_front();
  }
  while (!localTombstones_.empty() && localTombstones_.front().first <= now) {
    const FlowKey key = localTombstones_.front().second;
    localTombstones_.pop_front();
    const Local* l = local_.find(key);
    if (l != nullptr && !l->live && l->tombstoneUntil <= now) {
      if (l->queued) {
        // An entry still queued stays until its item went out (the item points to it).
        localTombstones_.emplace_back(now + table::kSecond, key);
      } else {
        local_.erase(key);
      }
    }
  }
}

Record Engine::stateOf(const Local& l) {
  if (l.live) return Record{l.record};
  return Record{FlowDelete{l.record.key, l.record.version}};
}

std::optional<Record> Engine::currentState(const FlowKey& key) const {
  if (const Local* l = local_.find(key)) return stateOf(*l);
  if (auto f = replica_.get(key)) return Record{f->record};
  if (auto v = replica_.tombstone(key)) return Record{FlowDelete{key, *v}};
  return std::nullopt;
}

// ---- Queues ------------------------------------------------------------------------------

// A key already queued is not queued again: its current state goes out once.
void Engine::enqueueLocal(Local& l, Nanos now) {
  if (l.queued) return;
  l.queued = true;
  if (queue_.empty()) queuedSince_ = now;
  queue_.push_back(Item{l.record.key, &l, nullptr, 0, std::nullopt});
}

void Engine::enqueueKey(const FlowKey& key, Nanos now) {
  if (Local* l = local_.find(key)) {
    enqueueLocal(*l, now);
    return;
  }
  if (!queued_.insert(key).second) return;
  if (queue_.empty()) queuedSince_ = now;
  queue_.push_back(Item{key, nullptr, nullptr, 0, std::nullopt});
}

void Engine::enqueueRecord(Record record, Nanos now, uint16_t coverFor) {
  if (queue_.empty()) queuedSince_ = now;
  queue_.push_back(
      Item{FlowKey{}, nullptr, std::make_unique<Record>(std::move(record)), coverFor, std::nullopt});
}

void Engine::enqueueControl(Record record) {
  control_.push_back(std::move(record));
}

// ---- Receiving ---------------------------------------------------------------------------

Engine::Peer& Engine::peer(uint16_t node, Nanos now) {
  auto [it, fresh] = peers_.try_emplace(node);
  Peer& p = it->second;
  if (fresh) p.node = node;
  if (!p.up) {
    p.up = true;
    log_.addPeer(node);
  }
  p.lastHeard = now;
  return p;
}

void Engine::receive(std::span<const uint8_t> datagram, Nanos now) {
  auto opened = opener_.open(datagram);
  if (const auto* reason = std::get_if<DropReason>(&opened)) {
    ++counters_.authDrops[static_cast<size_t>(*reason)];
    return;
  }
  const Opened& o = std::get<Opened>(opened);
  if (o.header.node == settings_.node) {
    ++counters_.ownDatagrams;
    return;
  }
  auto decoded = decode(o.payload);
  if (const auto* error = std::get_if<DecodeError>(&decoded)) {
    ++counters_.decodeDrops[static_cast<size_t>(*error)];
    return;
  }
  const Decoded& d = std::get<Decoded>(decoded);
  if (d.header.node != o.header.node || d.header.clusterId != o.header.clusterId ||
      d.header.bootEpoch != o.header.epoch) {
    ++counters_.headerMismatch;
    return;
  }

  Peer& p = peer(d.header.node, now);
  const uint64_t previousEpoch = p.in.epoch();
  const auto result = d.header.seq != 0 ? p.in.receive(d.header.bootEpoch, d.header.seq)
                                        : p.in.observeEpoch(d.header.bootEpoch);
  if (result == InboundSequence::Result::kStale) {
    ++counters_.staleDatagrams;
    return;
  }
  if (result == InboundSequence::Result::kDuplicate) {
    ++counters_.duplicateDatagrams;
    return;
  }
  ++counters_.datagramsReceived;
  counters_.bytesReceived += datagram.size();
  if (result == InboundSequence::Result::kRestart) {
    // A new life of the sender: whatever it knew of us and we of its stream is gone.
    p.acked = 0;
    p.nackAt = 0;
    p.nackBackoff = 0;
    p.nackedUpTo = 0;
    p.answeredUpTo = 0;
    p.coverSeq = 0;
    p.bulkOpen.reset();
    p.lastBulkId.reset();
    p.sweepPending.reset();
    if (previousEpoch != 0) {
      // Its old flows may be stale here: ask for its table, the bulk's sweep removes the rest.
      ++counters_.peerRestarts;
      p.resyncWanted = true;
      p.resyncAt = now;
    }
    // A first contact needs nothing special: what came before its first datagram we received
    // is a gap like any other, and the sender resends or bulks it. Tell it our last sequence
    // now, so it finds its own gap in our stream without waiting for our next Alive.
    aliveAt_ = std::min(aliveAt_, now);
  }
  if (d.header.seq != 0 && p.ackAt == 0) p.ackAt = now + settings_.ackDelay;

  std::vector<Digest> digests;
  for (const Record& r : d.records) handleRecord(p, r, now, digests);
  if (!digests.empty()) handleDigests(p, digests, now);
  reportExpects(now);
  if (p.in.complete()) return;
  if (p.in.highestMissing() > p.nackedUpTo) {
    // A gap we have not asked for yet: ask soon (after a grace for reordering).
    if (p.nackAt == 0 || p.nackAt > now + settings_.nackDelay) {
      if (p.nackAt == 0) ++counters_.gaps;
      p.nackAt = now + settings_.nackDelay;
      if (p.nackBackoff == 0) p.nackBackoff = settings_.nackRetry;
    }
  } else if (d.header.seq != 0 && p.nackAt != 0) {
    // Only gaps we asked for, and the sender is sending: its answer is probably on the way.
    p.nackAt = std::max(
        p.nackAt, std::min(now + settings_.nackRetry, p.lastNackAt + 4 * settings_.nackRetry));
  }
}

void Engine::handleRecord(Peer& p, const Record& record, Nanos now, std::vector<Digest>& digests) {
  std::visit(
      [&](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, FlowRecord>) {
          ++counters_.upsertsReceived;
          handleUpsert(r, p.node, now);
        } else if constexpr (std::is_same_v<T, FlowDelete>) {
          ++counters_.deletesReceived;
          handleDelete(r, now);
        } else if constexpr (std::is_same_v<T, Ack>) {
          if (r.sender != settings_.node || r.epoch != settings_.bootEpoch) return;
          ++counters_.acksReceived;
          p.acked = std::max(p.acked, std::min(r.cumulative, log_.lastSeq()));
          log_.acked(p.node, r.cumulative);
        } else if constexpr (std::is_same_v<T, Nack>) {
          if (r.sender != settings_.node || r.epoch != settings_.bootEpoch) return;
          handleNack(p, r, now);
        } else if constexpr (std::is_same_v<T, Alive>) {
          p.in.alive(p.in.epoch(), r.lastSeq);
          // Answer every Alive with an Ack, so a lost Ack does not hold the sender's log.
          if (p.ackAt == 0) p.ackAt = now + settings_.ackDelay;
        } else if constexpr (std::is_same_v<T, ResyncRequest>) {
          if (r.sender != settings_.node) return;
          ++counters_.resyncRequestsReceived;
          startBulk(now);
        } else if constexpr (std::is_same_v<T, BulkBegin>) {
          if (p.bulkOpen == r.bulkId) return;
          // Bulk ids grow within an epoch: a late datagram of an earlier bulk must not reopen
          // it (that would throw away the marks of the bulk now open).
          if (p.lastBulkId && static_cast<int32_t>(r.bulkId - *p.lastBulkId) <= 0) return;
          p.lastBulkId = r.bulkId;
          replica_.beginBulk(p.node, r.bulkId, r.startHlc);
          p.bulkOpen = r.bulkId;
          p.bulkOpenedAt = now;
          p.sweepPending.reset();
          p.resyncWanted = false;
        } else if constexpr (std::is_same_v<T, BulkEnd>) {
          if (p.bulkOpen != r.bulkId) return;
          ++counters_.bulksReceived;
          p.sweepPending = r.bulkId;  // once every datagram up to here has arrived
        } else if constexpr (std::is_same_v<T, Digest>) {
          digests.push_back(r);
        } else if constexpr (std::is_same_v<T, ExpectRecord>) {
          ++counters_.expectUpsertsReceived;
          handleExpect(r, p.node, now);
        } else if constexpr (std::is_same_v<T, ExpectDelete>) {
          ++counters_.expectDeletesReceived;
          handleExpectDelete(r, now);
        } else {
          static_assert(std::is_same_v<T, Covered>);
          p.in.cover(r.ranges);
        }
      },
      record);
}

void Engine::countApply(const FlowKey& key, const ApplyResult& r) {
  ++counters_.applied[static_cast<size_t>(r.outcome)];
  if (r.natLoser && onNatConflict_) onNatConflict_(*r.natLoser);
  const std::vector<FlowKey> lifted = replica_.takeShadowLifted();
  if (!onReplicaChange_) return;
  switch (r.outcome) {
    case ApplyOutcome::kInserted:
    case ApplyOutcome::kUpdated:
    case ApplyOutcome::kMerged:
    case ApplyOutcome::kVersionClash:
    case ApplyOutcome::kDeleted:
      onReplicaChange_(key);
      break;
    default:
      break;
  }
  if (r.natLoser) onReplicaChange_(*r.natLoser);
  for (const FlowKey& k : lifted) onReplicaChange_(k);
}

void Engine::observe(const Version& v, Nanos now) {
  const uint64_t rejectedBefore = hlc_.rejected();
  hlc_.observe(v.hlc, wallMs(now));
  counters_.hlcRejected += hlc_.rejected() - rejectedBefore;
}

// Writes our state again in generation `generation` (above the one of a record in our name
// that we never wrote), so that it supersedes that record everywhere.
void Engine::reassert(FlowRecord state, uint32_t generation, Nanos now) {
  ++counters_.ownerReasserts;
  state.version = stamp(generation, now);
  writeLocal(std::move(state), now);
}

void Engine::handleUpsert(const FlowRecord& r, uint16_t from, Nanos now) {
  observe(r.version, now);
  if (r.version.node != settings_.node) {
    const bool fromWriter = from == r.version.node;
    if (!swept_.empty()) {
      const auto it = swept_.find(r.key);
      if (it != swept_.end()) {
        if (!fromWriter && r.version <= it->second) {
          ++counters_.sweptRelaysBlocked;
          return;
        }
        swept_.erase(it);  // the writer itself, or a newer write: the flow lives
      }
    }
    countApply(r.key, replica_.apply(r, now, fromWriter));
    return;
  }
  // A record in our name. Older than our state, or our state itself: harmless, merge it.
  Local* const mine = local_.find(r.key);
  if (mine != nullptr) {
    const Local& l = *mine;
    const Version& held = l.record.version;
    if (r.version < held || (r.version == held && l.live && sameContent(r, l.record))) {
      countApply(r.key, replica_.apply(r, now));
      return;
    }
  }
  // We never wrote this (a corrupted replica, or a previous life of ours): our state, or our
  // delete if we have no such flow, in a new generation.
  uint32_t generation = r.version.generation;
  if (mine != nullptr) generation = std::max(generation, mine->record.version.generation);
  ++generation;
  if (mine != nullptr && mine->live) {
    reassert(mine->record, generation, now);
  } else {
    ++counters_.ownerReasserts;
    writeLocalDelete(r.key, stamp(generation, now), now);
  }
}

void Engine::handleDelete(const FlowDelete& d, Nanos now) {
  observe(d.version, now);
  if (d.version.node == settings_.node) {
    const Local* l = local_.find(d.key);
    if (l != nullptr && l->live && l->record.version < d.version) {
      // A delete in our name, newer than the live flow we hold: not ours.
      reassert(l->record, std::max(l->record.version.generation, d.version.generation) + 1, now);
      return;
    }
  }
  countApply(d.key, replica_.apply(d, now));
}

void Engine::handleNack(Peer& p, const Nack& n, Nanos now) {
  ++counters_.nacksReceived;
  // While our last answer to this peer is on its way (queued, or sent recently and not asked
  // for, so not seen lost), ranges we answered are not answered again: a retry sent before
  // our answer arrived would otherwise resend everything once more. A lost answer shows up in
  // the peer's nacks (then everything is answered again), and the window is bounded in time,
  // so nothing waits for ever.
  const bool coverLost = p.coverSeq != 0 && contains(n.missing, p.coverSeq);
  const bool queued = p.coverSeq == 0 && now - p.answeredAt < settings_.resyncRetry * 4;
  const bool onItsWay = !coverLost && (queued || now - p.answeredAt < 4 * settings_.nackRetry);
  const uint64_t floor = onItsWay ? p.answeredUpTo : 0;
  std::vector<SeqRange> ranges;
  for (SeqRange r : n.missing) {
    r.first = std::max(r.first, floor + 1);
    r.last = std::min(r.last, log_.lastSeq());
    if (r.first == 0 || r.first > r.last) continue;
    counters_.nackedDatagrams += r.last - r.first + 1;
    ranges.push_back(r);
  }
  if (ranges.empty()) return;
  if (ranges.size() > settings_.maxNackRanges) ranges.resize(settings_.maxNackRanges);
  p.answeredUpTo = std::max(p.answeredUpTo, ranges.back().last);
  p.coverSeq = 0;
  p.answeredAt = now;
  // Datagrams that left the log (the peer is new, or the gap is old) may have carried
  // anything: only a bulk whose snapshot was taken after them fills that part of the gap.
  const uint64_t forgotten = std::max(log_.forgotten(), expectForgotten_);
  uint64_t oldest = 0;  // highest forgotten sequence asked for
  for (const SeqRange& r : ranges) {
    if (r.first <= forgotten) oldest = std::max(oldest, std::min(r.last, forgotten));
  }
  std::vector<SeqRange> recent = above(ranges, forgotten);
  if (oldest != 0) {
    if (!bulk_) {
      startBulk(now);
    } else if (bulk_->startSeq < oldest) {
      bulkAgain_ = true;  // the running bulk began before those datagrams were sent
    }
  }
  if (bulk_ && !bulkAgain_) {
    // The running bulk's snapshot was taken after every datagram up to its startSeq: what
    // those carried goes out with it, in its current state. Only later ones need a resend.
    recent = above(recent, bulk_->startSeq);
  }
  if (const auto keys = log_.lost(recent)) {
    for (const FlowKey& k : *keys) enqueueKey(k, now);
    counters_.resentRecords += keys->size();
  }
  resendExpects(recent, now);
  // The last bulk's end rode in a datagram that is asked for: it goes again, after the resent
  // flows (a receiver sweeps only once it has everything before it anyway).
  if (bulkEnd_ && !bulk_ && contains(ranges, bulkLastSeq_)) {
    enqueueRecord(*bulkEnd_, now);
    ++counters_.bulkEndsResent;
  }
  // After the resent state in the stream: the receiver stops waiting for the old datagrams.
  enqueueRecord(Covered{std::move(ranges)}, now, p.node);
}

void Engine::handleDigests(Peer& p, const std::vector<Digest>& digests, Nanos now) {
  counters_.digestsReceived += digests.size();
  // Compare only when nothing is in flight between us: otherwise a difference is most likely
  // records still on their way, and the normal protocol delivers those.
  const bool inSync = p.in.complete() && p.acked >= log_.lastSeq() && queue_.empty() &&
                      bulk_ == nullptr && !p.bulkOpen && !p.resyncWanted;
  if (!inSync) {
    counters_.digestsSkipped += digests.size();
    return;
  }
  const uint64_t count = replica_.rangeCount();
  std::vector<uint32_t> repair;
  size_t differ = 0;
  for (const Digest& d : digests) {
    const auto range = static_cast<uint32_t>((uint64_t{d.rangeFirst} * count) >> 32);
    const Digest mine = replica_.digest(range);
    if (mine.rangeFirst != d.rangeFirst || mine.rangeLast != d.rangeLast) {
      ++counters_.digestsSkipped;  // the peer divides the hash space differently
      continue;
    }
    if (mine.hash == d.hash && mine.flows == d.flows) continue;
    ++counters_.digestMismatches;
    ++differ;
    auto [at, fresh] = p.repairedAt.try_emplace(range, now);
    if (!fresh && now - at->second < settings_.digestInterval / 2) continue;
    at->second = now;
    if (repair.size() < settings_.maxRepairRanges) repair.push_back(range);
  }
  if (differ > settings_.maxRepairRanges) {
    // Too much differs for range repairs: ask for the peer's whole table (its bulk carries
    // everything it has) and send ours.
    ++counters_.digestBulks;
    p.resyncWanted = true;
    p.resyncAt = now;
    startBulk(now);
    return;
  }
  for (const uint32_t range : repair) {
    const RangeContents c = replica_.flowsInRange(range);
    for (const FlowRecord& f : c.flows) enqueueKey(f.key, now);
    for (const FlowDelete& t : c.tombstones) enqueueKey(t.key, now);
    for (const ExpectRecord& x : c.expects) enqueueExpect(x.key, now);
    for (const ExpectDelete& t : c.expectTombstones) enqueueExpect(t.key, now);
    counters_.resentRecords += c.flows.size() + c.tombstones.size() + c.expects.size() +
                               c.expectTombstones.size();
    ++counters_.rangesRepaired;
    // Our digest back, so the peer resends what only it has.
    enqueueControl(replica_.digest(range));
    ++counters_.digestsSent;
  }
}

// ---- Bulk ---------------------------------------------------------------------------------

void Engine::startBulk(Nanos now) {
  if (bulk_) return;  // a receiver that missed the start nacks what it lacks of this one
  // Every live flow of the merged table, ours and others': a receiver that restarted gets the
  // whole cluster's state from any peer, including records in its own name from its previous
  // life, which it then corrects (owner authority). Receivers sweep only what we own.
  // Our own recent deletes go too, so a peer that missed them while cut off learns of them.
  auto keys = std::make_shared<std::vector<FlowKey>>();
  keys->reserve(replica_.size() + localTombstones_.size());
  replica_.forEach([&](const ReplicaFlow& f) { keys->push_back(f.record.key); });
  for (const auto& [until, key] : localTombstones_) {
    const Local* l = local_.find(key);
    if (l != nullptr && !l->live && l->tombstoneUntil == until) {
      keys->push_back(key);  // its latest delete (an older entry of a key deleted again is not)
    }
  }
  bulk_ = std::make_unique<Bulk>();
  replica_.forEachExpect([&](const ReplicaExpect& x) { bulk_->expects.push_back(x.record.key); });
  for (const auto& [until, key] : localExpectTombstones_) {
    const auto it = localExpects_.find(key);
    if (it != localExpects_.end() && !it->second.live && it->second.tombstoneUntil == until) {
      bulk_->expects.push_back(key);
    }
  }
  bulk_->id = nextBulkId_++;
  bulk_->startHlc = hlc_.now(wallMs(now));
  bulk_->startSeq = log_.lastSeq();
  bulkMarker_ = BulkBegin{bulk_->id, bulk_->startHlc};
  bulkEnd_.reset();
  if (nextBulkId_ == 0) nextBulkId_ = 1;
  bulk_->keys = std::move(keys);
}

void Engine::requestResync(Nanos now) {
  for (auto& [node, p] : peers_) {
    if (!p.up) continue;
    p.resyncWanted = true;
    p.resyncAt = now;
  }
  startBulk(now);
}

// ---- Sending -----------------------------------------------------------------------------

void Engine::poll(Nanos now) {
  expireLocal(now);
  expireLocalExpects(now);
  std::vector<FlowDelete> expired;
  replica_.expire(now, &expired);
  if (!expired.empty()) forget(expired, now);
  runPeerTimers(now);
  reportExpects(now);  // expired, swept, died with an expired or swept master
  pruneExpectLog();
  runDigests(now);
  if (now >= aliveAt_) {
    enqueueControl(Alive{log_.lastSeq()});
    ++counters_.alivesSent;
    probeDelay_ =
        std::min(std::max(probeDelay_ * 2, settings_.tailProbeDelay), settings_.aliveInterval);
    aliveAt_ = now + probeDelay_;
  }
  if (bulkMarker_ && !bulk_) {
    const bool allAcked = std::all_of(peers_.begin(), peers_.end(), [&](const auto& kv) {
      return !kv.second.up || kv.second.acked >= bulkLastSeq_;
    });
    if (allAcked) bulkMarker_.reset();
  }
  refillTokens(now);
  sendReliable(now);
  sendControl(now);
}

void Engine::runPeerTimers(Nanos now) {
  for (auto& [node, p] : peers_) {
    if (p.up && now - p.lastHeard > settings_.peerTimeout) {
      // Gone: it no longer holds our log back. If it comes back, its nacks tell what it lacks.
      p.up = false;
      log_.removePeer(node);
    }
    if (!p.up) continue;
    if (p.ackAt != 0 && now >= p.ackAt) {
      enqueueControl(Ack{node, p.in.epoch(), p.in.cumulative()});
      ++counters_.acksSent;
      p.ackAt = 0;
    }
    if (p.in.complete()) {
      p.nackAt = 0;
      p.nackBackoff = 0;
      p.nackedUpTo = 0;
    } else if (p.nackAt != 0 && now >= p.nackAt) {
      Nack n{node, p.in.epoch(), p.in.missing(settings_.maxNackRanges)};
      p.nackedUpTo = n.missing.empty() ? 0 : n.missing.back().last;
      enqueueControl(std::move(n));
      ++counters_.nacksSent;
      if (p.nackBackoff == 0) p.nackBackoff = settings_.nackRetry;
      p.lastNackAt = now;
      p.nackAt = now + p.nackBackoff;
      p.nackBackoff = std::min(p.nackBackoff * 2, 4 * settings_.nackRetry);
    } else if (p.nackAt == 0) {
      p.nackAt = now + settings_.nackDelay;  // a gap found by an Alive or a Covered
    }
    if (p.resyncWanted && now >= p.resyncAt) {
      enqueueControl(ResyncRequest{node});
      ++counters_.resyncRequestsSent;
      p.resyncAt = now + settings_.resyncRetry;
    }
    if (p.bulkOpen && !p.sweepPending && !p.resyncWanted &&
        now - p.bulkOpenedAt > 20 * settings_.resyncRetry) {
      // A bulk that never ended (its end lost beyond repair): ask for a new one.
      ++counters_.bulksStuck;
      p.resyncWanted = true;
      p.resyncAt = now;
    }
    if (p.sweepPending && p.in.complete()) {
      std::vector<FlowDelete> removed;
      if (const auto swept = replica_.endBulk(node, *p.sweepPending, &removed)) {
        forget(removed, now);
        ++counters_.sweeps;
        counters_.sweptFlows += *swept;
      }
      p.sweepPending.reset();
      p.bulkOpen.reset();
    }
  }
}

void Engine::runDigests(Nanos now) {
  if (settings_.digestInterval <= 0 || now < nextDigest_) return;
  nextDigest_ = now + settings_.digestInterval;
  const bool anyPeer =
      std::any_of(peers_.begin(), peers_.end(), [](const auto& kv) { return kv.second.up; });
  if (!anyPeer) return;
  // Alive first: a receiver with a gap then knows it and does not compare.
  enqueueControl(Alive{log_.lastSeq()});
  for (const Digest& d : replica_.digests()) {
    enqueueControl(d);
    ++counters_.digestsSent;
  }
}

void Engine::refillTokens(Nanos now) {
  if (settings_.paceBytesPerSecond == 0) return;
  const double earned = static_cast<double>(now - tokensAt_) * 1e-9 *
                        static_cast<double>(settings_.paceBytesPerSecond);
  tokens_ = std::min(tokens_ + earned, static_cast<double>(settings_.paceBurstBytes));
  tokensAt_ = now;
}

bool Engine::flushDue(Nanos now) const {
  return !queue_.empty() &&
         (queue_.size() >= kFullQueue || now >= queuedSince_ + settings_.flushDelay || bulk_);
}

void Engine::sendReliable(Nanos now) {
  const bool paced = settings_.paceBytesPerSecond != 0;
  while ((flushDue(now) || (queue_.empty() && bulk_))) {
    if (paced && tokens_ <= 0) {
      ++counters_.pacingWaits;
      return;
    }
    if (queue_.empty()) {
      sendBulkDatagram(now);
      continue;
    }
    std::vector<FlowKey> keys;
    std::vector<ExpectKey> expectKeys;
    std::vector<uint16_t> covers;  // peers whose Nack answer this datagram completes
    if (bulkMarker_) builder_.add(*bulkMarker_);
    while (!queue_.empty()) {
      Item& item = queue_.front();
      if (item.expect) {
        if (const std::optional<Record> r = currentExpectState(*item.expect)) {
          if (!builder_.add(*r)) {
            if (!builder_.empty()) break;  // full
            ++counters_.oversizedRecords;
          } else {
            expectKeys.push_back(*item.expect);
            countSent(*r);
          }
        }
        queuedExpects_.erase(*item.expect);
        queue_.pop_front();
        continue;
      }
      if (item.record) {
        if (!builder_.add(*item.record)) {
          if (!builder_.empty()) break;  // full
          ++counters_.oversizedRecords;  // fits in no datagram (a huge Covered): drop it
        } else if (std::holds_alternative<Covered>(*item.record)) {
          ++counters_.coveredSent;
          if (item.coverFor != 0) covers.push_back(item.coverFor);
        }
        queue_.pop_front();
        continue;
      }
      // The flow's current state: ours, else the replica's (a resend of another's flow).
      Local* l = item.local;
      const std::optional<Record> r = l != nullptr ? stateOf(*l) : currentState(item.key);
      if (r) {  // else forgotten meanwhile (expired, and its tombstone too): nothing to say
        if (!builder_.add(*r)) {
          if (!builder_.empty()) break;  // full
          ++counters_.oversizedRecords;
        } else {
          keys.push_back(item.key);
          countSent(*r);
        }
      }
      if (l != nullptr) l->queued = false;
      if (!queued_.empty()) queued_.erase(item.key);
      queue_.pop_front();
    }
    if (queue_.empty()) queuedSince_ = now;
    if (builder_.size() <= (bulkMarker_ ? 1u : 0u)) {  // nothing but the marker
      builder_.finish(Header{});
      continue;
    }
    addControl();
    const uint64_t seq = log_.next();
    log_.sent(seq, std::move(keys));
    if (!expectKeys.empty()) expectLog_[seq] = std::move(expectKeys);
    for (const uint16_t node : covers) {
      const auto it = peers_.find(node);
      if (it != peers_.end()) {
        it->second.coverSeq = seq;
        it->second.answeredAt = now;
      }
    }
    std::vector<uint8_t> payload = builder_.finish(header(seq));
    emit(payload, true, now);
  }
}

Header Engine::header(uint64_t seq) const {
  return Header{kProtocolVersion, settings_.clusterId, settings_.node, settings_.bootEpoch, seq};
}

void Engine::countSent(const Record& r) {
  if (std::holds_alternative<FlowRecord>(r)) {
    ++counters_.upsertsSent;
  } else if (std::holds_alternative<FlowDelete>(r)) {
    ++counters_.deletesSent;
  } else if (std::holds_alternative<ExpectRecord>(r)) {
    ++counters_.expectUpsertsSent;
  } else {
    ++counters_.expectDeletesSent;
  }
}

void Engine::sendBulkDatagram(Nanos now) {
  Bulk& b = *bulk_;
  const bool added = builder_.add(BulkBegin{b.id, b.startHlc});
  assert(added);
  (void)added;
  const size_t begin = b.cursor;
  const std::vector<FlowKey>& keys = *b.keys;
  while (b.cursor < keys.size()) {
    const std::optional<Record> state = currentState(keys[b.cursor]);
    if (!state) {  // forgotten since
      ++b.cursor;
      continue;
    }
    if (!builder_.add(*state)) break;
    ++b.cursor;
    ++b.records;
    ++counters_.bulkRecordsSent;
    countSent(*state);
  }
  std::vector<ExpectKey> expectKeys;
  while (b.cursor == keys.size() && b.expectCursor < b.expects.size()) {
    const ExpectKey& k = b.expects[b.expectCursor];
    const std::optional<Record> state = currentExpectState(k);
    if (state) {  // else forgotten since
      if (!builder_.add(*state)) break;
      expectKeys.push_back(k);
      ++b.records;
      ++counters_.bulkRecordsSent;
      countSent(*state);
    }
    ++b.expectCursor;
  }
  bool done = false;
  if (b.cursor == keys.size() && b.expectCursor == b.expects.size() &&
      builder_.add(BulkEnd{b.id, b.records})) {
    done = true;
    bulkEnd_ = BulkEnd{b.id, b.records};
  }
  const uint64_t seq = log_.next();
  bulkLastSeq_ = seq;
  log_.sentBulk(seq, b.keys, begin, b.cursor);
  if (!expectKeys.empty()) expectLog_[seq] = std::move(expectKeys);
  std::vector<uint8_t> payload = builder_.finish(header(seq));
  emit(payload, true, now);
  if (done) {
    ++counters_.bulksSent;
    bulk_.reset();
    if (bulkAgain_) {
      bulkAgain_ = false;
      startBulk(now);
    }
  }
}

void Engine::addControl() {
  size_t taken = 0;
  while (taken < control_.size() && builder_.add(control_[taken])) ++taken;
  control_.erase(control_.begin(), control_.begin() + static_cast<ptrdiff_t>(taken));
}

void Engine::sendControl(Nanos now) {
  while (!control_.empty()) {
    addControl();
    if (builder_.empty()) {  // the first record fits in no datagram
      ++counters_.oversizedRecords;
      control_.erase(control_.begin());
      continue;
    }
    std::vector<uint8_t> payload = builder_.finish(header(0));
    emit(payload, false, now);
  }
}

void Engine::emit(std::vector<uint8_t>& payload, bool reliable, Nanos now) {
  const EnvelopeHeader eh{settings_.clusterId, settings_.node, settings_.bootEpoch, ++authSeq_};
  const std::vector<uint8_t> datagram = sealer_.seal(eh, payload);
  ++counters_.datagramsSent;
  counters_.bytesSent += datagram.size();
  if (reliable) {
    ++counters_.reliableDatagramsSent;
    counters_.reliableBytesSent += datagram.size();
    tokens_ -= static_cast<double>(datagram.size());
    probeDelay_ = settings_.tailProbeDelay;
    aliveAt_ = now + probeDelay_;
  }
  send_(datagram);
}

// ---- Introspection -----------------------------------------------------------------------

Nanos Engine::nextWakeup() const {
  Nanos at = aliveAt_;
  auto soon = [&at](Nanos t) { at = std::min(at, t); };
  if (!control_.empty()) soon(0);
  const bool reliableWork = !queue_.empty() || bulk_ != nullptr;
  if (reliableWork) {
    Nanos ready = queue_.empty() || queue_.size() >= kFullQueue || bulk_
                      ? 0
                      : queuedSince_ + settings_.flushDelay;
    if (settings_.paceBytesPerSecond != 0 && tokens_ <= 0) {
      const double wait = (-tokens_ + 1) * 1e9 / static_cast<double>(settings_.paceBytesPerSecond);
      ready = std::max(ready, tokensAt_ + static_cast<Nanos>(std::ceil(wait)));
    }
    soon(ready);
  }
  if (settings_.digestInterval > 0) soon(nextDigest_);
  if (!localTombstones_.empty()) soon(localTombstones_.front().first);
  if (!localExpectTombstones_.empty()) soon(localExpectTombstones_.front().first);
  for (const auto& [node, p] : peers_) {
    if (!p.up) continue;
    soon(p.lastHeard + settings_.peerTimeout + 1);
    if (p.ackAt != 0) soon(p.ackAt);
    if (p.nackAt != 0) soon(p.nackAt);
    if (p.resyncWanted) soon(p.resyncAt);
    if (p.sweepPending && p.in.complete()) soon(0);
    if (p.bulkOpen && !p.sweepPending && !p.resyncWanted) {
      soon(p.bulkOpenedAt + 20 * settings_.resyncRetry + 1);
    }
  }
  return at;
}

std::vector<PeerStatus> Engine::peers(Nanos now) const {
  std::vector<PeerStatus> out;
  for (const auto& [node, p] : peers_) {
    PeerStatus s;
    s.node = node;
    s.epoch = p.in.epoch();
    s.up = p.up && now - p.lastHeard <= settings_.peerTimeout;
    s.lastHeard = p.lastHeard;
    s.received = p.in.cumulative();
    s.highest = p.in.highest();
    for (const SeqRange& r : p.in.missing(SIZE_MAX)) s.missing += r.last - r.first + 1;
    s.acked = p.acked;
    s.lag = log_.lastSeq() - std::min(p.acked, log_.lastSeq());
    s.bulkOpen = p.bulkOpen.has_value();
    s.resyncWanted = p.resyncWanted;
    out.push_back(s);
  }
  return out;
}

bool Engine::idle(Nanos now) const {
  if (!queue_.empty() || bulk_ || !control_.empty()) return false;
  for (const auto& [node, p] : peers_) {
    if (!p.up || now - p.lastHeard > settings_.peerTimeout) continue;
    if (p.acked < log_.lastSeq() || !p.in.complete() || p.sweepPending || p.resyncWanted ||
        p.bulkOpen) {
      return false;
    }
  }
  return true;
}

}  // namespace ctsync::replication
